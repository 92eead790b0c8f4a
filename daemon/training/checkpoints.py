"""Checkpoint files: written atomically, the last few kept, the newest readable one loaded.

A file is  b"LEARNDCK" | u32 format version | u64 payload length | sha256(payload) |
payload,  the payload a msgpack map {"model": <engine .npz bytes>, "daemon": {...}}.
The checksum catches a truncated or corrupt file, which is then skipped for the one
before it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
from dataclasses import dataclass

import msgpack
import numpy as np

from learnd.daemon.ingest.dedupe import Dedupe
from learnd.engine.state import write_atomic

log = logging.getLogger("learnd.checkpoints")

MAGIC = b"LEARNDCK"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sIQ32s")


class CorruptCheckpoint(ValueError):
    pass


def encode(payload):
    body = msgpack.packb(payload, use_bin_type=True)
    return _HEAD.pack(MAGIC, FORMAT_VERSION, len(body), hashlib.sha256(body).digest()) + body


def decode(data):
    if len(data) < _HEAD.size:
        raise CorruptCheckpoint(f"{len(data)} bytes is shorter than the header")
    magic, version, length, digest = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpoint("not a learnd checkpoint (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptCheckpoint(f"checkpoint format {version} is not supported")
    body = data[_HEAD.size:]
    if len(body) != length:
        raise CorruptCheckpoint(f"truncated: {len(body)} of {length} payload bytes")
    if hashlib.sha256(body).digest() != digest:
        raise CorruptCheckpoint("checksum mismatch")
    return msgpack.unpackb(body, raw=False)


class CheckpointStore:
    """checkpoint-<n>.ckpt files in `directory`, n rising; keeps the newest `keep`."""

    def __init__(self, directory, keep=3, writer=True):
        """writer: this process writes checkpoints (and so may remove its own partial
        writes); a reader (the ingest process) must not touch another's temporary file."""
        self.directory = directory
        self.keep = keep
        os.makedirs(directory, exist_ok=True)
        if writer:
            self._remove_partial_writes()

    def _remove_partial_writes(self):
        """Delete the temporary files a crash mid-write left (write_atomic's .tmp-*.part):
        nothing reads them, and each may be as large as a checkpoint."""
        for name in os.listdir(self.directory):
            if name.startswith(".tmp-") and name.endswith(".part"):
                os.unlink(os.path.join(self.directory, name))
                log.warning("removed %s, a write cut short by a crash", name)

    def files(self):
        """[(n, path)] oldest first."""
        out = []
        for name in os.listdir(self.directory):
            if name.startswith("checkpoint-") and name.endswith(".ckpt"):
                try:
                    out.append((int(name[len("checkpoint-"):-len(".ckpt")]), os.path.join(self.directory, name)))
                except ValueError:
                    continue
        return sorted(out)

    def write(self, payload):
        """Write a new newest checkpoint and drop the ones past `keep`; returns its path."""
        files = self.files()
        n = files[-1][0] + 1 if files else 1
        path = os.path.join(self.directory, f"checkpoint-{n:08d}.ckpt")
        write_atomic(path, encode(payload))
        for _, old in self.files()[:-self.keep]:
            os.unlink(old)
        return path

    def load_newest(self, parse, on_failure=None):
        """(parse(payload), path) of the newest checkpoint that reads and parses, or
        (None, None).  Each one that does not is logged, passed to
        on_failure(path, error), and skipped for the one before it.
        """
        for _, path in reversed(self.files()):
            try:
                with open(path, "rb") as f:
                    return parse(decode(f.read())), path
            except (OSError, CorruptCheckpoint, ValueError, KeyError, TypeError) as exc:
                log.error("checkpoint %s is unreadable (%s); trying the one before it", path, exc)
                if on_failure is not None:
                    on_failure(path, exc)
        return None, None


def pack_array(arr):
    """An ndarray as a msgpack-able map (little-endian bytes, dtype, shape)."""
    arr = np.ascontiguousarray(arr)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_array(d):
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


@dataclass
class ConsumedState:
    """What the newest checkpoint says was consumed: the stream's schema, the (producer,
    seq) pairs taken, and the newest log record in it."""

    schema: dict
    dedupe: Dedupe
    last_lsn: int


def newest_consumed_state(store, dedupe_window):
    """The ConsumedState of the newest readable checkpoint in `store` (an empty one when
    there is none), read without building the model."""
    def parse(payload):
        d = payload["daemon"]
        return ConsumedState(dict(d["schema"]), Dedupe.from_state(d["dedupe"], dedupe_window), int(d["last_lsn"]))

    state, _ = store.load_newest(parse)
    return state if state is not None else ConsumedState({}, Dedupe(dedupe_window), 0)
