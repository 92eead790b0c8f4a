"""The stream's tag vocabulary: every tag name the trainer has met, each with a column of
the held-out rows' tag matrix, so that messages naming their tags in any order (or
naming different ones) are counted alike.

The vocabulary is bounded: the first `max_tags` names get their own column; names met
after that share one more column, OTHER, so the error-by-tag table and its metric
never have more than max_tags + 1 rows.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("learnd.trainer")

OTHER = "(other)"


class TagVocabulary:
    def __init__(self, max_tags):
        self.max_tags = max_tags
        self.names = []               # column -> name, at most max_tags
        self._column = {}
        self._warned = False

    @property
    def width(self):
        """Columns of a tag matrix: one per possible name, and OTHER."""
        return self.max_tags + 1

    def column_names(self):
        """The name of every column (unused ones are never reported)."""
        return [*self.names, *[""] * (self.max_tags - len(self.names)), OTHER]

    def columns(self, names):
        """(T,) int64: the column of each message tag name, adding the new ones while room remains."""
        cols = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            col = self._column.get(name)
            if col is None:
                if len(self.names) < self.max_tags:
                    col = self._column[name] = len(self.names)
                    self.names.append(name)
                else:
                    col = self.max_tags
                    if not self._warned:     # once: every message with such a tag would say it again
                        self._warned = True
                        log.warning("tag %r and any further new tag are past max_tags = %d: counted as %s",
                                    name, self.max_tags, OTHER)
            cols[i] = col
        return cols

    def widen(self, tags, names):
        """A message's (m, T) bool tags as (m, width) bool columns of this vocabulary."""
        cols = self.columns(names)
        onehot = np.zeros((len(names), self.width), dtype=np.int32)
        onehot[np.arange(len(names)), cols] = 1
        # A matrix product ORs several message tags that share OTHER into its one column.
        return (tags.astype(np.int32) @ onehot) > 0

    def to_state(self):
        return {"names": list(self.names)}

    def load_state(self, state):
        self.names, self._column = [], {}
        self.columns(state["names"])
