"""Held-out rows kept in bounded reservoirs and scored on a period."""
from __future__ import annotations

import numpy as np

from .checkpoints import pack_array, unpack_array


class Reservoir:
    """At most `size` rows, a uniform sample of all rows offered (Vitter's algorithm R,
    vectorized per batch), so the split's figures describe its whole history."""

    def __init__(self, size, input_dim, n_outputs, dtype, seed):
        self.size = size
        self.x = np.empty((size, input_dim), dtype=dtype)
        self.Y = np.empty((size, n_outputs), dtype=dtype)
        self.filled = 0
        self.offered = 0
        self.rng = np.random.default_rng(seed)

    def offer(self, x, Y):
        m = x.shape[0]
        take = min(m, self.size - self.filled)
        if take:
            self.x[self.filled:self.filled + take] = x[:take]
            self.Y[self.filled:self.filled + take] = Y[:take]
            self.filled += take
        rest = m - take
        if rest:
            # Row number k (1-based, over all offered) replaces a random slot with prob size/k.
            k = self.offered + take + 1 + np.arange(rest)
            slots = (self.rng.random(rest) * k).astype(np.int64)
            keep = slots < self.size
            self.x[slots[keep]] = x[take:][keep]
            self.Y[slots[keep]] = Y[take:][keep]
        self.offered += m

    def rows(self):
        return self.x[:self.filled], self.Y[:self.filled]

    def to_state(self):
        x, Y = self.rows()
        return {"x": pack_array(x), "Y": pack_array(Y), "offered": self.offered}

    def load_state(self, state):
        x, Y = unpack_array(state["x"]), unpack_array(state["Y"])
        self.filled = x.shape[0]
        self.x[:self.filled], self.Y[:self.filled] = x, Y
        self.offered = int(state["offered"])


class RecentWindow:
    """The last `size` training rows, a ring buffer, for the train-split figures."""

    def __init__(self, size, input_dim, n_outputs, dtype):
        self.size = size
        self.x = np.empty((size, input_dim), dtype=dtype)
        self.Y = np.empty((size, n_outputs), dtype=dtype)
        self.filled = 0
        self.pos = 0

    def offer(self, x, Y):
        m = x.shape[0]
        if m >= self.size:
            x, Y, m = x[-self.size:], Y[-self.size:], self.size
        first = min(m, self.size - self.pos)
        self.x[self.pos:self.pos + first], self.Y[self.pos:self.pos + first] = x[:first], Y[:first]
        rest = m - first
        if rest:
            self.x[:rest], self.Y[:rest] = x[first:], Y[first:]
        self.pos = (self.pos + m) % self.size
        self.filled = min(self.size, self.filled + m)

    def rows(self):
        return self.x[:self.filled], self.Y[:self.filled]

    def latest(self, k):
        """The k most recent rows, oldest first (copies)."""
        k = min(k, self.filled)
        idx = (self.pos - k + np.arange(k)) % self.size
        return self.x[idx], self.Y[idx]
