"""Progressive validation (test-then-train): every training batch is scored by the
model before the step that learns from it, so each row is an unseen row when scored.

Two figures are kept: over the whole stream (what River reports), and an exponentially
weighted one over about the last `window` rows, which follows a drifting stream.
"""
from __future__ import annotations

import math

import numpy as np

_TINY = 1e-12


def batch_scores(task, P, Y):
    """(sum of losses, sum of errors, count of scored entries) for one batch.

    P: (m, K) head outputs, Y: (m, K) float targets (NaN = no label).  Errors are
    misclassified rows (multiclass) or wrong labelled outputs (binary/multilabel); the
    count is what they are divided by.  Regression has no error: its sum is NaN.
    """
    m = P.shape[0]
    if task == "multiclass":
        true = Y.argmax(axis=1)
        p_true = P[np.arange(m), true]
        loss = -np.log(np.maximum(p_true, _TINY)).sum()
        return float(loss), float((P.argmax(axis=1) != true).sum()), m
    if task in ("binary", "multilabel"):
        labelled = ~np.isnan(Y)
        yz = np.where(labelled, Y, 0.0) >= 0.5
        Pc = np.clip(P, _TINY, 1.0 - _TINY)
        bce = -np.where(yz, np.log(Pc), np.log(1.0 - Pc))[labelled].sum()
        wrong = ((P >= 0.5) != yz)[labelled].sum()
        # The loss sums over outputs per row, like the model's; /m later makes it per row.
        return float(bce), float(wrong), int(labelled.sum())
    d = P - Y
    return float(0.5 * (d * d).sum()), float("nan"), m


class ProgressiveScore:
    """Running test-then-train figures; `add` takes one batch's scores."""

    def __init__(self, task, window):
        self.task = task
        self.window = max(int(window), 1)
        self.rows = 0            # rows scored, all time
        self.loss_sum = 0.0
        self.error_sum = 0.0
        self.scored = 0          # entries the errors are counted over, all time
        self._ewma = {"loss": 0.0, "error": 0.0}
        self._weight = 0.0       # EWMA normalizer (bias correction)

    def add(self, P, Y):
        loss, errors, count = batch_scores(self.task, P, Y)
        m = P.shape[0]
        self.rows += m
        self.loss_sum += loss
        self.scored += count
        if not math.isnan(errors):
            self.error_sum += errors
        # Row-weighted EWMA: a batch of m rows counts as m rows out of `window`.
        a = min(1.0, m / self.window)
        self._ewma["loss"] = (1 - a) * self._ewma["loss"] + a * loss / m
        if not math.isnan(errors):
            self._ewma["error"] = (1 - a) * self._ewma["error"] + a * errors / max(count, 1)
        self._weight = (1 - a) * self._weight + a

    def figures(self):
        """{"rows", "loss", "error", "window_loss", "window_error"} (NaN where unknown)."""
        nan = float("nan")
        out = {"rows": self.rows,
               "loss": self.loss_sum / self.rows if self.rows else nan,
               "window_loss": self._ewma["loss"] / self._weight if self._weight else nan}
        if self.task != "regression":
            out["error"] = self.error_sum / self.scored if self.scored else nan
            out["window_error"] = self._ewma["error"] / self._weight if self._weight else nan
        return out

    def to_state(self):
        return {"rows": self.rows, "loss_sum": self.loss_sum, "error_sum": self.error_sum,
                "scored": self.scored, "ewma": dict(self._ewma), "weight": self._weight}

    def load_state(self, state):
        self.rows, self.loss_sum = int(state["rows"]), float(state["loss_sum"])
        self.error_sum, self.scored = float(state["error_sum"]), int(state["scored"])
        self._ewma = {k: float(v) for k, v in state["ewma"].items()}
        self._weight = float(state["weight"])
