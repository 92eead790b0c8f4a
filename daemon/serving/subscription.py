"""A follower's view of a trainer's snapshots socket: the newest version it holds, the
newest the trainer has announced, and how far behind the first is.

Every message from the trainer (serving.broadcast) names the publisher's start, the
publication number, the version and its publication time; a snapshot message carries
the model too.  From them the follower knows, without guessing:

- lag in versions: the newest version announced minus the one held (at least 1 while a
  newer publication is known and has not arrived);
- lag in seconds: 0 while it holds the newest publication and has heard from the trainer
  within SILENT_HEARTBEATS heartbeats; else the seconds since it learned of a newer
  publication, or since it last heard from the trainer, whichever is longer.

A message from another start of the publisher (a restarted trainer) always replaces
what is held, whatever its version: the follower serves what the trainer serves.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from learnd.clients import protocol
from learnd.clients.protocol import ProtocolError
from learnd.engine.ensemble import snapshot_from_buffer

log = logging.getLogger("learnd.follower")

OPS = ("snapshot", "heartbeat")
SILENT_HEARTBEATS = 3       # heartbeats missed before the trainer counts as silent
ALIGN = 64                  # the snapshot format lays its arrays on 64-byte boundaries
ASK_INTERVAL_S = 1.0        # least time between two requests for the current snapshot


@dataclass(frozen=True)
class Publication:
    """What a message says about one publication of the trainer."""

    publisher: int
    seq: int
    version: int
    published: float      # Unix seconds, the trainer's clock


def _publication(header):
    fields = {}
    for name, kind in (("publisher", int), ("seq", int), ("version", int), ("published", (int, float)),
                       ("heartbeat_s", (int, float))):
        value = header.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProtocolError("bad_header", f"a {header.get('op')} message needs a number {name!r}, "
                                              f"got {value!r}")
        fields[name] = value
    if not fields["heartbeat_s"] > 0:
        raise ProtocolError("bad_header", f"heartbeat_s must be > 0, got {fields['heartbeat_s']!r}")
    return Publication(fields["publisher"], fields["seq"], fields["version"],
                       float(fields["published"])), float(fields["heartbeat_s"])


def aligned_copy(buf):
    """The bytes of `buf` in a new array that starts on an ALIGN-byte boundary, so that the
    snapshot's arrays sit as they do in the trainer's memory and the predict workers' maps."""
    src = np.frombuffer(buf, dtype=np.uint8)
    raw = np.empty(src.size + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    out = raw[start:start + src.size]
    out[:] = src
    return out


class SnapshotSubscription:
    """Holds the newest snapshot received; `on_message(frames)` takes each message of the
    SUB socket.  `snapshot` is what PredictServer reads (replaced whole, never mutated)."""

    def __init__(self, limits, clock=time.monotonic, wall=time.time):
        self.limits = limits
        self.clock = clock
        self.wall = wall
        self.snapshot = None           # the engine Snapshot (or Ensemble) that serves
        self.held = None               # its Publication
        self.newest = None             # the newest Publication announced
        self.heard_at = None           # clock() of the last message from the trainer
        self.behind_since = None       # clock() when a publication newer than `held` was first known
        self.heartbeat_s = 1.0
        self._asked_at = float("-inf")

    def on_message(self, frames):
        """Take one message: [b"", header, (snapshot bytes)].  Returns (op, delay): delay is
        the seconds from its publication to serving it here (trainer's clock against this
        host's) when a snapshot message brought a new version, else None.  Raises
        ProtocolError for a message that is no snapshot or heartbeat."""
        message = protocol.decode(frames, self.limits)
        if message.op not in OPS:
            raise ProtocolError("unknown_op", f"the snapshots socket sends {' or '.join(OPS)}, "
                                              f"not {message.op!r}")
        pub, heartbeat_s = _publication(message.header)
        now = self.clock()
        delay = None
        if message.op == "snapshot":
            if "snapshot" not in message.arrays:
                raise ProtocolError("bad_array", "a snapshot message carries the array 'snapshot'")
            if self._is_new(pub):
                self._apply(pub, message.arrays["snapshot"])
                delay = max(0.0, self.wall() - pub.published)
        self.heard_at, self.heartbeat_s = now, heartbeat_s
        if self.newest is None or pub.publisher != self.newest.publisher or pub.seq >= self.newest.seq:
            self.newest = pub
        if self.behind():
            if self.behind_since is None:
                self.behind_since = now
        else:
            self.behind_since = None
        return message.op, delay

    def _is_new(self, pub):
        return self.held is None or pub.publisher != self.held.publisher or pub.seq > self.held.seq

    def _apply(self, pub, data):
        try:
            snap = snapshot_from_buffer(aligned_copy(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError("bad_array", f"the snapshot bytes do not read as a snapshot: {exc}") from None
        if snap.version != pub.version:
            raise ProtocolError("bad_header", f"the header names version {pub.version}, its snapshot "
                                              f"holds {snap.version}")
        self.snapshot, self.held = snap, pub
        log.debug("serving version %d (publication %d)", pub.version, pub.seq)

    # -- lag ------------------------------------------------------------------------------------
    def behind(self):
        """True when the trainer has announced a publication that is not held here."""
        if self.newest is None or self.held is None:
            return self.newest is not None
        return self.newest.publisher != self.held.publisher or self.newest.seq > self.held.seq

    def silent(self, now=None):
        """True when nothing has come from the trainer for SILENT_HEARTBEATS heartbeats."""
        now = self.clock() if now is None else now
        return self.heard_at is None or now - self.heard_at > SILENT_HEARTBEATS * self.heartbeat_s

    def lag(self, now=None):
        """(versions, seconds) behind the trainer; (nan, nan) before the first snapshot."""
        if self.held is None:
            return float("nan"), float("nan")
        now = self.clock() if now is None else now
        versions, seconds = 0, 0.0
        if self.behind():
            versions = max(1, self.newest.version - self.held.version)
            seconds = now - self.behind_since
        if self.silent(now):
            seconds = max(seconds, now - self.heard_at)
        return versions, seconds

    def wants_current(self, now=None):
        """True when the follower should ask for the current snapshot again (subscribe
        once more): it knows of a newer publication than it holds, for longer than a
        heartbeat (the snapshot was dropped on the way), and has not asked lately."""
        now = self.clock() if now is None else now
        if (self.behind_since is None or now - self.behind_since < self.heartbeat_s
                or now - self._asked_at < ASK_INTERVAL_S):
            return False
        self._asked_at = now
        return True
