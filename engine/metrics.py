"""Per-task evaluation figures from head outputs, in plain NumPy (not the hot path)."""
from __future__ import annotations

import numpy as np

_TINY = 1e-12


def evaluate_outputs(task, P, Y, w=None):
    """Figures for head outputs P (m, K) against targets Y (m, K) (float, NaN = no label).

    w: (m,) sample weights or None.  Returns a dict:
    - every task: "loss", the head's mean loss without regularization (log loss for
      classification), weighted when w is given;
    - classification: "accuracy" and "error" (unweighted: each row counts once),
      "precision", "recall" and "f1" (binary: of the positive class; multiclass: the
      macro average over the classes present in Y or P; multilabel: the macro average
      over outputs), and with w also "weighted_error";
    - regression: "mse" and "mae" (mean over rows and outputs), weighted when w is given.
    """
    P = P.astype(np.float64)
    Y = Y.astype(np.float64)
    m = P.shape[0]
    wn = np.ones(m) if w is None else np.asarray(w, dtype=np.float64) / np.mean(w)
    if task == "multiclass":
        per_row = -(Y * np.log(np.clip(P, _TINY, 1.0))).sum(axis=1)
        pred, true = P.argmax(axis=1), Y.argmax(axis=1)
        K = P.shape[1]
        pred_1h = np.zeros((m, K), dtype=bool)
        true_1h = np.zeros((m, K), dtype=bool)
        pred_1h[np.arange(m), pred] = True
        true_1h[np.arange(m), true] = True
        correct = (pred == true).astype(np.float64)
        figures = {"loss": float((wn * per_row).mean()), **_accuracy(correct, None, w, wn),
                   **_macro_prf(pred_1h, true_1h, np.ones((m, K), dtype=bool))}
        return figures
    if task in ("binary", "multilabel"):
        labelled = ~np.isnan(Y)
        Yz = np.where(labelled, Y, 0.0)
        Pc = np.clip(P, _TINY, 1.0 - _TINY)
        bce = -(Yz * np.log(Pc) + (1 - Yz) * np.log(1 - Pc)) * labelled
        pred, true = P >= 0.5, Yz >= 0.5
        hits = (pred == true).astype(np.float64)
        return {"loss": float((wn * bce.sum(axis=1)).mean()), **_accuracy(hits, labelled, w, wn),
                **_macro_prf(pred, true, labelled)}
    d = P - Y
    return {"loss": float((wn * 0.5 * (d * d).sum(axis=1)).mean()),
            "mse": float((wn[:, None] * d * d).mean()),
            "mae": float((wn[:, None] * np.abs(d)).mean())}


def _accuracy(hits, labelled, w, wn):
    """accuracy/error over labelled entries of hits (m,) or (m, K); weighted_error with w."""
    if hits.ndim == 1:
        hits = hits[:, None]
    mask = np.ones(hits.shape, dtype=bool) if labelled is None else labelled
    n = mask.sum()
    if n == 0:
        return {"accuracy": float("nan"), "error": float("nan")}
    acc = float((hits * mask).sum() / n)
    out = {"accuracy": acc, "error": 1.0 - acc}
    if w is not None:
        ww = np.broadcast_to(wn[:, None], hits.shape) * mask
        out["weighted_error"] = float(1.0 - (ww * hits).sum() / ww.sum()) if ww.sum() > 0 else float("nan")
    return out


def _macro_prf(pred, true, labelled):
    """Precision, recall and F1 from boolean (m, K) predictions and truths.

    One column (binary): the positive class's figures.  Several columns: the macro
    average over columns that occur in the truth or the predictions (a class never seen
    and never predicted says nothing).  A column with no predicted positives has
    precision 0, as scikit-learn's zero_division=0.
    """
    pred, true = pred & labelled, true & labelled
    tp = (pred & true).sum(axis=0).astype(np.float64)
    fp = (pred & ~true).sum(axis=0).astype(np.float64)
    fn = (~pred & true & labelled).sum(axis=0).astype(np.float64)
    present = (tp + fp + fn) > 0
    if pred.shape[1] > 1:
        tp, fp, fn = tp[present], fp[present], fn[present]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    if tp.size == 0:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    return {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())}
