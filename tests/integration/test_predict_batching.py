"""Dynamic batching on the predict socket: concurrent clients' requests answered by one
kernel call still get their own rows, the same answers as alone, and one version; and
spin-then-block polling, which answers alike and spins only right after requests."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from learnd.clients.client import Control, Predictor, Producer

DIM, CLASSES, BATCH = 12, 4, 32
CLIENTS, REQUESTS = 16, 12


def train_a_little(d, rng):
    X = rng.standard_normal((BATCH * 8, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, len(X))
    with Producer(d.ingest, producer_id="batching", window=8, timeout=20) as prod:
        for i in range(0, len(X), BATCH):
            prod.send(X[i:i + BATCH], y[i:i + BATCH])
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["batches_trained"] >= 8, what="8 batches")
    d.settled()        # the replay steps of those batches taken: one version serves from here on


def ask_concurrently(address, inputs):
    """inputs[c][r]: (x, output) for client c's r-th request; returns replies alike."""
    replies = [[None] * len(rs) for rs in inputs]
    start = threading.Barrier(len(inputs))

    def client(c):
        with Predictor(address, timeout=20) as p:
            start.wait(30)
            # many in flight from each client, so requests from all clients interleave
            batches = [x for x, _ in inputs[c] if _ == "proba"]
            probas = iter(p.predict_many(batches, output="proba", window=4))
            for r, (x, output) in enumerate(inputs[c]):
                replies[c][r] = next(probas) if output == "proba" else p.predict(x, output="label")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    return replies


@pytest.mark.parametrize("window_us", [0, 2000])
def test_concurrent_requests_get_their_own_rows_and_single_request_answers(daemons, seed, window_us):
    rng = np.random.default_rng(seed)
    d = daemons(args=["--no-wal", "--batch-size", str(BATCH), "--set", "hidden=[16]"],
                env={"LEARND_PREDICT_BATCH_WINDOW_US": str(window_us)})
    train_a_little(d, rng)
    inputs = [[(rng.standard_normal((int(rng.integers(1, 5)), DIM)).astype(np.float32),
                "proba" if r % 3 else "label") for r in range(REQUESTS)] for _ in range(CLIENTS)]
    before = d.metrics()
    replies = ask_concurrently(d.predict, inputs)
    after = d.metrics()
    with Predictor(d.predict) as p:       # the same requests, one at a time
        for c in range(CLIENTS):
            for r, (x, output) in enumerate(inputs[c]):
                alone = p.predict(x, output=output)
                got = replies[c][r]
                assert got.model_version == alone.model_version == replies[0][0].model_version
                assert got.y.shape == alone.y.shape == ((len(x), CLASSES) if output == "proba" else (len(x),))
                if output == "proba":
                    np.testing.assert_allclose(got.y, alone.y, rtol=1e-5, atol=1e-7)
                else:
                    assert np.array_equal(got.y, alone.y)
    requests = after["learnd_predict_requests_total{outcome=ok}"] - before["learnd_predict_requests_total{outcome=ok}"]
    kernel_calls = after["learnd_predict_batches_total"] - before["learnd_predict_batches_total"]
    assert requests == CLIENTS * REQUESTS
    if window_us == 0:
        assert kernel_calls == requests
    else:
        # 16 clients with requests in flight within a 2 ms window: far fewer kernel calls
        assert kernel_calls < requests / 2


def _cpu_seconds(pid):
    """User + system CPU time the process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_spin_then_block_answers_alike_and_spins_only_right_after_requests(daemons, seed):
    rng = np.random.default_rng(seed)
    spin_us = 20_000
    d = daemons(args=["--no-wal", "--batch-size", str(BATCH), "--set", "hidden=[16]",
                      "--set", f"predict_spin_us={spin_us}"])
    train_a_little(d, rng)
    x = rng.standard_normal((5, DIM)).astype(np.float32)
    with Predictor(d.predict, timeout=20) as p:
        first = p.predict(x, output="proba")
        # Requests 1 ms apart: each is read by a thread still spinning from the last one.
        replies = []
        for _ in range(200):
            replies.append(p.predict(x, output="proba"))
            time.sleep(0.001)
        assert all(np.array_equal(r.y, first.y) and r.model_version == first.model_version for r in replies)
        # After the last answer the thread spins for 20 ms, then blocks: an idle second
        # costs next to no CPU, although a spinning thread would burn the whole second.
        time.sleep(0.2)
        cpu0, t0 = _cpu_seconds(d.proc.pid), time.monotonic()
        time.sleep(1.0)
        idle_share = (_cpu_seconds(d.proc.pid) - cpu0) / (time.monotonic() - t0)
        assert idle_share < 0.25, idle_share
        # And it still answers after blocking.
        assert np.array_equal(p.predict(x, output="proba").y, first.y)
