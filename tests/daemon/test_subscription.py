"""The snapshot stream between a trainer's SnapshotBroadcast and a follower's
SnapshotSubscription, over a real XPUB/SUB pair on inproc, with the clocks in the test's hands."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import zmq

from learnd.clients import protocol
from learnd.clients.protocol import DEFAULT_LIMITS, ProtocolError
from learnd.daemon.serving.broadcast import SnapshotBroadcast
from learnd.daemon.serving.subscription import SILENT_HEARTBEATS, SnapshotSubscription, aligned_copy
from learnd.engine import Model

BIG = protocol.Limits(max_array_bytes=1 << 28, max_message_bytes=1 << 28)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def pair():
    """(broadcast, SUB socket) connected over inproc, the subscription seen by the XPUB."""
    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)
    SnapshotBroadcast.configure(xpub)
    xpub.bind("inproc://snapshots")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect("inproc://snapshots")
    broadcast = SnapshotBroadcast(xpub, heartbeat_s=0.25)
    yield broadcast, sub
    sub.close(linger=0)
    xpub.close(linger=0)
    ctx.term()


def _snapshot(seed, version):
    rng = np.random.default_rng(seed)
    model = Model(hidden=(4,), task="binary", n_outputs=1, input_dim=3, seed=seed)
    model.partial_fit(rng.standard_normal((8, 3)), rng.integers(0, 2, 8))
    return model.snapshot(version=version)


def _receive(sub):
    assert sub.poll(2000), "nothing arrived"
    return sub.recv_multipart(copy=False)


def test_a_subscriber_gets_the_current_version_then_heartbeats_and_new_versions(pair):
    broadcast, sub = pair
    clock = Clock()
    follower = SnapshotSubscription(BIG, clock=clock)
    snap = _snapshot(0, 5)
    broadcast.publish(snap)                 # nobody listens yet: not sent, but kept
    broadcast.tick(now=0.0)                 # the subscription arrives: the current version goes out
    op, delay = follower.on_message(_receive(sub))
    assert op == "snapshot" and delay is not None and 0 <= delay < 5
    assert follower.snapshot.version == 5 and follower.lag() == (0, 0.0)
    x = np.ones((2, 3), np.float32)
    assert np.array_equal(follower.snapshot.predict_into(x, np.empty((2, 1), np.float32),
                                                         follower.snapshot.new_workspace()),
                          snap.predict_into(x, np.empty((2, 1), np.float32), snap.new_workspace()))
    broadcast.tick(now=0.1)                 # within the heartbeat: nothing
    assert not sub.poll(50)
    broadcast.tick(now=0.3)
    assert follower.on_message(_receive(sub)) == ("heartbeat", None)
    broadcast.publish(_snapshot(1, 6))
    assert follower.on_message(_receive(sub))[0] == "snapshot" and follower.snapshot.version == 6


def test_lag_counts_a_missed_publication_and_a_silent_trainer(pair):
    broadcast, sub = pair
    clock = Clock()
    follower = SnapshotSubscription(BIG, clock=clock)
    assert all(math.isnan(v) for v in follower.lag())
    broadcast.publish(_snapshot(0, 1))
    broadcast.tick(now=0.0)
    follower.on_message(_receive(sub))
    # Version 2 and 3 are published but only a heartbeat naming 3 arrives (the snapshots
    # were dropped on the way): two versions behind from the moment it is known.
    broadcast.publish(_snapshot(0, 2))
    _receive(sub)
    broadcast.publish(_snapshot(0, 3))
    _receive(sub)
    broadcast.tick(now=time.monotonic() + 1.0)      # the clock of publish(): past a heartbeat
    clock.t += 0.1
    assert follower.on_message(_receive(sub)) == ("heartbeat", None)
    assert follower.behind() and follower.lag() == (2, 0.0)
    assert not follower.wants_current()          # give the snapshot a heartbeat to come
    clock.t += 0.5
    assert follower.lag() == (2, 0.5)
    assert follower.wants_current() and not follower.wants_current()    # asked; not again at once
    # Subscribing again brings the current snapshot.
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    deadline = time.monotonic() + 2
    while follower.snapshot.version != 3 and time.monotonic() < deadline:
        broadcast.tick(now=time.monotonic())
        if sub.poll(50):
            follower.on_message(sub.recv_multipart(copy=False))
    assert follower.snapshot.version == 3 and follower.lag() == (0, 0.0)
    # Then the trainer goes quiet: after 3 heartbeats, the lag is the silence.
    clock.t += SILENT_HEARTBEATS * 0.25 - 0.01
    assert follower.lag() == (0, 0.0)
    clock.t += 2.0
    versions, seconds = follower.lag()
    assert versions == 0 and seconds == pytest.approx(SILENT_HEARTBEATS * 0.25 + 1.99)


def test_a_restarted_publisher_replaces_the_version_whatever_its_number(pair):
    broadcast, sub = pair
    follower = SnapshotSubscription(BIG, clock=Clock())
    broadcast.publish(_snapshot(0, 9))
    broadcast.tick(now=0.0)
    follower.on_message(_receive(sub))
    broadcast.tick(now=0.0)                          # a repeated welcome: a duplicate
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    deadline = time.monotonic() + 2
    while not sub.poll(20) and time.monotonic() < deadline:
        broadcast.tick(now=0.0)
    assert follower.on_message(sub.recv_multipart(copy=False)) == ("snapshot", None)
    # The same socket stands in for a new start of the trainer: a new publisher number,
    # publication numbers from 1 again, and a lower version (a checkpoint from before).
    restarted = SnapshotBroadcast(broadcast.socket)
    restarted.subscribers = 1
    restarted.publish(_snapshot(2, 4))
    op, delay = follower.on_message(_receive(sub))
    assert op == "snapshot" and delay is not None and follower.snapshot.version == 4
    assert follower.lag() == (0, 0.0)


@pytest.mark.parametrize("header, arrays, code", [
    ({"op": "predict"}, None, "unknown_op"),
    ({"op": "heartbeat", "publisher": 1, "seq": 1, "version": 1, "published": 0.0}, None, "bad_header"),
    ({"op": "heartbeat", "publisher": "a", "seq": 1, "version": 1, "published": 0.0, "heartbeat_s": 1},
     None, "bad_header"),
    ({"op": "snapshot", "publisher": 1, "seq": 1, "version": 1, "published": 0.0, "heartbeat_s": 1},
     None, "bad_array"),
    ({"op": "snapshot", "publisher": 1, "seq": 1, "version": 1, "published": 0.0, "heartbeat_s": 1},
     {"snapshot": np.zeros(100, np.uint8)}, "bad_array"),
    ({"op": "snapshot", "publisher": 1, "seq": 1, "version": 2, "published": 0.0, "heartbeat_s": 1},
     "snapshot of version 1", "bad_header"),
])
def test_a_message_that_is_no_snapshot_is_refused_and_changes_nothing(header, arrays, code):
    follower = SnapshotSubscription(DEFAULT_LIMITS, clock=Clock())
    if arrays == "snapshot of version 1":
        arrays = {"snapshot": np.frombuffer(_snapshot(0, 1).to_bytes(), np.uint8)}
    with pytest.raises(ProtocolError) as err:
        follower.on_message(protocol.encode(header, arrays))
    assert err.value.code == code
    assert follower.snapshot is None and follower.held is None


def test_an_aligned_copy_starts_on_64_bytes():
    for offset in range(5):
        data = bytes(range(200))[offset:]
        out = aligned_copy(data)
        assert out.ctypes.data % 64 == 0 and out.tobytes() == data
