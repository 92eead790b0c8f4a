"""The `snapshots` socket: a subscriber receives each published version, whole, and it
predicts exactly as the daemon's predict socket does at that version."""
from __future__ import annotations

import time

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (Numba's BLAS, loaded before limiting its threads)
import zmq
from threadpoolctl import threadpool_limits

from learnd.clients import protocol
from learnd.clients.client import Control, Predictor, Producer
from learnd.engine.datasets import split
from learnd.engine.network import Snapshot


def _subscribe(ctx, address):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    return sub


def _next_snapshot(sub, timeout_s=20.0):
    if not sub.poll(int(timeout_s * 1000)):
        raise TimeoutError("no snapshot published")
    message = protocol.decode(sub.recv_multipart(), protocol.Limits(max_message_bytes=1 << 30))
    assert message.op == "snapshot"
    snap = Snapshot.from_buffer(message.arrays["snapshot"])
    assert snap.version == message.header["version"]
    return snap


def test_a_subscriber_gets_the_current_version_at_once_and_every_new_one(daemons):
    Xtr, ytr, Xte, _ = split("digits")
    d = daemons(args=["--set", "hidden=[32]"], env={"LEARND_REPLAY_RATIO": "0"})   # one version per batch
    ctx = zmq.Context()
    try:
        with Producer(d.ingest, producer_id="p", window=4, timeout=20) as prod:
            prod.send(Xtr[:64], ytr[:64], split="train")
        with Control(d.control) as c:
            d.wait_until(lambda: c.status()["model_version"] == 1, what="version 1")
        sub = _subscribe(ctx, d.endpoints["snapshots"])
        first = _next_snapshot(sub)             # the current one, sent because we joined
        assert first.version == 1
        with Producer(d.ingest, producer_id="p", window=4, timeout=20, first_seq=1) as prod:
            for k in range(1, 6):
                prod.send(Xtr[64 * k:64 * (k + 1)], ytr[64 * k:64 * (k + 1)], split="train")
        deadline, snap = time.monotonic() + 30, first
        while snap.version < 6 and time.monotonic() < deadline:
            snap = _next_snapshot(sub)
        assert snap.version == 6
        with Predictor(d.predict) as p:
            served = p.predict(Xte, output="proba")
        assert served.model_version == 6
        out = np.empty((len(Xte), 10), dtype=snap.dtype)
        with threadpool_limits(1, user_api="blas"):     # the daemon's BLAS threads: same rounding
            mine = snap.predict_into(Xte.astype(snap.dtype), out, snap.new_workspace())
        assert np.array_equal(mine, served.y)
    finally:
        ctx.destroy(linger=0)
