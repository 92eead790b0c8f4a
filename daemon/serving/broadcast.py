"""The `snapshots` socket: each published model version, for followers.

An XPUB socket, used only by the thread that publishes.  A snapshot is serialized and
sent only while someone subscribes (XPUB tells subscriptions), and a subscription gets
the current snapshot at once instead of waiting for the next version: a follower that
joins, reconnects to a restarted trainer, or subscribes again because it knows it
missed a version.  Sending never blocks the trainer: past the high-water mark ZeroMQ
drops the message for that subscriber (a slow follower misses versions, and catches up
on a later one).

Every message names this start of the publisher (`publisher`, a random number), the
publication (`seq`), its `version` and when it was published (`published`, Unix
seconds); while no version is new, a header-only `heartbeat` says the same every
`heartbeat_s`.  So a follower knows the newest version the trainer has, and when it
last heard from it: its lag is measured, not guessed (serving.subscription).

Messages: the wire protocol's envelope and header {"op": "snapshot" | "heartbeat",
"publisher", "seq", "version", "published", "heartbeat_s", "meta"}; a snapshot adds one
array, `snapshot` (uint8): the bytes of `Snapshot.to_bytes()`, the same bytes the predict
workers map (docs/protocol.md section 5a).
"""
from __future__ import annotations

import logging
import secrets
import time

import numpy as np
import zmq

from learnd.clients import protocol

log = logging.getLogger("learnd.snapshots")

SNDHWM = 4          # messages queued per subscriber before newer ones are dropped for it
HEARTBEAT_S = 0.25  # longest silence towards subscribers while a version exists


class SnapshotBroadcast:
    def __init__(self, socket, heartbeat_s=HEARTBEAT_S):
        self.socket = socket
        self.heartbeat_s = heartbeat_s
        # Publication numbers restart with the publisher: this number tells a follower
        # that a seq it has seen belongs to an earlier start.
        self.publisher = secrets.randbits(62)
        self.subscribers = 0     # subscriptions seen minus unsubscriptions (best effort)
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self._current = None     # the newest published snapshot
        self._data = None        # its bytes, once serialized
        self._published = 0.0    # its publication time (Unix seconds)
        self._last_send = float("-inf")

    @staticmethod
    def configure(socket):
        """Options to set before the XPUB socket is bound."""
        socket.setsockopt(zmq.SNDHWM, SNDHWM)
        socket.setsockopt(zmq.XPUB_VERBOSE, 1)    # every subscribe, so late joiners are seen
        socket.setsockopt(zmq.XPUB_NODROP, 0)

    def poll_subscriptions(self):
        """Read subscription messages; True when a subscription arrived."""
        joined = False
        while True:
            try:
                msg = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return joined
            if msg[:1] == b"\x01":
                self.subscribers += 1
                joined = True
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)

    def publish(self, snapshot, data=None):
        """A new version: send `snapshot` (its bytes `data` when already serialized) if
        anyone listens.  Returns True when it was offered to subscribers."""
        self.seq += 1
        self._current, self._data, self._published = snapshot, data, time.time()
        if self.subscribers == 0:
            return False
        self._send(with_snapshot=True)
        return True

    def tick(self, now=None):
        """Between the trainer's steps: answer subscriptions with the current version,
        and send a heartbeat when nothing has gone out for heartbeat_s."""
        now = time.monotonic() if now is None else now
        joined = self.poll_subscriptions()
        if self._current is None or self.subscribers == 0:
            return
        if joined:
            self._send(with_snapshot=True, now=now)
        elif now - self._last_send >= self.heartbeat_s:
            self._send(with_snapshot=False, now=now)

    def _send(self, with_snapshot, now=None):
        snap = self._current
        header = {"op": "snapshot" if with_snapshot else "heartbeat", "publisher": self.publisher,
                  "seq": self.seq, "version": int(snap.version), "published": self._published,
                  "heartbeat_s": self.heartbeat_s, "meta": snap.meta}
        arrays = None
        if with_snapshot:
            if self._data is None:       # kept: a later subscription gets the same bytes
                self._data = snap.to_bytes()
            arrays = {"snapshot": np.frombuffer(self._data, dtype=np.uint8)}
        frames = protocol.encode(header, arrays)
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1
        self._last_send = time.monotonic() if now is None else now
