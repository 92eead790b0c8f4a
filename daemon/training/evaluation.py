"""The rows each evaluated split is scored on: bounded reservoirs of held-out rows, and
a window of the most recent training rows.  Each keeps inputs x (size, input_dim),
targets Y (size, n_outputs) and sample weights w (size,), 1 where none were sent; a
reservoir also keeps each row's tags (size, n_tags) bool and id (size,) int64, with
has_id (size,) bool, for error analysis (training.error_analysis).

Every figure is over distinct rows: a row sent again (a replay's second pass) is the
same evidence as the first time, and counting it twice would shrink the standard error
the diagnosis weighs gaps against."""
from __future__ import annotations

import numpy as np

from learnd.daemon.ingest.splits import row_keys
from learnd.daemon.training.checkpoints import pack_array, unpack_array


class Reservoir:
    """At most `size` distinct rows: a uniform sample of the distinct rows offered.

    A row is known by its key, a 64-bit hash of its inputs (daemon.splits.row_keys).  The
    reservoir holds the rows of the `size` smallest keys (a bottom-k sample): keys are
    uniform and independent of the row's values, so that is a uniform sample of every
    distinct row offered so far, whatever their order; and a resent row is the same
    evidence, not new evidence: it keeps its one copy (taking the labels and weight it
    came with last) and is never held twice, so the split's standard error counts
    distinct rows.
    """

    def __init__(self, size, input_dim, n_outputs, dtype, seed=None, n_tags=0):
        self.size = size
        self.x = np.empty((size, input_dim), dtype=dtype)
        self.Y = np.empty((size, n_outputs), dtype=dtype)
        self.w = np.ones(size)
        self.tags = np.zeros((size, n_tags), dtype=bool)
        self.ids = np.zeros(size, dtype=np.int64)
        self.has_id = np.zeros(size, dtype=bool)
        self.keys = np.empty(size, dtype=np.uint64)
        self.filled = 0
        self.offered = 0                 # rows offered, resent ones included

    def offer(self, x, Y, w=None, tags=None, ids=None):
        """Offer rows: x (m, input_dim), Y (m, n_outputs), w (m,), tags (m, n_tags) bool
        (None: untagged), ids (m,) int64 (None: sent without ids)."""
        m = x.shape[0]
        w = np.ones(m) if w is None else w
        tags = np.zeros((m, self.tags.shape[1]), dtype=bool) if tags is None else tags
        has_id = np.full(m, ids is not None)
        ids = np.zeros(m, dtype=np.int64) if ids is None else ids
        a = (x, Y, w, tags, ids, has_id)
        self.offered += m
        # The last copy of each row in this batch stands for it.
        keys, last = np.unique(row_keys(x)[::-1], return_index=True)
        rows = m - 1 - last
        f = self.filled
        _, held, again = np.intersect1d(self.keys[:f], keys, assume_unique=True, return_indices=True)
        self._put(held, rows[again], a)
        fresh = np.ones(keys.shape[0], dtype=bool)
        fresh[again] = False
        keys, rows = keys[fresh], rows[fresh]
        if f + keys.shape[0] > self.size:
            # The size smallest keys of those held and those offered stay.
            cut = np.partition(np.concatenate([self.keys[:f], keys]), self.size - 1)[self.size - 1]
            keys, rows = keys[keys <= cut], rows[keys <= cut]
            slots = np.concatenate([np.arange(f, self.size), np.flatnonzero(self.keys[:f] > cut)])
        else:
            slots = np.arange(f, f + keys.shape[0])
        self._put(slots, rows, a)
        self.keys[slots] = keys
        self.filled = min(self.size, f + keys.shape[0])

    def _put(self, slots, rows, arrays):
        """Rows `rows` of (x, Y, w, tags, ids, has_id) into `slots`."""
        for held, new in zip((self.x, self.Y, self.w, self.tags, self.ids, self.has_id), arrays):
            held[slots] = new[rows]

    def rows(self):
        """(x, Y, w) views of the rows held."""
        return self.x[:self.filled], self.Y[:self.filled], self.w[:self.filled]

    def annotations(self):
        """(tags, ids, has_id) views of the rows held, in the order of rows()."""
        return self.tags[:self.filled], self.ids[:self.filled], self.has_id[:self.filled]

    def to_state(self):
        x, Y, w = self.rows()
        tags, ids, has_id = self.annotations()
        return {"x": pack_array(x), "Y": pack_array(Y), "w": pack_array(w), "offered": self.offered,
                "tags": pack_array(tags), "ids": pack_array(ids), "has_id": pack_array(has_id)}

    def load_state(self, state):
        """Take a saved reservoir.  Keys are computed again from the rows.  One saved
        before rows had keys may hold a row more than once and is no bottom-k sample:
        its rows are offered again (one copy each is kept), and new rows with smaller
        keys replace them as they come."""
        x, Y = unpack_array(state["x"]), unpack_array(state["Y"])
        m = x.shape[0]
        w = unpack_array(state["w"]) if "w" in state else np.ones(m)
        # Saved before rows had tags and ids, or with another max_tags: untagged, or the
        # columns both widths have.
        tags = np.zeros((m, self.tags.shape[1]), dtype=bool)
        if "tags" in state:
            saved = unpack_array(state["tags"])
            k = min(saved.shape[1], tags.shape[1])
            tags[:, :k] = saved[:, :k]
        ids = unpack_array(state["ids"]) if "ids" in state else np.zeros(m, dtype=np.int64)
        has_id = unpack_array(state["has_id"]) if "has_id" in state else np.zeros(m, dtype=bool)
        n = min(m, self.size)
        keys, first = np.unique(row_keys(x[:n]), return_index=True)
        self.filled = keys.shape[0]
        self.keys[:self.filled] = keys
        self._put(np.arange(self.filled), first, (x, Y, w, tags, ids, has_id))
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

    def distinct_rows(self):
        """(x, Y, w) of the rows held, each distinct row once (its most recent copy)."""
        k = self.filled
        idx = (self.pos - k + np.arange(k)) % self.size          # oldest first
        _, last = np.unique(row_keys(self.x[idx])[::-1], return_index=True)
        keep = np.sort(idx[k - 1 - last])
        return self.x[keep], self.Y[keep], self.w[keep]

    def latest(self, k):
        """The k most recent rows, oldest first (copies)."""
        k = min(k, self.filled)
        idx = (self.pos - k + np.arange(k)) % self.size
        return self.x[idx], self.Y[idx]
