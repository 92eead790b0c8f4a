"""Error analysis of one held-out split, the course's way: which rows the model gets
wrong, how they fall into the confusion matrix and into the producer's tags, how far the
split's error would fall if each tag's errors were fixed (its ceiling), and which rows'
given labels the model finds least likely (likely mislabeled, by confident learning).

Everything here is a function of the split's rows and the served model's probabilities
on them: P (n, K) with K the model's outputs, Y (n, K) float targets as the trainer holds
them, tags (n, T) bool (multi-hot, T tag columns) and ids (n,) int64 with has_id (n,)
bool.  Only binary and multiclass tasks have classes to confuse; the others have none.
"""
from __future__ import annotations

import numpy as np

CLASSIFICATION = ("binary", "multiclass")


def class_outputs(task, P, Y):
    """(true (n,), predicted (n,), probabilities per class (n, C)) of a classification split.

    Binary has one output, P(y=1); its classes are 0 and 1, so the per-class
    probabilities are [1 - p, p], and p >= 0.5 predicts 1 as the model's predict does
    (an argmax would break the tie at 0.5 the other way).  Multiclass rows are one-hot
    targets and softmax rows.
    """
    if task == "binary":
        p1 = P[:, 0].astype(np.float64)
        return ((Y[:, 0] >= 0.5).astype(np.int64), (p1 >= 0.5).astype(np.int64),
                np.stack([1.0 - p1, p1], axis=1))
    return Y.argmax(axis=1).astype(np.int64), P.argmax(axis=1).astype(np.int64), P.astype(np.float64)


def confusion(true, pred, n_classes):
    """(C, C) int64 counts: row i, column j = rows of class i predicted as j."""
    return np.bincount(true * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def tag_table(wrong, tags, names):
    """The error-analysis table: for each tag that some row carries, in `names` order.

    wrong: (n,) bool, the misclassified rows.  tags: (n, T) bool.  names: T tag names.
    Each entry: rows (rows with the tag), errors (misclassified rows with the tag),
    error (errors / rows: the error on that tag), share (errors / all misclassified rows:
    the course's "percent of errors in this category") and ceiling (errors / all rows:
    how far the split's error would fall if every error with that tag were fixed).
    A row may carry several tags, so shares need not sum to 1.
    """
    n, total_errors = wrong.shape[0], int(wrong.sum())
    rows = tags.sum(axis=0)
    errors = tags[wrong].sum(axis=0)
    table = []
    for t in np.flatnonzero(rows):
        r, e = int(rows[t]), int(errors[t])
        table.append({"tag": names[t], "rows": r, "errors": e, "error": e / r,
                      "share": e / total_errors if total_errors else 0.0, "ceiling": e / n})
    return table


def class_thresholds(probs, true):
    """(C,) per-class thresholds of confident learning: the mean probability of class j
    over the rows labelled j; NaN for a class no row is labelled with (it then never
    counts as confidently present)."""
    n, C = probs.shape
    counts = np.bincount(true, minlength=C)
    sums = np.bincount(true, weights=probs[np.arange(n), true], minlength=C)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def suspects(probs, true):
    """Rows whose given label is likely wrong, most likely first: (rows, suggested, margin).

    A row is a suspect when the probability of its given label is below that class's
    threshold and some other class reaches its own threshold (confident learning's
    off-diagonal of the confident joint).  suggested: that other class (the one with the
    highest probability among those at or above their thresholds); margin: its
    probability minus the given label's, the ranking (larger = more surely mislabeled).
    """
    n, C = probs.shape
    thresholds = class_thresholds(probs, true)
    rows = np.arange(n)
    p_given = probs[rows, true]
    # NaN thresholds compare false: an unseen class is never confidently present.
    confident = probs >= thresholds[None, :]
    confident[rows, true] = False
    candidates = np.where(confident, probs, -np.inf)
    suggested = candidates.argmax(axis=1)
    p_other = candidates[rows, suggested]
    flagged = (p_given < thresholds[true]) & np.isfinite(p_other)
    idx = np.flatnonzero(flagged)
    margin = p_other[idx] - p_given[idx]
    order = np.argsort(-margin, kind="stable")
    return idx[order], suggested[idx[order]], margin[order]


def analyse(task, P, Y, tags, tag_names, ids, has_id, max_suspects):
    """The error analysis of one split (a dict for status), or None for a task without
    classes.  max_suspects bounds the suspects listed (their count is always given)."""
    if task not in CLASSIFICATION or P.shape[0] == 0:
        return None
    true, pred, probs = class_outputs(task, P, Y)
    n, C = probs.shape
    wrong = pred != true
    errors = int(wrong.sum())
    found, suggested, margin = suspects(probs, true)
    listed = []
    for r, s, g in zip(found[:max_suspects].tolist(), suggested[:max_suspects].tolist(),
                       margin[:max_suspects].tolist()):
        listed.append({"id": int(ids[r]) if has_id[r] else None, "label": int(true[r]),
                       "suggested": int(s), "p_label": float(probs[r, true[r]]), "margin": float(g)})
    return {
        "rows": n, "errors": errors, "error": errors / n,
        "confusion": confusion(true, pred, C).tolist(),
        "tags": tag_table(wrong, tags, tag_names),
        "suspects": {"count": int(found.shape[0]), "rows_with_ids": int(has_id.sum()), "listed": listed},
    }
