"""Per-task evaluation figures from head outputs, in plain NumPy (not the hot path)."""
from __future__ import annotations

import numpy as np

_TINY = 1e-12


def evaluate_outputs(task, P, Y, w=None):
    """Figures for head outputs P (m, K) against targets Y (m, K) (float, NaN = no label).

    w: (m,) sample weights or None.  Returns a dict: "loss" (the head's mean loss,
    without regularization) and "accuracy"/"error" for classification or
    "mse"/"mae" for regression.
    """
    P = P.astype(np.float64)
    Y = Y.astype(np.float64)
    m = P.shape[0]
    w = np.ones(m) if w is None else np.asarray(w, dtype=np.float64)
    w = w / w.mean()
    if task == "multiclass":
        per_row = -(Y * np.log(np.clip(P, _TINY, 1.0))).sum(axis=1)
        correct = (P.argmax(axis=1) == Y.argmax(axis=1)).astype(np.float64)
        acc = float((w * correct).sum() / w.sum())
        return {"loss": float((w * per_row).mean()), "accuracy": acc, "error": 1.0 - acc}
    if task in ("binary", "multilabel"):
        labelled = ~np.isnan(Y)
        Yz = np.where(labelled, Y, 0.0)
        Pc = np.clip(P, _TINY, 1.0 - _TINY)
        bce = -(Yz * np.log(Pc) + (1 - Yz) * np.log(1 - Pc)) * labelled
        hits = ((P >= 0.5) == (Yz >= 0.5)) & labelled
        ww = np.broadcast_to(w[:, None], Y.shape)
        n_lab = (ww * labelled).sum()
        acc = float((ww * hits).sum() / n_lab) if n_lab > 0 else float("nan")
        return {"loss": float((w * bce.sum(axis=1)).mean()), "accuracy": acc, "error": 1.0 - acc}
    d = P - Y
    return {"loss": float((w * 0.5 * (d * d).sum(axis=1)).mean()),
            "mse": float((w[:, None] * d * d).mean()),
            "mae": float((w[:, None] * np.abs(d)).mean())}
