"""A producer keeps streaming while the daemon is stopped with SIGTERM and restarted:
every batch it sent is trained exactly once (dedupe state lives in the checkpoint)."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np

from learnd.clients.client import Control, Producer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_and_restart_mid_stream_trains_each_batch_once(daemons, tmp_path):
    ports = {name: free_port() for name in ("ingest", "predict", "control", "metrics")}
    args = [f"--{n}=tcp://127.0.0.1:{ports[n]}" for n in ("ingest", "predict", "control")]
    args.append(f"--metrics=127.0.0.1:{ports['metrics']}")
    d1 = daemons(args=args)
    n_messages, rows = 300, 64
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n_messages * rows, 8)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    done = threading.Event()
    errors = []

    def stream():
        try:
            with Producer(d1.ingest, producer_id="steady", window=16, timeout=1.0, retries=60) as prod:
                for k in range(n_messages):
                    prod.send(X[k * rows:(k + 1) * rows], y[k * rows:(k + 1) * rows], split="train")
                    time.sleep(0.002)
            stream.prod = prod
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=stream)
    t.start()
    with Control(d1.control) as c:
        d1.wait_until(lambda: c.status()["batches_trained"] >= 60, what="60 batches")
    assert d1.stop() == 0                                  # SIGTERM mid-stream
    d2 = daemons(args=args)                                # same state dir, same addresses
    assert done.wait(120), "producer did not finish"
    t.join()
    assert not errors, errors
    assert stream.prod.acked == n_messages and stream.prod.rejected == []
    with Control(d2.control) as c:
        d2.wait_until(lambda: c.status()["batches_trained"] >= n_messages, what="every batch")
        time.sleep(0.5)
        status = c.status()
    assert status["samples_trained"] == n_messages * rows
    assert status["batches_trained"] == n_messages
