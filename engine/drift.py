"""A change detector for a stream of numbers (a model's 0/1 errors, its losses): ADWIN.

    adwin = ADWIN(delta=0.002)
    positions = adwin.update(errors)     # indices into this batch where a change was found
    adwin.rises                          # for each, True when the mean rose (errors got worse)

`row_errors` turns a batch's outputs and targets into the per-row errors it watches.

It follows River's `drift.ADWIN` (same parameters and defaults, same detections on the
same sequence; tests/engine/test_drift.py checks it) and takes a batch per call, so a
caller never loops over values in Python.
"""
from __future__ import annotations

import numpy as np

from learnd.engine.errors import EngineError
from learnd.engine.kernels.drift import LEVELS, adwin_update


class ADWIN:
    """ADaptive WINdowing: the window of recent values grows while they look alike and is
    cut where its older and newer parts' means differ by more than chance allows at
    confidence delta.

    Parameters
    ----------
    delta : float in (0, 1)
        Smaller: fewer false alarms, later detections.
    clock : int
        The test runs every `clock` values.
    max_buckets, min_window_length, grace_period : int
        As River's: buckets per size before merging, the shortest sub-window compared,
        values seen before the first test.
    """

    def __init__(self, delta=0.002, clock=32, max_buckets=5, min_window_length=5, grace_period=10):
        if not 0 < delta < 1:
            raise EngineError(f"delta must be in (0, 1), got {delta}")
        for name, v in (("clock", clock), ("max_buckets", max_buckets),
                        ("min_window_length", min_window_length), ("grace_period", grace_period)):
            if not isinstance(v, int) or v < 1:
                raise EngineError(f"{name} must be an int >= 1, got {v!r}")
        self.delta, self.clock, self.max_buckets = float(delta), clock, max_buckets
        self.min_window_length, self.grace_period = min_window_length, grace_period
        self.detections = 0
        self.seen = 0
        self._totals = np.zeros((LEVELS, max_buckets + 1))
        self._variances = np.zeros((LEVELS, max_buckets + 1))
        self._counts = np.zeros(LEVELS, dtype=np.int64)
        self._f = np.zeros(3)
        self._i = np.array([0, 1], dtype=np.int64)
        self._found = np.empty(0, dtype=np.int64)
        self._rises = np.empty(0, dtype=np.int8)
        self.rises = np.empty(0, dtype=bool)    # of the last update's detections: the mean rose

    @property
    def width(self):
        """Values in the current window."""
        return int(self._f[0])

    @property
    def estimation(self):
        """Mean of the current window (0 when empty)."""
        return float(self._f[1] / self._f[0]) if self._f[0] else 0.0

    def update(self, values):
        """Feed values (m,) in order; returns the (k,) int64 positions in `values` at which
        a change was detected (most often none)."""
        values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        m = values.shape[0]
        if self._found.shape[0] < m:
            self._found = np.empty(m, dtype=np.int64)
            self._rises = np.empty(m, dtype=np.int8)
        n = adwin_update(values, self._totals, self._variances, self._counts, self._f, self._i, self._found,
                         self._rises, self.delta, self.clock, self.max_buckets, self.min_window_length, self.grace_period)
        self.detections += n
        self.seen += m
        self.rises = self._rises[:n].astype(bool)
        return self._found[:n].copy()

    def get_state(self):
        return {"delta": self.delta, "clock": self.clock, "max_buckets": self.max_buckets,
                "min_window_length": self.min_window_length, "grace_period": self.grace_period,
                "detections": self.detections, "seen": self.seen,
                "totals": self._totals.copy(), "variances": self._variances.copy(), "counts": self._counts.copy(),
                "f": self._f.copy(), "i": self._i.copy()}

    def plain_state(self):
        """get_state with lists for arrays: for JSON and msgpack (set_state takes it back)."""
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in self.get_state().items()}

    def set_state(self, state):
        """Take a state from get_state or plain_state (of a detector with the same
        max_buckets)."""
        if state["max_buckets"] != self.max_buckets:
            raise EngineError(f"a state of max_buckets {state['max_buckets']} for a detector of "
                              f"{self.max_buckets}")
        self.detections, self.seen = int(state["detections"]), int(state["seen"])
        self._totals[:] = state["totals"]
        self._variances[:] = state["variances"]
        self._counts[:] = state["counts"]
        self._f[:] = state["f"]
        self._i[:] = state["i"]


def row_errors(task, P, Y):
    """(r,) float64 error of each row with a label, in order, or None for regression.

    P: (m, K) head outputs, Y: (m, K) float targets (NaN = no label).  Multiclass: 1 for a
    misclassified row.  Binary and multilabel: the share of the row's labelled outputs
    that are wrong (0/1 for binary); rows with no labelled output are left out.
    """
    if task == "multiclass":
        return (P.argmax(axis=1) != Y.argmax(axis=1)).astype(np.float64)
    if task in ("binary", "multilabel"):
        labelled = ~np.isnan(Y)
        wrong = ((P >= 0.5) != (np.where(labelled, Y, 0.0) >= 0.5)) & labelled
        n = labelled.sum(axis=1)
        keep = n > 0
        return wrong.sum(axis=1)[keep] / n[keep]
    return None
