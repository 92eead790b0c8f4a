"""`learnd errors` as text: a held-out split's error analysis from a status reply, with
the row count behind every figure (a share of 3 errors is not a share of 300)."""
from __future__ import annotations


def _pct(v):
    return f"{100.0 * v:.1f}%"


def format_split(split, a, tag_names=None):
    """Error, confusion matrix and the error-by-tag table of one split (status's
    error_analysis.splits[split])."""
    lines = [f"{split}: error {_pct(a['error'])} ({a['errors']} of {a['rows']} rows misclassified)"]
    cm = a["confusion"]
    k = len(cm)
    width = max(5, *(len(str(v)) for row in cm for v in row))
    lines.append("confusion (rows: given label, columns: predicted)")
    lines.append(" " * 8 + "".join(f"{j:>{width + 1}}" for j in range(k)))
    for i, row in enumerate(cm):
        lines.append(f"{i:>8}" + "".join(f"{v:>{width + 1}}" for v in row))
    if a["tags"]:
        lines.append("errors by tag (share: of the misclassified rows, the part with the tag; ceiling: how far "
                     "the error falls if all of them were fixed)")
        head = ["tag", "rows", "errors", "error", "share", "ceiling"]
        body = [[t["tag"], str(t["rows"]), str(t["errors"]), _pct(t["error"]),
                 f"{_pct(t['share'])} ({t['errors']}/{a['errors']})", f"{_pct(t['ceiling'])}"]
                for t in sorted(a["tags"], key=lambda t: -t["ceiling"])]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        for r in [head, *body]:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    else:
        lines.append("no tagged rows (send a tags array with tag_names to see errors by tag)")
    return "\n".join(lines)


def format_suspects(split, a):
    """The likely mislabeled rows of one split, most likely first."""
    s = a["suspects"]
    lines = [f"{split}: {s['count']} of {a['rows']} rows are likely mislabeled (confident learning); "
             f"{len(s['listed'])} listed, {s['rows_with_ids']} of the split's rows were sent with ids"]
    if s["listed"]:
        lines.append(f"{'id':>12}  {'label':>5}  {'suggested':>9}  {'p(label)':>8}  {'margin':>6}")
        for r in s["listed"]:
            rid = "-" if r["id"] is None else str(r["id"])
            lines.append(f"{rid:>12}  {r['label']:>5}  {r['suggested']:>9}  {r['p_label']:>8.4f}  {r['margin']:>6.3f}")
    return "\n".join(lines)


def format_errors(analysis, split=None, suspects=False):
    """The text of `learnd errors` for status's error_analysis; split None: every split held."""
    splits = analysis.get("splits") or {}
    if not splits:
        return ("no error analysis yet: it needs a classification task and held-out rows (split dev, test or "
                "train_dev, or auto) and an evaluation")
    names = [split] if split is not None else [s for s in ("dev", "test", "train_dev") if s in splits]
    out = []
    for name in names:
        if name not in splits:
            out.append(f"{name}: no rows held out yet")
            continue
        out.append(format_suspects(name, splits[name]) if suspects else format_split(name, splits[name]))
    return "\n\n".join(out)
