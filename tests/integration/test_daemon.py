"""A real `learnd serve` process, driven over real loopback sockets."""
from __future__ import annotations

import glob
import json
import os
import signal
import time

import numpy as np
import pytest
import zmq
from threadpoolctl import threadpool_limits

# Numba's GEMMs call SciPy's OpenBLAS: load it before limiting BLAS threads as the
# daemon's trainer does (one thread), or the limit would miss it and, on some CPUs,
# OpenBLAS with two threads rounds differently.
import scipy.linalg.cython_blas  # noqa: E402,F401

from learnd.clients.client import Control, LearndError, Predictor, Producer
from learnd.engine import Model
from learnd.engine.datasets import split

BATCH = 64


@pytest.fixture(scope="module")
def digits():
    return split("digits")


def send_batches(address, X, y, n_messages, producer_id="p1", first_seq=0):
    """Send n_messages of exactly BATCH rows each; returns the producer after flush."""
    with Producer(address, producer_id=producer_id, window=8, timeout=20, first_seq=first_seq) as prod:
        for k in range(n_messages):
            i = (k * BATCH) % (len(X) - BATCH)
            prod.send(X[i:i + BATCH], y[i:i + BATCH], split="train")
    assert prod.rejected == []
    return prod


def trained(daemon, batches):
    with Control(daemon.control) as c:
        daemon.wait_until(lambda: c.status()["batches_trained"] >= batches, what=f"{batches} batches")
        return c.status()


