"""Every predict answer comes from one whole published version: while the trainer
publishes after every step, thousands of answers each equal, bit for bit, the embedded
model trained on the same batches up to the version the reply names."""
from __future__ import annotations

import pytest

import threading

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (Numba's BLAS, loaded before limiting its threads)
from threadpoolctl import threadpool_limits

from learnd import Model
from learnd.clients.client import LearndError, Predictor, Producer
from learnd.engine.datasets import split
from tests.conftest import ALL_MODES

BATCH = 64
STEPS = 60


def _answers(predictor, rows):
    try:
        predictor.predict(rows)
        return True
    except LearndError as exc:
        if exc.code != "not_ready":
            raise
        return False


@pytest.mark.parametrize("daemon_mode", ALL_MODES)   # the predict path behind the proxy too
def test_every_answer_equals_the_embedded_model_at_the_version_it_names(daemons):
    Xtr, ytr, Xte, _ = split("digits")
    rows = Xte[:8]
    # Replay off: the embedded model below takes one partial_fit per version, and where
    # replay steps fall depends on when batches arrive.
    d = daemons(args=["--set", "hidden=[32]"], env={"LEARND_PUBLISH_INTERVAL_MS": "0",
                                                    "LEARND_REPLAY_RATIO": "0"})
    answers, done = [], threading.Event()

    def ask():
        with Predictor(d.predict, timeout=20) as p:
            for _ in range(20_000):               # bounded; stops when training is done
                if done.is_set() and len(answers) > 3000:
                    return
                r = p.predict(rows, output="proba")
                answers.append((r.model_version, r.y))

    asker = threading.Thread(target=ask)
    with Producer(d.ingest, producer_id="c", window=2, timeout=30) as prod:
        prod.send(Xtr[:BATCH], ytr[:BATCH], split="train")
        prod.flush()                   # logged; the model exists once the trainer took it
        with Predictor(d.predict, timeout=20) as p:
            d.wait_until(lambda: _answers(p, rows), timeout=30, what="the first model")
        asker.start()
        for k in range(1, STEPS):
            i = (k * BATCH) % (len(Xtr) - BATCH)
            prod.send(Xtr[i:i + BATCH], ytr[i:i + BATCH], split="train")
    done.set()
    asker.join(120)
    versions = sorted({v for v, _ in answers})
    assert len(answers) > 3000 and len(versions) > 10, (len(answers), versions)
    with threadpool_limits(1, user_api="blas"):
        model = Model(hidden=(32,), task="multiclass", n_outputs=10, input_dim=64)
        expected = {}
        for k in range(STEPS):
            i = (k * BATCH) % (len(Xtr) - BATCH)
            model.partial_fit(Xtr[i:i + BATCH], ytr[i:i + BATCH])
            if k + 1 in versions:
                expected[k + 1] = model.predict_proba(rows)
    wrong = [v for v, y in answers if not np.array_equal(y, expected[v])]
    assert wrong == [], f"{len(wrong)} of {len(answers)} answers differ from their version's model"


@pytest.mark.parametrize("daemon_mode", ["tree", "single-process"])
def test_half_serving_answers_equal_the_embedded_half_model(daemons):
    """serving_precision=half through the daemon: the published snapshot carries the half
    copy, so one-row answers equal the embedded half model's bit for bit, and stay within
    the documented tolerance of the exact model's."""
    Xtr, ytr, Xte, _ = split("digits")
    steps = 12
    d = daemons(args=["--set", "hidden=[32]", "--set", 'serving_precision="half"'],
                env={"LEARND_PUBLISH_INTERVAL_MS": "0", "LEARND_REPLAY_RATIO": "0"})
    with Producer(d.ingest, producer_id="h", window=2, timeout=30) as prod:
        for k in range(steps):
            prod.send(Xtr[k * BATCH:(k + 1) * BATCH], ytr[k * BATCH:(k + 1) * BATCH], split="train")
        prod.flush()
    rows = Xte[:6]
    with Predictor(d.predict, timeout=20) as p:
        d.wait_until(lambda: _answers(p, rows) and p.predict(rows[:1]).model_version == steps,
                     timeout=60, what=f"version {steps}")
        one_row = np.concatenate([p.predict(rows[i:i + 1], output="proba").y for i in range(len(rows))])
    with threadpool_limits(1, user_api="blas"):
        models = {}
        for precision in ("half", "exact"):
            model = Model(hidden=(32,), task="multiclass", n_outputs=10, input_dim=64,
                          serving_precision=precision)
            for k in range(steps):
                model.partial_fit(Xtr[k * BATCH:(k + 1) * BATCH], ytr[k * BATCH:(k + 1) * BATCH])
            models[precision] = np.concatenate([model.predict_proba(rows[i:i + 1]) for i in range(len(rows))])
    assert np.array_equal(one_row, models["half"])
    assert 0 < np.abs(one_row - models["exact"]).max() <= 2e-3
