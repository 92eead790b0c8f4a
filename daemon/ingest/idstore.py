"""Inputs kept under row ids by predict requests, for labels that arrive later, with the
rows' tags when the request carried some (error analysis, ingest.tags)."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np


class IdStore:
    """At most `size` rows, each forgotten `ttl_s` seconds after it was stored.

    Written by the predict thread, read by the ingest thread: one lock guards it.
    """

    def __init__(self, size, ttl_s, clock=time.monotonic):
        self.size = size
        self.ttl_s = ttl_s
        self.clock = clock
        self._rows: OrderedDict[int, tuple] = OrderedDict()     # id -> (time, x row, tag names)
        self._lock = threading.Lock()

    def put(self, ids, x, tags=None):
        """Keep rows x (m, d) under ids (m,); tags: (multi-hot (m, T) bool, T names) or None."""
        now = self.clock()
        names = [()] * len(ids) if tags is None else _row_names(*tags)
        with self._lock:
            for i, row, row_tags in zip(ids.tolist(), x, names):
                self._rows.pop(i, None)
                self._rows[i] = (now, row.copy(), row_tags)
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)

    def get(self, ids):
        """(x (m, d), [], []) for stored, fresh ids, or (None, unknown ids, expired ids):
        unknown were never stored (or were pushed out by newer rows, or already
        labelled), expired were stored more than ttl_s ago."""
        now = self.clock()
        with self._lock:
            unknown = [i for i in ids.tolist() if i not in self._rows]
            expired = [i for i in ids.tolist()
                       if i in self._rows and now - self._rows[i][0] > self.ttl_s]
            if unknown or expired:
                return None, unknown, expired
            rows = [self._rows[i][1] for i in ids.tolist()]
        return np.stack(rows), [], []

    def tags(self, ids):
        """(multi-hot (m, U) bool, U names) of the tags stored with ids (all of them
        stored), or (None, ()) when none of them has a tag."""
        with self._lock:
            per_row = [self._rows[i][2] for i in ids.tolist()]
        names = sorted({n for row in per_row for n in row})
        if not names:
            return None, ()
        column = {n: k for k, n in enumerate(names)}
        hot = np.zeros((len(per_row), len(names)), dtype=bool)
        for r, row in enumerate(per_row):
            hot[r, [column[n] for n in row]] = True
        return hot, tuple(names)

    def discard(self, ids):
        """Forget ids whose label has come (each row trains once)."""
        with self._lock:
            for i in ids.tolist():
                self._rows.pop(i, None)

    def __len__(self):
        return len(self._rows)


def _row_names(hot, names):
    """Each row's tag names, as a tuple (an id store keeps rows one by one)."""
    return [tuple(names[j] for j in np.flatnonzero(row)) for row in hot]
