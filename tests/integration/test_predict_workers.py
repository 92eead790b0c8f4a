"""Several predict workers behind the one predict endpoint (the supervisor's proxy)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading

import numpy as np
import pytest

from learnd.clients.client import Control, Predictor, Producer
from learnd.engine.datasets import split

WORKERS = 3
CLIENTS = 4
REQUESTS = 150


def _train(d, batches=6):
    Xtr, ytr, Xte, _ = split("digits")
    with Producer(d.ingest, producer_id="p", timeout=20) as prod:
        for k in range(batches):
            prod.send(Xtr[k * 64:(k + 1) * 64], ytr[k * 64:(k + 1) * 64], split="train")
    return d.settled(), Xte


def _workers(status):
    return {p["role"]: p for p in status["processes"] if p["role"].startswith("predict-")}


@pytest.mark.parametrize("daemon_mode", ["tree"])
def test_every_worker_answers_from_the_same_version_through_one_endpoint(daemons, daemon_mode):
    d = daemons(args=["--set", f"predict_workers={WORKERS}"])
    status, Xte = _train(d)
    assert sorted(_workers(status)) == [f"predict-{i}" for i in range(WORKERS)]
    assert all(w["state"] == "serving" for w in _workers(status).values())
    with Predictor(d.predict) as p:      # the same rows as the clients' (a GEMM's bits depend on its shape)
        expected = p.predict(Xte[:32], output="proba")
    answers, errors = [], []

    def client():
        try:
            with Predictor(d.predict, timeout=10) as p:
                for _ in range(REQUESTS):
                    r = p.predict(Xte[:32], output="proba")
                    answers.append((r.model_version, r.y))
        except Exception as exc:     # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(answers) == CLIENTS * REQUESTS
    # One model, whichever worker answered: the same version and the same bits.
    assert {v for v, _ in answers} == {status["model_version"]} == {expected.model_version}
    assert all(np.array_equal(y, expected.y) for _, y in answers)
    with Control(d.control) as c:
        after = c.status()
    counts = {role: w["requests_answered"] for role, w in _workers(after).items()}
    assert sum(counts.values()) == CLIENTS * REQUESTS + 1
    # The proxy hands requests to the workers in turn: each took a fair share.
    assert min(counts.values()) >= 0.5 * (CLIENTS * REQUESTS) / WORKERS, counts
    assert after["satisficing"]["requests"] == CLIENTS * REQUESTS + 1
    assert d.metrics()["learnd_predict_requests_total{outcome=ok}"] == CLIENTS * REQUESTS + 1
    # The workers' expositions merge into one that Prometheus's own linter accepts.
    if shutil.which("promtool") is not None or os.environ.get("CI"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=d.http("/metrics")[1],
                              capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    # A live setting of the workers reaches every one of them.
    with Control(d.control) as c:
        c.set(predict_p99_bound_ms=1e-6)
        assert c.status()["satisficing"]["met"] is False
    assert d.stop() == 0


@pytest.mark.parametrize("daemon_mode", ["tree"])
def test_a_killed_worker_is_restarted_while_the_others_answer(daemons, daemon_mode):
    d = daemons(args=["--set", "predict_workers=2"])
    _, Xte = _train(d)
    with Control(d.control) as c:
        victim = _workers(c.status())["predict-1"]["pid"]
    answered, stop = [], threading.Event()

    def client():
        # The client library resends a request that times out: the ones queued to the
        # killed worker are answered by the other.
        with Predictor(d.predict, timeout=1, retries=5) as p:
            for _ in range(100_000):                  # bounded; stopped below
                if stop.is_set():
                    return
                answered.append(p.predict(Xte[:1]).model_version)

    t = threading.Thread(target=client)
    t.start()
    try:
        d.wait_until(lambda: len(answered) > 50, timeout=30, what="answers before the kill")
        os.kill(victim, signal.SIGKILL)
        before = len(answered)
        with Control(d.control) as c:
            def restarted():
                w = _workers(c.status())["predict-1"]
                return w["state"] == "serving" and w["restarts"] == 1 and w["pid"] != victim
            d.wait_until(restarted, timeout=60, what="predict-1 restarted")
        d.wait_until(lambda: len(answered) > before + 200, timeout=30, what="answers after the kill")
        with Control(d.control) as c:
            d.wait_until(lambda: _workers(c.status())["predict-1"]["requests_answered"] > 0, timeout=30,
                         what="the restarted worker answering")
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive()
    assert d.metrics()["learnd_child_restarts_total{role=predict-1}"] == 1
    assert d.http("/healthz")[0] == 200 and d.http("/readyz")[0] == 200
    assert d.stop() == 0


@pytest.mark.parametrize("daemon_mode", ["single-process"])
def test_the_single_process_serves_with_one_thread_and_says_so(daemons, daemon_mode):
    d = daemons(args=["--set", "predict_workers=2"])
    _, Xte = _train(d, batches=2)
    with Predictor(d.predict) as p:
        assert p.predict(Xte[:3]).y.shape == (3,)
    assert "predict_workers = 2 is a setting of the process tree" in d.log()
    assert d.stop() == 0
