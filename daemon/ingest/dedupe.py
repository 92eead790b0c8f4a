"""Remembers (producer, seq) pairs so a resent batch is acknowledged but not trained twice."""
from __future__ import annotations

from collections import OrderedDict

MAX_PRODUCERS = 10_000


class Dedupe:
    """Per producer: the highest seq seen and the set of seqs within `window` below it.

    A seq more than `window` below the highest is taken as already seen: a producer
    that resends something that old has lost track of it, and training it again
    could only be wrong.  At most MAX_PRODUCERS producers are remembered (least
    recently active forgotten first).
    """

    def __init__(self, window=65536):
        self.window = window
        self._producers: OrderedDict[str, tuple[int, set]] = OrderedDict()

    def seen(self, producer, seq):
        entry = self._producers.get(producer)
        if entry is None:
            return False
        high, seqs = entry
        return seq <= high - self.window or seq in seqs

    def add(self, producer, seq):
        high, seqs = self._producers.pop(producer, (-1, set()))
        seqs.add(seq)
        if seq > high:
            high = seq
            if len(seqs) > self.window + self.window // 2:
                seqs = {s for s in seqs if s > high - self.window}
        self._producers[producer] = (high, seqs)
        while len(self._producers) > MAX_PRODUCERS:
            self._producers.popitem(last=False)

    def copy(self):
        other = Dedupe(self.window)
        other._producers = OrderedDict((p, (h, set(s))) for p, (h, s) in self._producers.items())
        return other

    def to_state(self):
        return {p: [h, sorted(s)] for p, (h, s) in self._producers.items()}

    @classmethod
    def from_state(cls, state, window):
        d = cls(window)
        for producer, (high, seqs) in state.items():
            d._producers[producer] = (int(high), set(int(s) for s in seqs))
        return d

    def __len__(self):
        return len(self._producers)
