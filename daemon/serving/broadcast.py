"""The `snapshots` socket: each published model version, for followers.

An XPUB socket, used only by the thread that publishes.  A snapshot is serialized and
sent only while someone subscribes (XPUB tells subscriptions), and a new subscriber
gets the current snapshot at once instead of waiting for the next version.  Sending
never blocks the trainer: past the high-water mark ZeroMQ drops the message for that
subscriber (a slow follower misses versions, and catches up on a later one).

Message: the wire protocol's envelope and header {"op": "snapshot", "version", "seq",
"meta"} and one array, `snapshot` (uint8): the bytes of `Snapshot.to_bytes()`, the same
bytes the predict workers map (docs/protocol.md).
"""
from __future__ import annotations

import logging

import numpy as np
import zmq

from learnd.clients import protocol

log = logging.getLogger("learnd.snapshots")

SNDHWM = 4      # snapshots queued per subscriber before newer ones are dropped for it


class SnapshotBroadcast:
    def __init__(self, socket):
        self.socket = socket
        self.subscribers = 0     # subscriptions seen minus unsubscriptions (best effort)
        self.seq = 0
        self.sent = 0
        self.dropped = 0

    @staticmethod
    def configure(socket):
        """Options to set before the XPUB socket is bound."""
        socket.setsockopt(zmq.SNDHWM, SNDHWM)
        socket.setsockopt(zmq.XPUB_VERBOSE, 1)    # every subscribe, so late joiners are seen
        socket.setsockopt(zmq.XPUB_NODROP, 0)

    def poll_subscriptions(self):
        """Read subscription messages; True when a new subscriber arrived."""
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
        """Send `snapshot` (its bytes `data` when already serialized) if anyone listens."""
        self.seq += 1
        if self.subscribers == 0:
            return False
        if data is None:
            data = snapshot.to_bytes()
        frames = protocol.encode({"op": "snapshot", "version": int(snapshot.version), "seq": self.seq,
                                  "meta": snapshot.meta},
                                 {"snapshot": np.frombuffer(data, dtype=np.uint8)})
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1
        return True
