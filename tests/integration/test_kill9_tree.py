"""kill -9 to random processes of the tree while a producer streams and a client keeps
predicting: the supervisor restarts the child (or, for the supervisor itself, the test
starts the daemon again), every acknowledged row is trained exactly once, predictions
are answered again within seconds of each kill, and no checkpoint or log is unreadable."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import zmq

from learnd.clients import protocol
from learnd.clients.client import Control

from .test_kill9 import DAEMON_ENV, FEATURES, ResendingProducer, check_state_files

KILLS = 12                      # 3 for each role
ROLES = ("ingest", "trainer", "predict-0", "supervisor")
ANSWER_AGAIN_S = 10.0


def _pid_of(status, role):
    return next(p["pid"] for p in status["processes"] if p["role"] == role)


def _predict_once(address, timeout_ms=200):
    """One predict round trip on a fresh socket: the model version, or None."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        sock.send_multipart(protocol.encode({"op": "predict", "id": 1, "output": "proba"},
                                            {"x": np.zeros((1, FEATURES), np.float32)}))
        if not sock.poll(timeout_ms):
            return None
        reply = protocol.decode(sock.recv_multipart(), reply=True)
        return reply.header.get("model_version") if reply.header.get("ok") else None
    finally:
        sock.close()


def _answered_again(address, deadline_s):
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        if _predict_once(address) is not None:
            return time.monotonic() - t0
    return None


@pytest.mark.parametrize("daemon_mode", ["tree"])
def test_kill9_to_random_processes_of_the_tree(daemons, tmp_path, seed, figures, daemon_mode):
    rng = np.random.default_rng(seed)
    state_dir = tmp_path / "state"
    producer = ResendingProducer(seed, producer_id="tree")
    killed = {r: 0 for r in ROLES}
    recoveries = []
    env = {**DAEMON_ENV, "LEARND_CHILD_RESTART_LIMIT": "1000"}   # this test kills on purpose
    d = daemons(state_dir=state_dir, env=env)
    try:
        producer.connect(d.ingest)
        producer.pump(1.0)
        # Every role dies KILLS / 4 times, in a random order at random moments.
        for role in rng.permutation(np.repeat(ROLES, KILLS // len(ROLES))):
            role = str(role)
            producer.pump(rng.uniform(0.05, 1.0))
            if role == "supervisor":
                d.kill()                                  # takes its children with it
                d = daemons(state_dir=state_dir, env=env)
                producer.connect(d.ingest)
            else:
                with Control(d.control) as c:
                    # The process is up again (a restart may still be under way).
                    d.wait_until(lambda: all(p["alive"] for p in c.status()["processes"]), timeout=30,
                                 what="every child alive")
                    os.kill(_pid_of(c.status(), role), signal.SIGKILL)
                if role == "ingest":
                    # What the dead ingest had read but not logged is gone: a producer
                    # that outlives it sends its unacknowledged messages again.
                    producer.pump(0.2)
                    producer.connect(d.ingest)
            killed[role] += 1
            producer.pump(0.2)
            took = _answered_again(d.predict, ANSWER_AGAIN_S)
            assert took is not None, f"no prediction answered within {ANSWER_AGAIN_S} s of killing {role}"
            recoveries.append(took)
            check_state_files(state_dir)
        producer.pump(60, send_new=False)
        assert not producer.unacked, f"{len(producer.unacked)} messages never acknowledged"
        acked_rows = producer.acked_rows
        with Control(d.control) as c:
            def trained_all():
                s = c.status()
                return s["queue_depth"] == 0 and s["samples_trained"] + s["rows_waiting"] == acked_rows
            d.wait_until(trained_all, timeout=60, what=f"{acked_rows} rows trained")
            time.sleep(0.5)
            status = c.status()
        assert status["samples_trained"] + status["rows_waiting"] == acked_rows
        restarts = {p["role"]: p["restarts"] for p in status["processes"]}
        assert d.stop() == 0
        check_state_files(state_dir)
    finally:
        producer.close()
    assert sum(killed.values()) == KILLS
    figures(f"kill -9 x{KILLS} to {killed}: {len(producer.acked)} messages, {acked_rows} rows "
            f"acknowledged and trained exactly once; predictions answered again after "
            f"p50 {np.median(recoveries):.2f} s, max {max(recoveries):.2f} s; last tree's restarts {restarts}")


@pytest.mark.parametrize("daemon_mode", ["tree"])
def test_a_child_that_keeps_dying_stops_the_daemon_with_exit_7(daemons, seed, daemon_mode):
    d = daemons(env={"LEARND_CHILD_RESTART_LIMIT": "3", "LEARND_CHILD_RESTART_WINDOW_S": "60",
                     "LEARND_MODEL_HIDDEN": "[16]"})
    producer = ResendingProducer(seed)
    try:
        producer.connect(d.ingest)
        producer.pump(2.0)                  # a model for the predict worker to serve
        producer.pump(30, send_new=False)
    finally:
        producer.close()
    d.wait_until(lambda: _answered_again(d.predict, 1.0) is not None, timeout=30, what="a model")
    for k in range(3):
        with Control(d.control) as c:
            d.wait_until(lambda: all(p["alive"] for p in c.status()["processes"]), timeout=30,
                         what="every child alive")
            os.kill(_pid_of(c.status(), "trainer"), signal.SIGKILL)
        if k < 2:
            d.wait_until(lambda: _answered_again(d.predict, 1.0) is not None, timeout=30,
                         what="predictions again")
    assert d.proc.wait(30) == 7
    log = d.log()
    assert "the trainer process keeps dying: stopping the daemon (exit 7)" in log
    assert log.count("exited with signal 9") == 3


@pytest.mark.parametrize("daemon_mode", ["tree"])
def test_a_child_restart_keeps_the_tree_healthy_and_predicting(daemons, seed, daemon_mode):
    """While the supervisor restarts the trainer, /healthz stays 200 (a restart is not
    the orchestrator's business), /readyz stays 200 and the worker keeps answering from
    the last snapshot; status shows the trainer's state and the restart is counted."""
    d = daemons(env={"LEARND_MODEL_HIDDEN": "[16]"})
    producer = ResendingProducer(seed)
    try:
        producer.connect(d.ingest)
        producer.pump(1.0)
        producer.pump(30, send_new=False)
    finally:
        producer.close()
    d.wait_until(lambda: d.http("/readyz")[0] == 200, timeout=30, what="ready")
    with Control(d.control) as c:
        os.kill(_pid_of(c.status(), "trainer"), signal.SIGKILL)
        states, probes, answered, turns = set(), set(), 0, 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            trainer = next(p for p in c.status()["processes"] if p["role"] == "trainer")
            states.add(trainer["state"])
            probes.add((d.http("/healthz")[0], d.http("/readyz")[0]))
            answered += _predict_once(d.predict, timeout_ms=1000) is not None
            turns += 1
            if trainer["state"] == "serving" and trainer["restarts"] == 1:
                break
        assert trainer["state"] == "serving" and trainer["restarts"] == 1, trainer
    assert states & {"down", "starting"}, states       # it was seen away
    assert probes == {(200, 200)}, probes
    assert answered == turns, f"{turns - answered} of {turns} predictions unanswered"
    assert d.metrics()['learnd_child_restarts_total{role=trainer}'] == 1
    assert "the trainer process (pid" in d.log() and "exited with signal 9" in d.log()
    assert d.stop() == 0
