"""Evaluation inside the stream, on real daemons: hash splits, figures per split, the
bias/variance diagnosis in three situations built for real, progressive validation,
delayed labels, early stopping with rollback and freeze, the satisficing latency
metric, and the learning-curve report."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

# Numba's GEMMs call SciPy's OpenBLAS: load it before limiting BLAS threads as the
# daemon's trainer does (one thread), or the limit would miss it and, on some CPUs,
# OpenBLAS with two threads rounds differently.
import scipy.linalg.cython_blas  # noqa: E402,F401

from learnd.clients.client import Control, LearndError, Predictor, Producer
from learnd.daemon.ingest.splits import DEV, TEST, TRAIN_DEV, SplitAssigner
from learnd.daemon.training.progressive import ProgressiveScore
from learnd.engine import Model
from learnd.engine.datasets import load

BATCH = 64


@pytest.fixture(scope="module")
def digits():
    X, y, _ = load("digits")
    return X.astype(np.float32), y


def stream(address, X, y, passes=1, split="auto", producer_id="p1", first_seq=0):
    with Producer(address, producer_id=producer_id, window=16, timeout=30, first_seq=first_seq) as prod:
        for _ in range(passes):
            for i in range(0, len(X), BATCH):
                prod.send(X[i:i + BATCH], y[i:i + BATCH], split=split)
    assert prod.rejected == []
    return prod


def status_when(d, predicate, what, timeout=120):
    with Control(d.control) as c:
        d.wait_until(lambda: predicate(c.status()), timeout=timeout, what=what)
        return c.status()


def evaluated(*splits, samples=0):
    return lambda s: (s["samples_trained"] >= samples and
                      all(sp in (s.get("evaluation") or {}) for sp in splits))


def settings(**kv):
    args = []
    for k, v in kv.items():
        args += ["--set", f"{k}={v}"]
    return args


def test_auto_rows_split_by_a_stable_hash_and_every_split_is_evaluated(daemons, digits):
    X, y = digits
    d = daemons(args=settings(eval_interval_samples=512, hidden="[64]"))
    stream(d.ingest, X, y)
    m = d.metrics()
    rows = {s: m[f"learnd_ingest_rows_total{{split={s}}}"] for s in ("train", "train_dev", "dev", "test")}
    assert sum(rows.values()) == len(X)
    assert 0.01 < rows["dev"] / len(X) < 0.035 and 0.01 < rows["test"] / len(X) < 0.035
    assert 0.01 < rows["train_dev"] / len(X) < 0.035
    # the same rows again, in another order and from another producer: each lands where it did
    order = np.random.default_rng(0).permutation(len(X))
    stream(d.ingest, X[order], y[order], producer_id="p2")
    again = d.metrics()
    for s, n in rows.items():
        assert again[f"learnd_ingest_rows_total{{split={s}}}"] == 2 * n
    status = status_when(d, evaluated("train", "train_dev", "dev", "test", samples=2 * rows["train"] - BATCH),
                         "all four splits evaluated")
    assert status["samples_trained"] <= 2 * rows["train"]           # held-out rows never train
    ev = status["evaluation"]
    # reservoirs hold each distinct row sent to them once, the resent ones too
    codes = SplitAssigner().assign(X, "auto")
    for split, code in (("train_dev", TRAIN_DEV), ("dev", DEV), ("test", TEST)):
        assert ev[split]["rows"] == len(np.unique(X[codes == code], axis=0)), split
    for split in ("train", "train_dev", "dev", "test"):
        for key in ("error", "loss", "accuracy", "precision", "recall", "f1"):
            assert key in ev[split], (split, key)
    metrics = d.metrics()
    for split in ("train", "train_dev", "dev", "test"):
        assert metrics[f"learnd_eval_error{{split={split}}}"] == pytest.approx(ev[split]["error"], abs=0.2)
        assert f"learnd_eval_f1{{split={split}}}" in metrics
    assert os.path.getsize(os.path.join(d.state_dir, "eval-history.jsonl")) > 0


def test_weighted_rows_give_a_weighted_error(daemons, digits):
    X, y = digits
    d = daemons(args=settings(eval_interval_samples=256, dev_fraction=0.3, test_fraction=0.0, hidden="[16]"))
    with Producer(d.ingest, window=16, timeout=30) as prod:
        for i in range(0, len(X), BATCH):
            prod.send(X[i:i + BATCH], y[i:i + BATCH], w=np.where(y[i:i + BATCH] == 3, 5.0, 1.0))
    status = status_when(d, evaluated("dev"), "a dev evaluation")
    dev = status["evaluation"]["dev"]
    assert "weighted_error" in dev and dev["weighted_error"] != dev["error"]
    assert "learnd_eval_weighted_error{split=dev}" in d.metrics()


# -- the diagnosis, in three situations built for real --------------------------------------------
def test_a_tiny_model_underfits_avoidable_bias(daemons, digits):
    X, y = digits
    d = daemons(args=settings(hidden="[1]", eval_interval_samples=1024))
    stream(d.ingest, X, y, passes=3)
    s = status_when(d, evaluated("train", "train_dev", "dev", samples=3 * 1600), "evaluations")
    s = status_when(d, lambda st: st["diagnosis"]["verdict"] != "unknown", "a verdict")
    diag = s["diagnosis"]
    print("underfit:", {k: v["error"] for k, v in s["evaluation"].items()}, diag["gaps"], diag["verdict"])
    assert diag["verdict"] == "avoidable_bias", diag
    assert diag["gaps"]["avoidable_bias"] > 0.3 and "bigger network" in diag["recipe"]
    r = subprocess.run([sys.executable, "-m", "learnd", "status", f"--control={d.control}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "AVOIDABLE_BIAS" in r.stdout and "bigger network" in r.stdout
    assert d.metrics()["learnd_diagnosis_verdict{verdict=avoidable_bias}"] == 1.0


def test_a_big_model_on_few_rows_overfits_variance(daemons, digits):
    X, y = digits
    X, y = X[:400], y[:400]
    d = daemons(args=settings(hidden="[256,256]", dev_fraction=0.25, test_fraction=0.05,
                              train_dev_fraction=0.6, eval_interval_samples=2048))
    stream(d.ingest, X, y, passes=40)
    s = status_when(d, lambda st: evaluated("train", "train_dev", "dev")(st)
                    and st["evaluation"]["train"]["error"] < 0.01, "train error near 0", timeout=180)
    diag = s["diagnosis"]
    print("overfit:", {k: v["error"] for k, v in s["evaluation"].items()}, diag["gaps"], diag["verdict"])
    assert diag["verdict"] == "variance", (diag, s["evaluation"])
    assert diag["gaps"]["variance"] > 0.04 and "more training data" in diag["recipe"]
    assert d.metrics()["learnd_diagnosis_gap{gap=variance}"] == pytest.approx(diag["gaps"]["variance"], abs=0.05)


def test_dev_rows_from_a_shifted_distribution_are_a_data_mismatch(daemons, digits):
    X, y = digits
    d = daemons(args=settings(hidden="[64]", dev_fraction=0.0, test_fraction=0.02,
                              train_dev_fraction=0.05, eval_interval_samples=1024))
    shifted = 16.0 - X[:400]                   # the target distribution: inverted pixel intensities
    stream(d.ingest, shifted, y[:400], split="dev", producer_id="target")
    stream(d.ingest, X, y, passes=6)
    s = status_when(d, evaluated("train", "train_dev", "dev", samples=5 * 1600), "evaluations")
    diag = s["diagnosis"]
    print("mismatch:", {k: v["error"] for k, v in s["evaluation"].items()}, diag["gaps"], diag["verdict"])
    assert diag["verdict"] == "data_mismatch", (diag, s["evaluation"])
    assert diag["gaps"]["data_mismatch"] > 0.3 and "training data more like the target" in diag["recipe"]


# -- progressive validation --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["step", "inference"])
def test_progressive_validation_scores_each_batch_before_learning_from_it(daemons, digits, mode):
    X, y = digits
    n = len(X) // BATCH
    # Replay off: the embedded model below takes no replay steps, and where the daemon takes
    # them depends on when batches arrive.
    d = daemons(args=settings(hidden="[32]", progressive_validation=mode, replay_ratio=0) + ["--no-wal"])
    stream(d.ingest, X[:n * BATCH], y[:n * BATCH], split="train")
    s = status_when(d, lambda st: st["batches_trained"] == n, f"{n} batches")
    # The same batches through the embedded engine, each scored before its step: by an
    # inference pass, or by the step's own forward pass (parameters before the update).
    with threadpool_limits(1, user_api="blas"):
        model = Model(hidden=(32,), task="multiclass", n_outputs=10, input_dim=64)
        score = ProgressiveScore("multiclass", window=10_000)
        for k in range(n):
            xb, yb = X[k * BATCH:(k + 1) * BATCH], y[k * BATCH:(k + 1) * BATCH]
            if mode == "inference":
                score.add(model.predict_proba(xb), np.eye(10)[yb])
            model.partial_fit(xb, yb)
            if mode == "step":
                score.add(model.last_batch_outputs(), np.eye(10)[yb])
    expected = score.figures()
    got = s["progressive"]
    print(f"progressive ({mode}):", got, "embedded:", expected)
    assert got["rows"] == expected["rows"] == n * BATCH
    assert got["error"] == pytest.approx(expected["error"], abs=1e-9)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert 0.02 < got["error"] < 0.5        # early batches are scored by a barely trained model
    assert d.metrics()["learnd_progressive_error"] == pytest.approx(got["window_error"], rel=1e-6)


# -- delayed labels -----------------------------------------------------------------------------------
def test_delayed_labels_train_on_stored_inputs_and_expired_ids_are_counted(daemons, digits):
    X, y = digits
    d = daemons(args=settings(id_ttl_s=2.0, hidden="[16]"))
    stream(d.ingest, X[:256], y[:256], split="train")
    status_when(d, lambda st: st["samples_trained"] >= 192, "first rows trained")
    ids = np.arange(1000, 1128, dtype=np.int64)
    with Predictor(d.predict) as p:
        p.predict(X[256:384], ids=ids)
        p.predict(X[384:392], ids=np.arange(5000, 5008, dtype=np.int64))
    before = status_when(d, lambda st: st["queue_depth"] == 0, "idle")["samples_trained"]
    with Producer(d.ingest, producer_id="labeller", timeout=30) as prod:
        prod.send(None, y[256:384], ids=ids, split="train")
    assert prod.rejected == []
    status_when(d, lambda st: st["samples_trained"] >= before + 128, "delayed rows trained")
    m = d.metrics()
    assert m["learnd_delayed_labels_total{outcome=trained}"] == 128
    import time
    time.sleep(2.5)                         # the second request's rows expire
    with Producer(d.ingest, producer_id="late", timeout=30) as prod:
        prod.send(None, y[384:392], ids=np.arange(5000, 5008, dtype=np.int64), split="train")
        prod.send(None, y[:2], ids=np.array([77, 78], dtype=np.int64), split="train")
    assert [r.code for r in prod.rejected] == ["unknown_id", "unknown_id"]
    m = d.metrics()
    assert m["learnd_delayed_labels_total{outcome=expired}"] == 8
    assert m["learnd_delayed_labels_total{outcome=unknown}"] == 2
    # the labelled ids were consumed: labelling them again is refused, not trained twice
    with Producer(d.ingest, producer_id="again", timeout=30) as prod:
        prod.send(None, y[256:384], ids=ids, split="train")
    assert [r.code for r in prod.rejected] == ["unknown_id"]


# -- early stopping, rollback, freeze ---------------------------------------------------------------
def test_early_stopping_serves_the_best_model_then_rollback_and_freeze(daemons, digits):
    X, y = digits
    X, y = X[:500], y[:500]
    d = daemons(args=settings(hidden="[256,256]", dev_fraction=0.3, test_fraction=0.0,
                              train_dev_fraction=0.0, eval_interval_samples=512,
                              early_stopping_patience=4, early_stopping_metric="loss",
                              early_stopping_action="serve_best", lr=0.01))
    stream(d.ingest, X, y, passes=60)
    s = status_when(d, lambda st: st["early_stopping"]["serving_best"], "early stopping", timeout=180)
    es = s["early_stopping"]
    print("early stopping:", es, "batches trained", s["batches_trained"])
    assert es["stopped"] and es["best_version"] < s["batches_trained"]
    assert s["model_version"] == es["best_version"]
    with Predictor(d.predict) as p:
        assert p.predict(X[:3]).model_version == es["best_version"]
    m = d.metrics()
    assert m["learnd_serving_best"] == 1.0 and m["learnd_best_model_version"] == es["best_version"]
    assert m["learnd_early_stopped"] == 1.0
    assert os.path.exists(os.path.join(d.state_dir, "best-model.npz"))

    with Control(d.control) as c:
        r = c.rollback()
        assert r["best_version"] == es["best_version"] and r["model_version"] >= s["batches_trained"]
        after = c.status()
        assert not after["early_stopping"]["serving_best"] and not after["early_stopping"]["stopped"]
        assert d.metrics()["learnd_rollbacks_total"] == 1.0

        assert c.freeze() == {"frozen": True}
        trained = c.status()["samples_trained"]
        stream(d.ingest, X, y, producer_id="p2")
        d.wait_until(lambda: d.metrics()["learnd_frozen_rows_total"] >= 300, what="frozen rows counted")
        assert c.status()["samples_trained"] == trained
        assert d.metrics()["learnd_training_frozen"] == 1.0
        assert c.unfreeze() == {"frozen": False}
        stream(d.ingest, X, y, producer_id="p3")
        d.wait_until(lambda: c.status()["samples_trained"] > trained, what="training again")


def test_early_stopping_takes_no_best_from_a_dev_split_of_few_rows(daemons, digits):
    X, y = digits
    d = daemons(args=settings(hidden="[16]", eval_interval_samples=256, early_stopping_min_dev_rows=100))
    stream(d.ingest, X[:40], y[:40], split="dev", producer_id="target")
    stream(d.ingest, X[40:1040], y[40:1040], split="train")
    s = status_when(d, lambda st: evaluated("dev", samples=900)(st), "a dev evaluation")
    assert s["evaluation"]["dev"]["rows"] == 40
    assert s["early_stopping"]["best_version"] is None          # 40 rows: not yet
    stream(d.ingest, X[1040:1140], y[1040:1140], split="dev", producer_id="target", first_seq=1000)
    stream(d.ingest, X[:512], y[:512], split="train", producer_id="p2")
    s = status_when(d, lambda st: st["early_stopping"]["best_version"] is not None, "a best dev model")
    assert s["evaluation"]["dev"]["rows"] >= 100


def test_rollback_without_a_dev_evaluation_is_not_ready(daemons, digits):
    X, y = digits
    d = daemons(args=settings(hidden="[8]"))
    stream(d.ingest, X[:128], y[:128], split="train")
    with Control(d.control) as c:
        with pytest.raises(LearndError) as err:
            c.rollback()
    assert err.value.code == "not_ready"


# -- satisficing latency -----------------------------------------------------------------------------
def test_predict_p99_is_reported_against_its_bound(daemons, digits):
    X, y = digits
    d = daemons(args=settings(hidden="[16]", predict_p99_bound_ms=1000))
    stream(d.ingest, X[:256], y[:256], split="train")
    status_when(d, lambda st: st["ready"], "ready")
    with Predictor(d.predict) as p:
        for i in range(200):
            p.predict(X[i:i + 1])
    with Control(d.control) as c:
        sat = c.status()["satisficing"]
        assert sat["met"] is True and 0 < sat["p99_seconds"] < 1.0
        m = d.metrics()
        assert m["learnd_satisficing_met{metric=predict_latency_p99}"] == 1.0
        assert m["learnd_predict_latency_bound_seconds"] == 1.0
        assert m["learnd_predict_latency_p99_seconds"] == pytest.approx(sat["p99_seconds"], rel=0.5)
        c.set(predict_p99_bound_ms=1e-6)
        assert c.status()["satisficing"]["met"] is False
        assert d.metrics()["learnd_satisficing_met{metric=predict_latency_p99}"] == 0.0


# -- the report ---------------------------------------------------------------------------------------
def test_report_draws_learning_curves_from_the_history(daemons, digits, tmp_path):
    pytest.importorskip("matplotlib")
    X, y = digits
    d = daemons(args=settings(hidden="[32]", eval_interval_samples=512, dev_fraction=0.1))
    stream(d.ingest, X, y, passes=4)
    status_when(d, lambda st: st["samples_trained"] > 3 * 1400, "training")
    with open(os.path.join(d.state_dir, "eval-history.jsonl")) as f:
        n_records = sum(1 for _ in f)
    assert n_records >= 8
    out = tmp_path / "curves.png"
    r = subprocess.run([sys.executable, "-m", "learnd", "report", "--state-dir", d.state_dir,
                        "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "learnd", "report", "--state-dir", str(empty)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no evaluation history" in r.stderr


def test_freeze_on_patience_and_the_best_model_survive_a_restart(daemons, digits, tmp_path):
    X, y = digits
    X, y = X[:500], y[:500]
    args = settings(hidden="[256,256]", dev_fraction=0.3, test_fraction=0.0, train_dev_fraction=0.0,
                    eval_interval_samples=512, early_stopping_patience=3, early_stopping_metric="loss",
                    early_stopping_action="freeze", lr=0.01)
    state = tmp_path / "state"
    d = daemons(args=args, state_dir=state)
    stream(d.ingest, X, y, passes=40)
    s = status_when(d, lambda st: st["early_stopping"]["frozen"], "frozen by early stopping", timeout=180)
    best_version = s["early_stopping"]["best_version"]
    d.wait_until(lambda: d.metrics()["learnd_frozen_rows_total"] > 0, what="rows refused by the freeze")
    assert d.stop() == 0
    d2 = daemons(name="again", args=args, state_dir=state)
    with Control(d2.control) as c:
        s2 = c.status()
        assert s2["early_stopping"]["frozen"] and s2["early_stopping"]["best_version"] == best_version
        assert c.rollback()["best_version"] == best_version     # the best model came from disk
        assert c.unfreeze() == {"frozen": False}


def test_regression_splits_report_mse_and_mae_and_the_diagnosis_uses_mse(daemons):
    X, y, _ = load("diabetes")
    X, y = X.astype(np.float32), (y - y.mean()) / y.std()
    d = daemons(args=settings(hidden="[32]", dev_fraction=0.15, test_fraction=0.15, train_dev_fraction=0.15,
                              eval_interval_samples=256, bayes_error=0.3, diagnosis_tolerance=0.05))
    stream(d.ingest, X, y, passes=10)
    s = status_when(d, evaluated("train", "train_dev", "dev", "test", samples=9 * 250), "evaluations")
    for split, figures in s["evaluation"].items():
        assert {"loss", "mse", "mae", "rows"} <= set(figures) and "error" not in figures, split
        assert figures["loss"] == pytest.approx(figures["mse"] / 2, rel=1e-5)   # one output: ½ squared error
    diag = s["diagnosis"]
    assert diag["figure"] == "mse"
    assert diag["gaps"]["avoidable_bias"] == pytest.approx(s["evaluation"]["train"]["mse"] - 0.3)
    m = d.metrics()
    assert m["learnd_eval_mse{split=dev}"] == pytest.approx(s["evaluation"]["dev"]["mse"], rel=0.5)
    assert "learnd_eval_error{split=dev}" not in m
