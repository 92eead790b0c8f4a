"""`mpiexec -n 2 learnd serve --data-parallel` for real: two ranks, each with its own
ingest socket, log and state dir, hold one model.

Each rank's ports are the base block's plus 10 r, so the tests pick a base whose block
is free for both ranks (clients.launch.free_port_base).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from learnd import Model
from learnd.clients.client import Control, LearndError, Predictor, Producer
from learnd.clients.launch import group_command, mpiexec, start_group, stop_group
from tests.conftest import Daemon
from tests.integration.followers import FollowerProcess

pytestmark = pytest.mark.skipif(mpiexec() is None and not os.environ.get("CI"),
                                reason="no mpiexec: pip install 'learnd[mpi]'")

FEATURES = 6
MODEL = {"input_dim": FEATURES, "task": "multiclass", "n_outputs": 3, "hidden": (12,), "dtype": "float64",
         "lr": 0.01}


def model_args(**extra):
    settings = {**MODEL, **extra}
    out = []
    for k, v in settings.items():
        value = json.dumps(list(v)) if isinstance(v, tuple) else json.dumps(v) if isinstance(v, str) else v
        out += ["--set", f"{k}={value}"]
    return out


class Group:
    """A started group: its ranks' endpoints and Daemon-like helpers per rank."""

    def __init__(self, tmp_path, ranks=2, args=(), name="state"):
        self.tmp_path, self.ranks, self.args, self.name = tmp_path, ranks, list(args), name
        self.state_dir = tmp_path / name
        self.proc = None
        self.endpoints = []
        self._log = None

    def start(self):
        from learnd.clients.launch import free_port_base
        self.base = free_port_base(self.ranks)
        self.proc, self.endpoints, self._log = start_group(
            self.ranks, self.state_dir, self.base, self.args, log_path=str(self.tmp_path / f"{self.name}.log"))
        return self

    def log(self):
        with open(self.tmp_path / f"{self.name}.log", errors="replace") as f:
            return f.read()

    def status(self, rank):
        with Control(self.endpoints[rank]["control"], timeout=10) as c:
            return c.status()

    def wait_until(self, predicate, timeout=60.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"mpiexec exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"{what} not reached in {timeout} s:\n{self.log()[-4000:]}")

    def wait_steps(self, steps, timeout=60.0):
        self.wait_until(lambda: all(self.status(r)["model_version"] == steps for r in range(self.ranks)),
                        timeout, what=f"every rank at version {steps}")

    def proba(self, rank, X):
        with Predictor(self.endpoints[rank]["predict"], timeout=10) as p:
            return p.predict(X, output="proba")

    def metric(self, rank, name):
        d = Daemon(self.state_dir)
        d.endpoints = self.endpoints[rank]
        return d.metrics().get(name, 0.0)

    def stop(self, kill=False):
        code = stop_group(self.proc, self.endpoints, self._log, kill=kill)
        self._log = None
        return code


@pytest.fixture
def groups(tmp_path):
    started = []

    def start(**kw):
        g = Group(tmp_path, **kw).start()
        started.append(g)
        return g

    yield start
    for g in started:
        if g.proc is not None and g.proc.poll() is None:
            stop_group(g.proc, g.endpoints, g._log, kill=True)


def stream(seed, batches, rows):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        X = rng.normal(2.0, 3.0, (rows, FEATURES))
        y = (X[:, 0] > 2.0).astype(np.int64) + (X[:, 1] + X[:, 2] > 4.0)
        out.append((X, y))
    return out


def test_two_ranks_equal_one_model_on_the_concatenated_batches(groups, seed):
    """Batches A_i to rank 0 and B_i to rank 1: both ranks end with the model one daemon
    would make from A_i + B_i concatenated (batch norm off, float64)."""
    steps, rows = 12, 16
    g = groups(args=[*model_args(), "--set", "batch_size=16", "--set", "batch_linger_ms=5000"])
    A, B = stream(seed, steps, rows), stream(seed + 1, steps, rows)
    with Producer(g.endpoints[0]["ingest"], producer_id="a") as pa, \
            Producer(g.endpoints[1]["ingest"], producer_id="b") as pb:
        for (xa, ya), (xb, yb) in zip(A, B):
            pa.send(xa, ya, split="train")
            pb.send(xb, yb, split="train")
            pa.flush(10)
            pb.flush(10)
    g.wait_steps(steps)
    alone = Model(**{**MODEL, "hidden": MODEL["hidden"]})
    for (xa, ya), (xb, yb) in zip(A, B):
        alone.partial_fit(np.vstack([xa, xb]), np.concatenate([ya, yb]))
    X = stream(seed + 2, 1, 40)[0][0]
    expected = alone.predict_proba(X)
    answers = [g.proba(r, X) for r in range(2)]
    for a in answers:
        assert a.model_version == steps
        np.testing.assert_allclose(a.y, expected, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(answers[0].y, answers[1].y)
    for r in range(2):
        s = g.status(r)
        assert s["samples_trained"] == steps * rows
        assert s["data_parallel"] == {"rank": r, "ranks": 2, "group_samples_trained": 2 * steps * rows}
        assert s["replay"]["steps"] == 0 and s["replay"]["ratio"] == 0     # replay is off in a group
    assert g.stop() == 0


def test_an_idle_rank_contributes_weight_zero_and_does_not_stall(groups, seed):
    """Rows only to rank 0: the group steps after batch_linger_ms with rank 1's weight 0,
    so the model is the one rank 0's batches alone would make; control ops that would
    change one rank's model are refused."""
    steps, rows, linger = 8, 16, 0.2
    g = groups(args=[*model_args(), "--set", "batch_size=16", "--set", f"batch_linger_ms={linger * 1e3:g}"])
    A = stream(seed, steps, rows)
    t0 = time.monotonic()
    with Producer(g.endpoints[0]["ingest"], producer_id="a") as pa:
        for x, y in A:
            pa.send(x, y, split="train")
        pa.flush(10)
    g.wait_steps(steps, timeout=30)
    # Rank 1 had sent nothing for a linger before the first row came: no step waited on it.
    assert time.monotonic() - t0 < 10
    alone = Model(**MODEL)
    for x, y in A:
        alone.partial_fit(x, y)
    X = stream(seed + 2, 1, 20)[0][0]
    for r in range(2):
        np.testing.assert_allclose(g.proba(r, X).y, alone.predict_proba(X), rtol=0, atol=1e-10)
    assert g.status(1)["samples_trained"] == 0
    assert g.metric(1, "learnd_empty_steps_total") == steps
    assert g.metric(0, "learnd_empty_steps_total") == 0
    with Control(g.endpoints[1]["control"], timeout=10) as c:
        with pytest.raises(LearndError) as refused:
            c.set(lr=0.1)
        assert refused.value.code == "bad_setting"
        with pytest.raises(LearndError) as unsupported:
            c.freeze()
        assert unsupported.value.code == "unsupported"
        c.set(eval_interval_s=2.0)          # a rank's own settings stay live
    assert g.stop() == 0


def test_restart_after_kill_resumes_exactly_once_on_every_rank(groups, seed, tmp_path):
    """kill -9 of every rank after some checkpoints and more acknowledged rows: the job
    restarted resumes from one step on both ranks, trains every acknowledged row once
    (resent ones are duplicates), and the ranks hold the same model, which rank 0
    publishes to a follower (batch norm on: running statistics pooled over the ranks)."""
    args = [*model_args(batch_norm=True), "--set", "batch_size=16", "--set", "batch_linger_ms=100",
            "--set", "checkpoint_interval_s=0.2"]
    g = groups(args=args)
    sent = {0: [], 1: []}

    def send(group, first, count):
        for r in range(2):
            with Producer(group.endpoints[r]["ingest"], producer_id=f"p{r}", first_seq=first) as p:
                for i in range(first, first + count):
                    x, y = stream(seed * 10 + r * 1000 + i, 1, 8 + (i % 3) * 4)[0]
                    p.send(x, y, split="train")
                    if len(sent[r]) <= i:
                        sent[r].append(len(x))
                p.flush(10)

    send(g, 0, 30)
    g.wait_until(lambda: all(g.status(r)["samples_trained"] == sum(sent[r]) for r in range(2)),
                 what="the first rows trained")
    g.wait_until(lambda: all(g.status(r)["last_checkpoint"] for r in range(2)), what="a checkpoint")
    send(g, 30, 20)                       # acknowledged: in the logs, maybe not in a checkpoint
    assert g.stop(kill=True) != 0
    ckpts = [sorted(os.listdir(g.state_dir / f"rank-{r}")) for r in range(2)]
    assert all(any(n.endswith(".ckpt") for n in names) for names in ckpts), ckpts

    g2 = groups(args=args)
    send(g2, 40, 20)                      # 40..49 again (duplicates), then 50..59 new
    total = {r: sum(sent[r]) for r in range(2)}
    g2.wait_until(lambda: all(g2.status(r)["samples_trained"] == total[r] for r in range(2)),
                  what="every acknowledged row trained")
    time.sleep(0.5)                       # nothing more may come: a row trained twice would show
    statuses = [g2.status(r) for r in range(2)]
    for r, s in enumerate(statuses):
        assert s["samples_trained"] == total[r]
        assert s["data_parallel"]["group_samples_trained"] == total[0] + total[1]
    assert statuses[0]["model_version"] == statuses[1]["model_version"]
    X = stream(seed + 5, 1, 30)[0][0]
    answers = [g2.proba(r, X) for r in range(2)]
    np.testing.assert_array_equal(answers[0].y, answers[1].y)
    assert answers[0].model_version == answers[1].model_version
    follower = FollowerProcess(tmp_path / "follower", f"tcp://127.0.0.1:{g2.base + 3}")
    try:
        follower.start()
        follower.wait_for_version(answers[0].model_version)
        with Predictor(follower.predict, timeout=10) as p:
            np.testing.assert_array_equal(p.predict(X, output="proba").y, answers[1].y)
    finally:
        follower.kill()
    assert g2.stop() == 0


@pytest.mark.parametrize("extra, expected", [
    (["--set", "search_members=4"], "population"),
    ([], "input_dim"),
])
def test_what_a_group_cannot_do_is_refused_with_exit_2(tmp_path, extra, expected):
    from learnd.clients.launch import free_port_base
    args = model_args() if extra else ["--set", "task=\"multiclass\""]
    cmd = group_command(2, tmp_path / "state", free_port_base(2), [*args, *extra])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr


def test_learnd_runs_without_mpi4py():
    """Only --data-parallel imports mpi4py: the command line, the daemon and the trainer
    load without it."""
    code = ("import sys; import learnd.clients.cli, learnd.daemon.supervisor.server, "
            "learnd.daemon.supervisor.tree, learnd.daemon.training.parallel; "
            "assert 'mpi4py' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


AGREE_SCRIPT = """
import json, os, sys
from learnd.daemon.training import parallel
from learnd.daemon.training.checkpoints import CheckpointStore

group = parallel.connect()
steps = json.loads(sys.argv[2])[group.rank]
store = CheckpointStore(os.path.join(sys.argv[1], f"rank-{group.rank}"), keep=10)
for step in steps:
    store.write({"model": None, "daemon": {"counters": {"batches_trained": step}}})
chosen = group.agree_on_checkpoint(store)
with open(os.path.join(sys.argv[1], f"result-{group.rank}.json"), "w") as f:
    json.dump({"chosen": chosen and os.path.basename(chosen),
               "left": [os.path.basename(p) for _, p in store.files()]}, f)
"""


@pytest.mark.parametrize("steps, chosen", [
    ([[10, 20, 30], [10, 20]], [("checkpoint-00000002.ckpt", 2), ("checkpoint-00000002.ckpt", 2)]),
    ([[10], []], [(None, 0), (None, 0)]),
    ([[5, 10, 10], [10]], [("checkpoint-00000003.ckpt", 3), ("checkpoint-00000001.ckpt", 1)]),
])
def test_the_ranks_resume_from_the_newest_step_all_of_them_hold(tmp_path, steps, chosen):
    """A kill during the group's checkpoint leaves one rank a step ahead: every rank takes
    its newest checkpoint of the newest common step, and sets later ones aside (their
    steps are trained again from the logs)."""
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", AGREE_SCRIPT, str(tmp_path),
                           json.dumps(steps)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in range(2)]
    for result, (name, left) in zip(results, chosen):
        assert result["chosen"] == name
        assert len(result["left"]) == left


def test_a_rank_that_cannot_start_ends_the_whole_job(tmp_path):
    """Rank 1's ingest port is taken: it exits 3 (port in use) and takes rank 0 with it,
    which would otherwise wait for it at the first collective for ever."""
    import socket

    from learnd.clients.launch import free_port_base
    base = free_port_base(2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", base + 10))
        taken.listen()
        done = subprocess.run(group_command(2, tmp_path / "state", base, model_args()),
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert f"127.0.0.1:{base + 10}" in done.stderr


def test_a_rank_reports_a_drift_and_takes_no_action_that_would_part_the_ranks(groups, seed):
    """on_drift = boost_lr on a group: the rank whose stream changes counts the drift, and
    neither rank's learning rate moves, so the ranks keep one model."""
    rng = np.random.default_rng(seed)
    rows, change = 24_000, 16_000
    X = rng.uniform(0, 10, (rows, 3))
    y = np.where(np.arange(rows) < change, X[:, 0] + X[:, 1] > 10, X[:, 1] + X[:, 2] > 10).astype(np.int64)
    g = groups(args=[*model_args(input_dim=3, task="binary", n_outputs=1), "--set", "on_drift=boost_lr",
                     "--set", "batch_size=64", "--set", "batch_linger_ms=20"])
    with Producer(g.endpoints[0]["ingest"], producer_id="a", timeout=60) as pa:
        for i in range(0, rows, 500):
            pa.send(X[i:i + 500], y[i:i + 500], split="train")
    g.wait_until(lambda: g.status(0)["samples_trained"] == rows, timeout=240, what="every row trained")
    drift = g.status(0)["drift"]
    assert drift["detections"] >= 1 and drift["last"]["action"] == "none" and drift["boost"] is None
    assert change < drift["last"]["row"] <= change + 2000, drift["last"]
    assert g.metric(0, "learnd_drift_detected_total") == drift["detections"]
    for r in range(2):
        assert g.status(r)["learning_rate"] == MODEL["lr"]
    steps = g.status(0)["model_version"]
    g.wait_steps(steps)
    answers = [g.proba(r, X[:50]) for r in range(2)]
    np.testing.assert_array_equal(answers[0].y, answers[1].y)
    assert g.stop() == 0
