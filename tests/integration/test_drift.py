"""Drift on a real daemon: a stream whose concept changes at a known row (SEA-like
inputs; the label's rule switches from x0 + x1 > 10 to x1 + x2 > 10, so about a third
of the labels change), found by the detector on the progressive error, counted in
/metrics, reported in status, acted on as `on_drift` says, which `set` changes live.
SEA's own changes move 1.5-4.5% of the labels and are measured in benchmarks/drift.py."""
from __future__ import annotations

import numpy as np
import pytest

from learnd.clients.client import Control, LearndError, Producer

ROWS = 30_000
CHANGE = 20_000          # the first row of the second concept
BATCH = 500


@pytest.fixture
def stream(seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 10, (ROWS, 3)).astype(np.float32)
    y = np.where(np.arange(ROWS) < CHANGE, X[:, 0] + X[:, 1] > 10, X[:, 1] + X[:, 2] > 10).astype(np.int64)
    return X, y


def _train_on(daemon, X, y, timeout):
    """Send the stream once in BATCH-row train batches; the status once all is trained."""
    with Producer(daemon.ingest, producer_id="sea", window=16, timeout=timeout) as prod:
        for i in range(0, ROWS, BATCH):
            prod.send(X[i:i + BATCH], y[i:i + BATCH], split="train")
    assert prod.rejected == []
    return daemon.settled()


def test_a_concept_change_is_found_and_acted_on(daemons, stream):
    X, y = stream
    d = daemons(args=["--set", "on_drift=boost_lr", "--set", "drift_boost_rows=2000"])
    status = _train_on(d, X, y, timeout=30)
    drift = status["drift"]
    print("drift:", {k: drift[k] for k in ("detections", "falls", "rows_watched", "last")})
    assert drift["detector"] == "adwin" and drift["rows_watched"] == ROWS
    assert drift["detections"] >= 1 and drift["last"]["action"] == "boost_lr"
    assert drift["detections"] == 1 and CHANGE < drift["last"]["row"] <= CHANGE + 1000, drift["last"]
    assert d.metrics()["learnd_drift_detected_total"] == drift["detections"]
    assert drift["boost"] is None                 # 10000 rows later the boost has run out
    with Control(d.control) as c:
        assert c.set(on_drift="reset_optimizer") == {"on_drift": "reset_optimizer"}
        assert c.status()["drift"]["on_drift"] == "reset_optimizer"
        with pytest.raises(LearndError) as err:
            c.set(on_drift="panic")
        assert err.value.code == "bad_setting"
    # The detector, its counts and the last drift survive a restart (they are in the checkpoint).
    assert d.stop() == 0
    d2 = daemons(name="again", state_dir=d.state_dir)
    with Control(d2.control) as c:
        again = c.status()["drift"]
    assert again["detections"] == 1 and again["last"] == drift["last"]
    assert again["rows_watched"] == ROWS and again["window_rows"] == drift["window_rows"]


def test_a_population_meets_a_drift_with_new_challengers(daemons, stream):
    X, y = stream
    d = daemons(args=["--set", "search_members=4", "--set", "on_drift=new_challengers",
                      "--set", "search_min_rows=256", "--set", "search_interval=1000000"])
    status = _train_on(d, X, y, timeout=60)
    drift = status["drift"]
    assert drift["detections"] >= 1 and drift["last"]["action"] == "new_challengers"
    renewed = [dec for dec in status["search"]["recent_decisions"] if dec.get("reason") == "drift"]
    assert renewed and all(dec["kind"] == "replace" for dec in renewed)
    assert status["search"]["champion"] not in {dec["replaced"] for dec in renewed}
    members = {row["member"] for row in status["members"]}
    assert {dec["member"] for dec in renewed[-1:]} <= members
