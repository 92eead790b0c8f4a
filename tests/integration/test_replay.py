"""Replay in the daemon: steps on recent training rows while no new data waits, counted
in status and the metrics, in the served version, never on held-out rows, and kept
across a restart; the embedded Replay takes the same steps."""
from __future__ import annotations

import numpy as np

from learnd.clients.client import Control, Predictor, Producer
from learnd.engine.datasets import split

BATCH = 64
REPLAY = {"LEARND_MODEL_HIDDEN": "[32]", "LEARND_REPLAY_RATIO": "3", "LEARND_REPLAY_ROWS": "256",
          "LEARND_CHECKPOINT_INTERVAL_S": "0"}


def _settled(c, d, batches, ratio):
    """Wait until the trainer has taken every replay step its new steps earned."""
    def done():
        s = c.status()
        return s["batches_trained"] == batches and s["replay"]["pending"] == 0 and \
            s["replay"]["steps"] == ratio * batches
    d.wait_until(done, what=f"{batches} batches and their replay steps")
    return c.status()


def test_replay_steps_follow_new_steps_and_show_in_status_metrics_and_version(daemons):
    Xtr, ytr, Xte, _ = split("digits")
    # 1024 rows: a burst banks up to 3 x 1024/64 = 48 steps, so all 18 are taken
    d = daemons(env={**REPLAY, "LEARND_REPLAY_ROWS": "1024"})
    with Producer(d.ingest, producer_id="p", window=4, timeout=20) as prod:
        for k in range(6):
            prod.send(Xtr[BATCH * k:BATCH * (k + 1)], ytr[BATCH * k:BATCH * (k + 1)], split="train")
        for k in range(6, 8):          # held out: never trained on, never replayed
            prod.send(Xtr[BATCH * k:BATCH * (k + 1)], ytr[BATCH * k:BATCH * (k + 1)], split="dev")
    with Control(d.control) as c:
        s = _settled(c, d, 6, 3)
        d.wait_until(lambda: c.status()["model_version"] == 6 + 18, what="version 24")
    assert s["replay"] == {"steps": 18, "ratio": 3, "recency": 256.0, "rows": 6 * BATCH, "capacity": 1024,
                           "window": 6 * BATCH, "cuts": 0, "pending": 0}
    assert s["samples_trained"] == 6 * BATCH
    # Progressive validation scored each new row once, before its step; replayed rows are
    # not scored again.
    assert s["progressive"]["rows"] == 6 * BATCH
    d.wait_until(lambda: d.metrics().get("learnd_replay_steps_total") == 18, what="the metric")
    m = d.metrics()
    assert m["learnd_batches_trained_total"] == 6 and m["learnd_replay_step_seconds_count"] == 18
    with Predictor(d.predict) as p:
        assert p.predict(Xte[:5]).model_version == 24


def test_held_out_rows_never_enter_the_replay_window(daemons):
    Xtr, ytr, _, _ = split("digits")
    d = daemons(env={**REPLAY, "LEARND_REPLAY_ROWS": "4096"})
    with Producer(d.ingest, producer_id="p", window=4, timeout=20) as prod:
        prod.send(Xtr[:3 * BATCH], ytr[:3 * BATCH], split="train")
        for split_name in ("dev", "test", "train_dev"):
            prod.send(Xtr[3 * BATCH:5 * BATCH], ytr[3 * BATCH:5 * BATCH], split=split_name)
    with Control(d.control) as c:
        s = _settled(c, d, 3, 3)
        d.wait_until(lambda: c.status()["evaluation"].get("test", {}).get("rows") == 2 * BATCH,
                     what="the held-out rows")
        assert c.status()["replay"]["rows"] == 3 * BATCH == s["samples_trained"]


def test_the_replay_window_and_its_count_survive_a_restart(daemons):
    Xtr, ytr, _, _ = split("digits")
    d = daemons(env=REPLAY)
    with Producer(d.ingest, producer_id="p", window=4, timeout=20) as prod:
        for k in range(3):
            prod.send(Xtr[BATCH * k:BATCH * (k + 1)], ytr[BATCH * k:BATCH * (k + 1)], split="train")
    with Control(d.control) as c:
        _settled(c, d, 3, 3)
    assert d.stop() == 0
    d2 = daemons(env=REPLAY, state_dir=d.state_dir)
    with Control(d2.control) as c:
        s = c.status()
        assert s["replay"]["steps"] == 9 and s["replay"]["rows"] == 3 * BATCH
        assert s["model_version"] == 12
    with Producer(d2.ingest, producer_id="p", window=4, timeout=20, first_seq=3) as prod:
        prod.send(Xtr[3 * BATCH:4 * BATCH], ytr[3 * BATCH:4 * BATCH], split="train")
    with Control(d2.control) as c:
        s = _settled(c, d2, 4, 3)
        assert s["replay"]["rows"] == 4 * BATCH


def test_a_sudden_change_cuts_the_replay_window_and_the_cut_survives_a_restart(daemons):
    """A binary stream whose labelling hyperplane is replaced at row 3,072: the progressive
    error rises, and replay then draws only from the rows after the change."""
    rng = np.random.default_rng(5)
    n, change = 96 * BATCH, 48 * BATCH
    X = rng.standard_normal((n, 4)).astype(np.float32)
    y = np.where(np.arange(n) < change, X[:, 0] + 0.5 * X[:, 1] > 0, X[:, 2] - X[:, 0] > 0).astype(int)
    env = {**REPLAY, "LEARND_REPLAY_ROWS": "8192"}
    d = daemons(env=env)
    with Producer(d.ingest, producer_id="p", window=4, timeout=20) as prod:
        for k in range(96):
            prod.send(X[BATCH * k:BATCH * (k + 1)], y[BATCH * k:BATCH * (k + 1)], split="train")
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["batches_trained"] == 96, what="96 batches")
        r = c.status()["replay"]
    assert r["rows"] == n and r["cuts"] >= 1
    assert BATCH <= r["window"] <= n - change + 256, r     # ADWIN places a change to within its buckets
    assert d.stop() == 0
    d2 = daemons(env=env, state_dir=d.state_dir)
    with Control(d2.control) as c:
        r2 = c.status()["replay"]
    assert (r2["rows"], r2["window"], r2["cuts"]) == (r["rows"], r["window"], r["cuts"])


def test_replay_ratio_is_live_and_0_stops_replay(daemons):
    Xtr, ytr, _, _ = split("digits")
    d = daemons(env=REPLAY)
    with Control(d.control) as c:
        assert c.set(replay_ratio=0) == {"replay_ratio": 0}
        with Producer(d.ingest, producer_id="p", window=4, timeout=20) as prod:
            for k in range(4):
                prod.send(Xtr[BATCH * k:BATCH * (k + 1)], ytr[BATCH * k:BATCH * (k + 1)], split="train")
        d.wait_until(lambda: c.status()["batches_trained"] == 4, what="4 batches")
        # The fourth step's version is published just after the step is counted.
        s = d.settled()
        assert s["batches_trained"] == 4
        assert s["replay"]["steps"] == 0 and s["replay"]["rows"] == 4 * BATCH
        assert s["model_version"] == 4
        c.set(replay_ratio=2)
        with Producer(d.ingest, producer_id="p", window=4, timeout=20, first_seq=4) as prod:
            prod.send(Xtr[4 * BATCH:5 * BATCH], ytr[4 * BATCH:5 * BATCH], split="train")
        d.wait_until(lambda: c.status()["replay"]["steps"] == 2 and c.status()["model_version"] == 7,
                     what="2 replay steps for the fifth batch")
