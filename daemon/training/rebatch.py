"""Re-batching: rows from messages of any size become steps of a fixed size."""
from __future__ import annotations

import numpy as np


class Rebatcher:
    """A growable row buffer of inputs x (n, d), targets Y (n, K) and weights w (n,).

    Rows are appended message by message; `take(k)` hands out the oldest k rows as
    views that stay valid until the next append or take.
    """

    def __init__(self, input_dim, n_outputs, dtype):
        self.dtype = np.dtype(dtype)
        self.x = np.empty((0, input_dim), dtype=self.dtype)
        self.Y = np.empty((0, n_outputs), dtype=self.dtype)
        self.w = np.empty(0, dtype=np.float64)
        self.weighted = np.empty(0, dtype=bool)
        self.start = 0          # first row not yet handed out
        self.end = 0            # one past the last row appended
        self.oldest_time = None  # when the oldest waiting row arrived

    def __len__(self):
        return self.end - self.start

    def append(self, x, Y, w, now):
        m = x.shape[0]
        self._make_room(m)
        self.x[self.end:self.end + m] = x
        self.Y[self.end:self.end + m] = Y
        self.w[self.end:self.end + m] = 1.0 if w is None else w
        self.weighted[self.end:self.end + m] = w is not None
        if len(self) == 0:
            self.oldest_time = now
        self.end += m

    def _make_room(self, m):
        n = len(self)
        if self.end + m <= self.x.shape[0]:
            return
        # Move the waiting rows to the front, growing the buffer if they still don't fit.
        cap = max(self.x.shape[0], 2 * (n + m), 256)
        for name in ("x", "Y", "w", "weighted"):
            old = getattr(self, name)
            new = old if cap == old.shape[0] else np.empty((cap, *old.shape[1:]), dtype=old.dtype)
            new[:n] = old[self.start:self.end].copy() if new is old else old[self.start:self.end]
            setattr(self, name, new)
        self.start, self.end = 0, n

    def take(self, k, now):
        """The oldest k rows: (x, Y, w or None when no row carried a weight)."""
        s = self.start
        self.start += k
        weighted = self.weighted[s:s + k].any()
        batch = (self.x[s:s + k], self.Y[s:s + k], self.w[s:s + k] if weighted else None)
        if len(self) == 0:
            self.start = self.end = 0
            self.oldest_time = None
        else:
            self.oldest_time = now
        return batch

    def to_state(self):
        s, e = self.start, self.end
        return {"x": self.x[s:e].copy(), "Y": self.Y[s:e].copy(), "w": self.w[s:e].copy(),
                "weighted": self.weighted[s:e].copy()}

    def load_state(self, state, now):
        m = state["x"].shape[0]
        self.start = self.end = 0
        if m:
            self._make_room(m)
            self.x[:m], self.Y[:m], self.w[:m], self.weighted[:m] = (
                state["x"], state["Y"], state["w"], state["weighted"])
            self.end = m
            self.oldest_time = now