def test_embedded_default_infers_the_stream_and_learns(daemons, digits):
    Xtr, ytr, Xte, yte = digits
    d = daemons()
    assert d.http("/healthz")[0] == 200
    assert d.http("/readyz")[0] == 503          # no model before the first batch
    with Predictor(d.predict, timeout=10) as p:
        with pytest.raises(LearndError) as err:
            p.predict(Xte[:3])
        assert err.value.code == "not_ready"
    send_batches(d.ingest, Xtr, ytr, 3 * (len(Xtr) // BATCH))
    status = trained(d, 3 * (len(Xtr) // BATCH))
    assert (status["task"], status["input_dim"], status["n_outputs"]) == ("multiclass", 64, 10)
    for field in ("model_version", "samples_trained", "batches_trained", "queue_depth",
                  "learning_rate", "uptime_seconds"):
        assert field in status
    d.wait_until(lambda: d.http("/readyz")[0] == 200, what="ready")
    # The trainer counts a batch just before it publishes the version that holds it,
    # and a predict worker may still serve an earlier version: wait for one that has
    # taken at least as many steps as batches were sent.
    steps = 3 * (len(Xtr) // BATCH)
    with Predictor(d.predict) as p:
        d.wait_until(lambda: p.predict(Xte[:1]).model_version >= steps, what=f"a version of {steps} steps")
        pred = p.predict(Xte)
    accuracy = float((pred.y == yte).mean())
    assert accuracy > 0.9, accuracy
    assert pred.model_version >= steps


def test_predictions_equal_the_embedded_engine_trained_on_the_same_batches(daemons, digits):
    Xtr, ytr, Xte, _ = digits
    n = len(Xtr) // BATCH
    # Replay off: when its steps run depends on when batches arrive, and this compares
    # the daemon step for step with partial_fit.
    d = daemons(args=["--set", "hidden=[32]", "--no-wal"], env={"LEARND_REPLAY_RATIO": "0"})
    send_batches(d.ingest, Xtr, ytr, n)
    status = trained(d, n)
    with Predictor(d.predict) as p:
        d.wait_until(lambda: p.predict(Xte[:1]).model_version == n, what="snapshot of the last step")
        served = p.predict(Xte, output="proba")
    with threadpool_limits(1, user_api="blas"):
        model = Model(hidden=(32,), task="multiclass", n_outputs=10, input_dim=64)
        for k in range(n):
            model.partial_fit(Xtr[k * BATCH:(k + 1) * BATCH], ytr[k * BATCH:(k + 1) * BATCH])
        local = model.predict_proba(Xte)
    assert served.model_version == n == status["batches_trained"]
    assert np.array_equal(served.y, local)


def test_a_fast_producer_is_slowed_not_dropped(daemons):
    rng = np.random.default_rng(7)
    n_messages, dim = 200, 64
    X = rng.standard_normal((n_messages * BATCH, dim)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    # A wide model and a two-message queue: the producer can send far faster than this trains.
    d = daemons(args=["--set", "hidden=[512,512]"], env={"LEARND_QUEUE_SIZE": "2"})
    t0 = time.monotonic()
    with Producer(d.ingest, window=64, timeout=30) as prod:
        for k in range(n_messages):
            prod.send(X[k * BATCH:(k + 1) * BATCH], y[k * BATCH:(k + 1) * BATCH], split="train")
    sent_in = time.monotonic() - t0
    assert prod.acked == n_messages and prod.rejected == []
    status = trained(d, n_messages)
    assert status["samples_trained"] == n_messages * BATCH
    metrics = d.metrics()
    assert metrics["learnd_ingest_paused_total"] >= 1
    assert metrics["learnd_ingest_messages_total{outcome=accepted}"] == n_messages
    assert sent_in > 0.5 * metrics["learnd_step_seconds_sum"], (sent_in, metrics["learnd_step_seconds_sum"])


def test_control_ops(daemons, digits):
    Xtr, ytr, _, _ = digits
    d = daemons()
    send_batches(d.ingest, Xtr, ytr, 10)
    trained(d, 10)
    with Control(d.control) as c:
        assert c.set(lr=0.01, l2=1e-4, eval_interval_s=1.0) == {"lr": 0.01, "l2": 1e-4,
                                                                "eval_interval_s": 1.0}
        assert c.status()["learning_rate"] == pytest.approx(0.01)
        for bad in ({"hidden": [3]}, {"lr": -1.0}, {"lr": "fast"}, {"no_such_key": 1},
                    {"batch_linger_ms": float("nan")}, {"lr": float("inf")}):
            with pytest.raises(LearndError) as err:
                c.set(**bad)
            assert err.value.code == "bad_setting", bad
        assert c.status()["learning_rate"] == pytest.approx(0.01)
        result = c.checkpoint()
        assert os.path.exists(result["path"]) and result["batches_trained"] == 10
        report = c.gradcheck()
        assert set(report["per_param"]) == {"W1", "b1", "W2", "b2", "W3", "b3"}
        assert report["overall"] < 1e-5
        assert c.shutdown() == {"shutting_down": True}
    d.proc.wait(60)
    assert d.proc.returncode == 0


def test_busy_when_too_many_control_ops_wait(daemons, digits):
    Xtr, ytr, _, _ = digits
    d = daemons(args=["--set", "hidden=[512,512]"])
    send_batches(d.ingest, Xtr, ytr, 4)
    trained(d, 4)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.control)
    from learnd.clients import protocol
    try:
        for i in range(30):
            sock.send_multipart(protocol.encode({"op": "gradcheck", "id": i}))
        codes = []
        for _ in range(30):
            assert sock.poll(120_000)
            reply = protocol.decode(sock.recv_multipart(), reply=True)
            codes.append(reply.header["error"]["code"] if not reply.header["ok"] else "ok")
    finally:
        sock.close()
        ctx.term()
    assert "busy" in codes and "ok" in codes


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_a_restart_resumes_exactly(daemons, digits, tmp_path, sig):
    Xtr, ytr, Xte, _ = digits
    d = daemons()
    send_batches(d.ingest, Xtr, ytr, 12)
    trained(d, 12)
    version = d.settled()["model_version"]
    with Predictor(d.predict) as p:
        d.wait_until(lambda: p.predict(Xte[:1]).model_version == version, what="last snapshot")
        proba = p.predict(Xte, output="proba").y
    with Control(d.control) as c:
        before = c.status()
    assert d.stop(sig) == 0
    assert glob.glob(str(tmp_path / "state" / "checkpoint-*.ckpt"))
    assert "checkpoint written (shutdown)" in d.log()
    d2 = daemons()
    with Control(d2.control) as c:
        after = c.status()
    for key in ("samples_trained", "batches_trained", "model_version", "task", "input_dim", "n_outputs"):
        assert after[key] == before[key], key
    with Predictor(d2.predict) as p:
        again = p.predict(Xte, output="proba")
    assert again.model_version == version
    assert np.array_equal(again.y, proba)


def _corrupt_newest_checkpoint(state_dir):
    newest = sorted(glob.glob(os.path.join(state_dir, "checkpoint-*.ckpt")))[-1]
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    return newest


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(daemons, digits, tmp_path):
    Xtr, ytr, _, _ = digits
    d = daemons(args=["--no-wal"])
    send_batches(d.ingest, Xtr, ytr, 5)
    trained(d, 5)
    with Control(d.control) as c:
        c.checkpoint()
    send_batches(d.ingest, Xtr, ytr, 5, first_seq=5)
    trained(d, 10)
    assert d.stop() == 0                        # writes the newest checkpoint, 10 batches
    _corrupt_newest_checkpoint(str(tmp_path / "state"))
    d2 = daemons(args=["--no-wal"])
    with Control(d2.control) as c:
        assert c.status()["batches_trained"] == 5
    assert d2.metrics()["learnd_checkpoint_load_failures_total"] == 1
    assert "is unreadable" in d2.log()


def test_the_write_ahead_log_restores_what_a_lost_checkpoint_held(daemons, digits, tmp_path):
    Xtr, ytr, Xte, _ = digits
    # Replay off: the log's batches come back in one burst, so replay steps would fall
    # between them otherwise than the first time, and this compares predictions exactly.
    no_replay = {"LEARND_REPLAY_RATIO": "0"}
    d = daemons(env=no_replay)
    send_batches(d.ingest, Xtr, ytr, 5)
    trained(d, 5)
    with Control(d.control) as c:
        c.checkpoint()
    send_batches(d.ingest, Xtr, ytr, 5, first_seq=5)
    trained(d, 10)
    version = d.settled()["model_version"]
    with Predictor(d.predict) as p:
        d.wait_until(lambda: p.predict(Xte[:1]).model_version == version, what="last snapshot")
        proba = p.predict(Xte, output="proba").y
    assert d.stop() == 0
    _corrupt_newest_checkpoint(str(tmp_path / "state"))
    d2 = daemons(env=no_replay)
    with Control(d2.control) as c:
        # The daemon may serve while its trainer reads the log on from the older
        # checkpoint: the 5 lost batches come back within moments.
        d2.wait_until(lambda: c.status()["batches_trained"] == 10, timeout=60, what="the log read again")
        assert c.status()["queue_depth"] == 0
    assert d2.metrics()["learnd_wal_replayed_messages_total"] == 5
    assert d2.settled()["model_version"] == 10
    with Predictor(d2.predict) as p:
        d2.wait_until(lambda: p.predict(Xte[:1]).model_version == 10, what="the restored snapshot")
        assert np.array_equal(p.predict(Xte, output="proba").y, proba)
    # Every batch resent after the restart is acknowledged and not trained again.
    prod = send_batches(d2.ingest, Xtr, ytr, 10)
    assert prod.duplicates == 10
    with Control(d2.control) as c:
        assert c.status()["batches_trained"] == 10


def test_periodic_checkpoints_keep_the_last_n(daemons, digits, tmp_path):
    Xtr, ytr, _, _ = digits
    d = daemons(env={"LEARND_CHECKPOINT_INTERVAL_S": "0.2", "LEARND_CHECKPOINT_KEEP": "2"})
    for k in range(6):
        send_batches(d.ingest, Xtr, ytr, 2, first_seq=2 * k)
        time.sleep(0.3)
    d.wait_until(lambda: d.metrics()["learnd_checkpoints_total{outcome=ok}"] >= 3, what="3 checkpoints")
    assert len(glob.glob(str(tmp_path / "state" / "checkpoint-*.ckpt"))) <= 2


def test_json_logs(daemons, digits):
    Xtr, ytr, _, _ = digits
    d = daemons(args=["--log-json"])
    send_batches(d.ingest, Xtr, ytr, 2)
    trained(d, 2)
    assert d.stop() == 0
    lines = [json.loads(line) for line in d.log().splitlines() if line.strip()]
    messages = [entry["message"] for entry in lines]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
    for event in ("socket bound", "learnd started", "first batch trained", "checkpoint written",
                  "learnd stopped"):
        assert any(event in m for m in messages), event


def test_every_exposed_metric_is_documented_and_every_documented_one_exposed(daemons, digits, daemon_mode):
    import pathlib
    import re

    from .exposition import FAST_EVAL_ENV, drive_to_full_exposition, exposed_names

    Xtr, ytr, _, _ = digits
    d = daemons(env=FAST_EVAL_ENV)
    exposed, _ = exposed_names(drive_to_full_exposition(d, Xtr, ytr))
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(learnd_[a-z0-9_]+)`", doc, flags=re.M))
    tree_only = set(re.findall(r"^\| `(learnd_[a-z0-9_]+)`.*\(process tree only\)", doc, flags=re.M))
    assert len(tree_only) == 4
    if daemon_mode == "single-process":
        documented -= tree_only
    # A follower's own metrics (test_followers checks them on a live follower).
    documented -= set(re.findall(r"^\| `(learnd_[a-z0-9_]+)`.*\(followers only\)", doc, flags=re.M))
    assert exposed == documented, (exposed - documented, documented - exposed)
