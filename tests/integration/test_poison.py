"""Poisoned batches (NaN, Inf, extreme magnitudes, float32 overflow) interleaved with
clean ones: each is refused and counted, and the model's held-out accuracy holds.
Without the magnitude bound, one row of 1e30 ruins the input normalizer for good,
which is why the bound exists."""
from __future__ import annotations

import math

import numpy as np
import pytest

from learnd.clients.client import Control, Predictor, Producer
from learnd.engine.datasets import split

BATCH = 64
PASSES = 5
ACCURACY_MARGIN = 0.02


@pytest.fixture(scope="module")
def digits():
    return split("digits")


def poisoned_batches(X, y, rng):
    """[(name, x, y, w, expected error code)], each a clean batch with one poisoned row
    (or one poisoned label or weight) at a random place."""
    out = []
    for k, (name, value, dtype, code) in enumerate([
            ("x NaN", np.nan, np.float32, "non_finite"),
            ("x +Inf", np.inf, np.float32, "non_finite"),
            ("x -Inf", -np.inf, np.float32, "non_finite"),
            ("x +1e30", 1e30, np.float32, "out_of_range"),
            ("x -1e30", -1e30, np.float32, "out_of_range"),
            ("x +1e300", 1e300, np.float64, "out_of_range"),
            ("x -1e300", -1e300, np.float64, "out_of_range"),
            ("x 1e39 (float32 overflow)", 1e39, np.float64, "out_of_range"),
            ("x float64 max", np.finfo(np.float64).max, np.float64, "out_of_range"),
    ]):
        i = int(rng.integers(0, len(X) - BATCH))
        x = X[i:i + BATCH].astype(dtype)
        row = int(rng.integers(0, BATCH))
        if k % 2:
            x[row, :] = value                               # a whole row
        else:
            x[row, int(rng.integers(0, x.shape[1]))] = value  # one feature
        out.append((name, x, y[i:i + BATCH], None, code))
    for name, value, code in [("y NaN", np.nan, "bad_label"), ("y +Inf", np.inf, "non_finite"),
                              ("y 1e30", 1e30, "bad_label"), ("y -1e300", -1e300, "bad_label")]:
        i = int(rng.integers(0, len(X) - BATCH))
        labels = y[i:i + BATCH].astype(np.float64)
        labels[int(rng.integers(0, BATCH))] = value
        out.append((name, X[i:i + BATCH], labels, None, code))
    for name, value in [("w NaN", np.nan), ("w +Inf", np.inf)]:
        i = int(rng.integers(0, len(X) - BATCH))
        w = np.ones(BATCH)
        w[int(rng.integers(0, BATCH))] = value
        out.append((name, X[i:i + BATCH], y[i:i + BATCH], w, "non_finite"))
    return out


def train_clean(d, X, y, passes, producer_id="clean"):
    with Producer(d.ingest, producer_id=producer_id, window=16, timeout=20) as prod:
        for _ in range(passes):
            for i in range(0, len(X) - BATCH + 1, BATCH):
                prod.send(X[i:i + BATCH], y[i:i + BATCH], split="train")
    assert prod.rejected == []
    return prod.acked_rows


def wait_trained(d, c, rows):
    def done():
        s = c.status()
        return s["queue_depth"] == 0 and s["samples_trained"] + s["rows_waiting"] == rows
    d.wait_until(done, timeout=120, what=f"{rows} rows trained")
    version = d.settled()["model_version"]
    with Predictor(d.predict) as p:
        d.wait_until(lambda: p.predict(X_PROBE).model_version == version, what="the last snapshot")


X_PROBE = np.zeros((1, 64), np.float32)


def accuracy(d, X, y):
    with Predictor(d.predict) as p:
        return float((p.predict(X).y == y).mean())


def test_poisoned_batches_are_refused_counted_and_accuracy_holds(daemons, digits, seed, figures):
    X, y, Xte, yte = digits
    d = daemons()
    with Control(d.control) as c:
        rows = train_clean(d, X, y, PASSES)
        wait_trained(d, c, rows)
        before = accuracy(d, Xte, yte)
        metrics_before = d.metrics()
        status_before = c.status()

        poisons = poisoned_batches(X, y, np.random.default_rng(seed))
        expected = {}
        clean_rows = 0
        with Producer(d.ingest, producer_id="mixed", window=8, timeout=20) as prod:
            for k, (name, x, labels, w, code) in enumerate(poisons):
                i = (k * BATCH) % (len(X) - BATCH)
                prod.send(X[i:i + BATCH], y[i:i + BATCH], split="train")           # clean, poisoned, clean
                clean_rows += BATCH
                expected[prod.send(x, labels, w=w)] = (name, code)
                prod.send(X[i + 1:i + 1 + BATCH], y[i + 1:i + 1 + BATCH], split="train")
                clean_rows += BATCH
        refused = {r.seq: r.code for r in prod.rejected}
        assert refused == {seq: code for seq, (_, code) in expected.items()}, (refused, expected)
        wait_trained(d, c, rows + clean_rows)
        after = accuracy(d, Xte, yte)
        status = c.status()
    metrics = d.metrics()
    counted = {}
    for _, code in expected.values():
        counted[code] = counted.get(code, 0) + 1
    for code, n in counted.items():
        key = f"learnd_rejected_total{{reason={code}}}"
        assert metrics[key] - metrics_before[key] == n, code
    assert metrics["learnd_ingest_messages_total{outcome=rejected}"] == len(poisons)
    assert status["nonfinite_steps"] == status_before["nonfinite_steps"] == 0
    assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith("learnd_weight_norm"))
    assert after >= before - ACCURACY_MARGIN, (before, after)
    figures(f"poisoned batches: {len(poisons)} refused ({counted}); held-out accuracy "
          f"{before:.4f} before, {after:.4f} after {clean_rows} more clean rows")


def test_without_the_bound_one_row_of_1e30_ruins_the_model(daemons, digits, figures):
    X, y, Xte, yte = digits
    d = daemons(env={"LEARND_MAX_ABS_VALUE": "0"})      # the bound off
    with Control(d.control) as c:
        rows = train_clean(d, X, y, PASSES)
        wait_trained(d, c, rows)
        before = accuracy(d, Xte, yte)
        x = X[:BATCH].copy()
        x[7, :] = 1e30                                  # finite in float32: it passes as data
        overflow = X[:BATCH].astype(np.float64)
        overflow[7, :] = 1e39                           # finite in float64, Inf in float32
        with Producer(d.ingest, producer_id="wild", window=1, timeout=20) as prod:
            prod.send(overflow, y[:BATCH], split="train")
            prod.send(x, y[:BATCH], split="train")
        assert [r.code for r in prod.rejected] == ["non_finite"]
        wait_trained(d, c, rows + BATCH)
        after = accuracy(d, Xte, yte)
    assert before > 0.9 and after < 0.5, (before, after)
    figures(f"without max_abs_value: accuracy {before:.4f} -> {after:.4f} after one row of 1e30")
