"""The evaluation history in the state dir: one JSON object per evaluation, one per
line (`eval-history.jsonl`), for learning curves (`learnd report`).

Each record: {"time" (unix s), "samples" (rows trained), "version", "learning_rate",
"train_loss", "splits": {split: figures}, "progressive": figures, "diagnosis":
verdict}.  The file is bounded: past `max_bytes` the older half is dropped.
"""
from __future__ import annotations

import json
import logging
import math
import os

from learnd.engine.state import write_atomic

log = logging.getLogger("learnd.history")

HISTORY_FILE = "eval-history.jsonl"
MAX_BYTES = 32 * 1024 * 1024


def _finite(value):
    """JSON has no NaN or Infinity: such figures are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class EvalHistory:
    def __init__(self, state_dir, max_bytes=MAX_BYTES):
        self.path = os.path.join(state_dir, HISTORY_FILE)
        self.max_bytes = max_bytes

    def append(self, record):
        line = json.dumps(_finite(record), separators=(",", ":")) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                size = f.tell()
            if size > self.max_bytes:
                self._drop_older_half()
        except OSError as exc:   # a full disk must not stop training; the curves have a gap
            log.warning("evaluation history not written: %s", exc)

    def _drop_older_half(self):
        with open(self.path, "rb") as f:
            lines = f.readlines()
        write_atomic(self.path, b"".join(lines[len(lines) // 2:]))


def read_history(state_dir):
    """The records of <state_dir>/eval-history.jsonl, oldest first (a torn last line,
    from a crash mid-write, is skipped)."""
    path = os.path.join(state_dir, HISTORY_FILE)
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records
