"""The rows each evaluated split is scored on: bounded reservoirs of held-out rows, and
a window of the most recent training rows.  Each keeps inputs x (size, input_dim),
targets Y (size, n_outputs) and sample weights w (size,), 1 where none were sent."""
from __future__ import annotations

import numpy as np

from learnd.daemon.training.checkpoints import pack_array, unpack_array


class Reservoir:
    """At most `size` rows, a uniform sample of all rows offered (Vitter's algorithm R,
    vectorized per batch), so the split's figures describe its whole history."""

    def __init__(self, size, input_dim, n_outputs, dtype, seed):
        self.size = size
        self.x = np.empty((size, input_dim), dtype=dtype)
        self.Y = np.empty((size, n_outputs), dtype=dtype)
        self.w = np.ones(size)
        self.filled = 0
        self.offered = 0
        self.rng = np.random.default_rng(seed)

    def offer(self, x, Y, w=None):
        m = x.shape[0]
        w = np.ones(m) if w is None else w
        take = min(m, self.size - self.filled)
        if take:
            self.x[self.filled:self.filled + take] = x[:take]
            self.Y[self.filled:self.filled + take] = Y[:take]
            self.w[self.filled:self.filled + take] = w[:take]
            self.filled += take
        rest = m - take
        if rest:
            # Row number k (1-based, over all offered) replaces a random slot with prob size/k.
            k = self.offered + take + 1 + np.arange(rest)
            slots = (self.rng.random(rest) * k).astype(np.int64)
            keep = slots < self.size
            self.x[slots[keep]] = x[take:][keep]
            self.Y[slots[keep]] = Y[take:][keep]
            self.w[slots[keep]] = w[take:][keep]
        self.offered += m

    def rows(self):
        """(x, Y, w) views of the rows held."""
        return self.x[:self.filled], self.Y[:self.filled], self.w[:self.filled]

    def to_state(self):
        x, Y, w = self.rows()
        return {"x": pack_array(x), "Y": pack_array(Y), "w": pack_array(w), "offered": self.offered}

    def load_state(self, state):
        x, Y = unpack_array(state["x"]), unpack_array(state["Y"])
        self.filled = min(x.shape[0], self.size)
        self.x[:self.filled], self.Y[:self.filled] = x[:self.filled], Y[:self.filled]
        self.w[:self.filled] = unpack_array(state["w"])[:self.filled] if "w" in state else 1.0
        self.offered = int(state["offered"])


class RecentWindow:
    """The last `size` training rows, a ring buffer, for the train-split figures."""

    def __init__(self, size, input_dim, n_outputs, dtype):
        self.size = size
        self.x = np.empty((size, input_dim), dtype=dtype)
        self.Y = np.empty((size, n_outputs), dtype=dtype)
        self.w = np.ones(size)
        self.filled = 0
        self.pos = 0

    def offer(self, x, Y, w=None):
        m = x.shape[0]
        w = np.ones(m) if w is None else w
        if m >= self.size:
            x, Y, w, m = x[-self.size:], Y[-self.size:], w[-self.size:], self.size
        first = min(m, self.size - self.pos)
        end = self.pos + first
        self.x[self.pos:end], self.Y[self.pos:end], self.w[self.pos:end] = x[:first], Y[:first], w[:first]
        rest = m - first
        if rest:
            self.x[:rest], self.Y[:rest], self.w[:rest] = x[first:], Y[first:], w[first:]
        self.pos = (self.pos + m) % self.size
        self.filled = min(self.size, self.filled + m)

    def rows(self):
        """(x, Y, w) views of the rows held (in slot order, not time order)."""
        return self.x[:self.filled], self.Y[:self.filled], self.w[:self.filled]

    def latest(self, k):
        """The k most recent rows, oldest first (copies)."""
        k = min(k, self.filled)
        idx = (self.pos - k + np.arange(k)) % self.size
        return self.x[idx], self.Y[idx]
