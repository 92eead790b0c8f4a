"""Inputs kept under row ids by predict requests, for labels that arrive later."""
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
        self._rows: OrderedDict[int, tuple[float, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, ids, x):
        now = self.clock()
        with self._lock:
            for i, row in zip(ids.tolist(), x):
                self._rows.pop(i, None)
                self._rows[i] = (now, row.copy())
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

    def discard(self, ids):
        """Forget ids whose label has come (each row trains once)."""
        with self._lock:
            for i in ids.tolist():
                self._rows.pop(i, None)

    def __len__(self):
        return len(self._rows)
