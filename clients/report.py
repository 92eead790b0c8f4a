"""`learnd report`: learning curves as a PNG, from the evaluation history a daemon keeps
in its state dir (`eval-history.jsonl`, one JSON object per evaluation; see
docs/metrics.md).  Needs matplotlib: `pip install 'learnd[report]'`.
"""
from __future__ import annotations

import json
import math
import os

HISTORY_FILE = "eval-history.jsonl"     # written by daemon/history.py
SPLIT_STYLES = {"train": "tab:blue", "train_dev": "tab:orange", "dev": "tab:red", "test": "tab:green"}


class ReportError(Exception):
    pass


def read_records(state_dir):
    """The history's records, oldest first; a torn last line (a crash mid-write) is skipped."""
    path = os.path.join(state_dir, HISTORY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise ReportError(f"no evaluation history at {path}: has the daemon evaluated yet "
                          f"(every eval_interval_s once it has trained)?") from None
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    if not records:
        raise ReportError(f"{path} holds no evaluations yet")
    return records


def curves(records):
    """{"samples": [...], "learning_rate": [...], "train_loss": [...],
    "progressive_error": [...], "error": {split: [...]}, "loss": {split: [...]}, "verdict"}
    with NaN where an evaluation had no figure."""
    nan = float("nan")

    def num(v):
        return nan if v is None else float(v)

    splits = [s for s in SPLIT_STYLES if any(s in r.get("splits", {}) for r in records)]
    out = {"samples": [r["samples"] for r in records],
           "learning_rate": [num(r.get("learning_rate")) for r in records],
           "train_loss": [num(r.get("train_loss")) for r in records],
           "progressive_error": [num((r.get("progressive") or {}).get("window_error")) for r in records],
           "error": {}, "loss": {}, "verdict": records[-1].get("verdict")}
    for key in ("error", "loss"):
        for s in splits:
            out[key][s] = [num(r.get("splits", {}).get(s, {}).get(key if key == "loss" else "error",
                           r.get("splits", {}).get(s, {}).get("mse"))) for r in records]
    return out


def member_curves(records):
    """The population's curves, or None without one: {"samples", "figure": "dev" or
    "progressive", "members": {id: (samples, values)}, "champion": (samples, values),
    "changes": [(samples, new champion id)]}.  A member's figure is its dev figure where
    the records have one for every member, else its progressive figure."""
    searched = [r for r in records if r.get("search")]
    if not searched:
        return None
    use_dev = all(m.get("dev") for r in searched for m in r["search"]["members"])
    members, champion, changes = {}, ([], []), []
    for r in searched:
        x = r["samples"]
        for m in r["search"]["members"]:
            value = (m["dev"] or {}).get("value") if use_dev else m.get("value")
            if value is None:
                continue
            xs, ys = members.setdefault(m["member"], ([], []))
            xs.append(x)
            ys.append(float(value))
            if m["member"] == r["search"]["champion"]:
                champion[0].append(x)
                champion[1].append(float(value))
        changes.extend((x, d["member"]) for d in r["search"]["decisions"] if d["kind"] == "champion")
    return {"samples": [r["samples"] for r in searched], "figure": "dev" if use_dev else "progressive",
            "members": members, "champion": champion, "changes": changes}


def _draw_population(ax, pop):
    for xs, ys in pop["members"].values():
        ax.plot(xs, ys, linewidth=0.8, alpha=0.5)
    ax.plot(*pop["champion"], color="black", linewidth=2.0, label="the champion of the time")
    for i, (x, member) in enumerate(pop["changes"]):
        ax.axvline(x, color="tab:red", linestyle=":", linewidth=1.0,
                   label="champion changes" if i == 0 else None)
        ax.annotate(f"{member}", (x, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                    color="tab:red", ha="left", va="top")
    ax.set_ylabel(f"members' {pop['figure']} figure")
    ax.set_title(f"population: {len(pop['members'])} members over time (one line each), "
                 f"{len(pop['changes'])} champion changes", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def write_report(state_dir, output=None):
    """Write the learning-curve PNG; returns its path."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError("matplotlib is not installed: pip install 'learnd[report]'") from None
    records = read_records(state_dir)
    c = curves(records)
    pop = member_curves(records)
    output = output or os.path.join(state_dir, "learning-curves.png")
    ratios = [3, 3, 1.4] + ([3] if pop else [])
    fig, axes = plt.subplots(len(ratios), 1, figsize=(9, 10 + (3.5 if pop else 0)), sharex=True,
                             gridspec_kw={"height_ratios": ratios})
    ax_err, ax_loss, ax_lr = axes[:3]
    if pop:
        _draw_population(axes[3], pop)
    x = c["samples"]
    regression = all(all(math.isnan(v) for v in vals) for vals in c["error"].values()) if c["error"] else True
    for split, values in c["error"].items():
        ax_err.plot(x, values, label=split, color=SPLIT_STYLES[split], marker=".", markersize=3)
    if not all(math.isnan(v) for v in c["progressive_error"]):
        ax_err.plot(x, c["progressive_error"], label="progressive (test-then-train)",
                    color="gray", linestyle="--")
    ax_err.set_ylabel("MSE" if regression else "error (1 - accuracy)")
    ax_err.set_title(f"learnd learning curves — {os.path.abspath(state_dir)}\n"
                     f"last diagnosis: {c['verdict']}", fontsize=10)
    ax_err.legend(loc="upper right", fontsize=8)
    ax_err.grid(alpha=0.3)
    for split, values in c["loss"].items():
        ax_loss.plot(x, values, label=split, color=SPLIT_STYLES[split], marker=".", markersize=3)
    ax_loss.plot(x, c["train_loss"], label="training loss (EWMA, with regularization)",
                 color="black", linewidth=0.8, alpha=0.6)
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(x, c["learning_rate"], color="tab:purple")
    ax_lr.set_ylabel("learning rate")
    axes[-1].set_xlabel("rows trained")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
