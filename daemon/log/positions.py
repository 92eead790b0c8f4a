"""Log positions shared by ingest and the trainer: two counters in a mapped file.

`durable` is written by ingest: the newest log record made durable (and so
acknowledged); the trainer reads the log up to it.  `consumed` is written by the
trainer: the newest record taken into its model or buffers; ingest reads it for
backpressure (it stops reading when `durable - consumed` reaches `queue_size`).  Each is
one aligned 8-byte word with one writer, so a reader sees the old value or the new.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

DURABLE, CONSUMED = 0, 1
_SLOTS = 8


class Positions:
    def __init__(self, path):
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(bytes(8 * _SLOTS))
            os.replace(tmp, path)
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, 8 * _SLOTS)
        self._words = np.ndarray((_SLOTS,), dtype="<i8", buffer=self._map)

    @property
    def durable(self):
        return int(self._words[DURABLE])

    @durable.setter
    def durable(self, lsn):
        self._words[DURABLE] = lsn

    @property
    def consumed(self):
        return int(self._words[CONSUMED])

    @consumed.setter
    def consumed(self, lsn):
        self._words[CONSUMED] = lsn

    def close(self):
        if self._map is not None:
            del self._words
            self._map.close()
            os.close(self._fd)
            self._map = None
