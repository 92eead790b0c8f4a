"""The evaluation building blocks on their own: split hashing, the diagnosis, progressive
validation, early stopping, the latency window and the history file."""
from __future__ import annotations

import json
import math

import msgpack
import numpy as np
import pytest

from learnd.daemon.ingest.splits import DEV, TEST, TRAIN, TRAIN_DEV, SplitAssigner, row_hash_draws, row_keys
from learnd.daemon.serving.latency import LatencyWindow, satisficing
from learnd.daemon.training.checkpoints import unpack_array
from learnd.daemon.training.diagnosis import GAPS, RECIPES, diagnose, why_no_figure
from learnd.daemon.training.early_stopping import EarlyStopping
from learnd.daemon.training.evaluation import RecentWindow, Reservoir
from learnd.daemon.training.history import EvalHistory, read_history
from learnd.daemon.training.progressive import ProgressiveScore, batch_scores
from learnd.engine.metrics import evaluate_outputs


# -- splits ---------------------------------------------------------------------------------
def test_a_resent_row_lands_in_the_same_split_whatever_its_dtype_or_neighbours():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 7))
    a = SplitAssigner()
    codes = a.assign(x.astype(np.float32), "auto")
    again = a.assign(x.astype(np.float32)[::-1].copy(), "auto")[::-1]
    assert np.array_equal(codes, again)
    # the same values sent as float64 and cast to the model's float32 hash alike
    assert np.array_equal(codes, a.assign(x.astype(np.float32).astype(np.float64).astype(np.float32), "auto"))
    # -0.0 and 0.0 are the same value
    z = np.zeros((1, 3), dtype=np.float32)
    assert np.array_equal(row_hash_draws(z), row_hash_draws(-z))


def _reference_draws(x):
    """The split hash written out in plain Python integers, one row at a time."""
    mask = (1 << 64) - 1

    def mix(h):
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        return h ^ (h >> 31)

    words = np.ascontiguousarray(x + 0.0).view(np.uint32 if x.dtype == np.float32 else np.uint64)
    out = []
    for row in words:
        h = 0x9E3779B97F4A7C15 ^ len(row)
        for word in row.tolist():
            h = mix(h ^ word)
        out.append(((h >> 11) / 2.0 ** 53, (mix(h ^ 0x5851F42D4C957F2D) >> 11) / 2.0 ** 53))
    return np.array(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_split_hash_matches_its_plain_definition(dtype):
    # Which rows are held out in a running deployment depends on this exact function:
    # a faster implementation must give the same draws.
    x = np.random.default_rng(3).standard_normal((37, 11)).astype(dtype)
    assert np.array_equal(row_hash_draws(x), _reference_draws(x))


def test_auto_fractions_follow_the_configuration():
    x = np.random.default_rng(1).standard_normal((40_000, 5)).astype(np.float32)
    codes = SplitAssigner((0.8, 0.1, 0.1), train_dev_fraction=0.05).assign(x, "auto")
    share = np.bincount(codes, minlength=4) / len(codes)
    # train rows are 80%; 5% of them go to train-dev
    assert share[TRAIN] == pytest.approx(0.8 * 0.95, abs=0.01)
    assert share[TRAIN_DEV] == pytest.approx(0.8 * 0.05, abs=0.005)
    assert share[DEV] == pytest.approx(0.1, abs=0.01) and share[TEST] == pytest.approx(0.1, abs=0.01)
    default = np.bincount(SplitAssigner().assign(x, "auto"), minlength=4) / len(codes)
    assert default[DEV] == pytest.approx(0.02, abs=0.004) and default[TEST] == pytest.approx(0.02, abs=0.004)


def test_explicit_splits():
    x = np.random.default_rng(2).standard_normal((2000, 3))
    a = SplitAssigner(train_dev_fraction=0.1)
    assert set(a.assign(x, "dev")) == {DEV} and set(a.assign(x, "test")) == {TEST}
    assert set(a.assign(x, "train")) == {TRAIN}             # every row sent as train trains
    assert set(a.assign(x, "train_dev")) == {TRAIN_DEV}     # a producer's own train-dev set


def test_row_keys_name_a_row_by_its_values():
    x = np.random.default_rng(4).standard_normal((3000, 6)).astype(np.float32)
    keys = row_keys(x)
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == len(x)
    assert np.array_equal(row_keys(x[::-1].copy()), keys[::-1])          # its neighbours do not matter
    assert np.array_equal(row_keys(x.astype(np.float64).astype(np.float32)), keys)
    z = np.zeros((1, 6), dtype=np.float32)
    assert row_keys(z) == row_keys(-z)
    # independent of the split draws: the keys of dev rows are spread like any others'
    dev = SplitAssigner().assign(x, "auto") == DEV
    assert 0.25 < (keys[dev] / 2.0 ** 64).mean() < 0.75


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError):
        SplitAssigner((0.5, 0.3, 0.3))
    with pytest.raises(ValueError):
        SplitAssigner(train_dev_fraction=1.0)


# -- diagnosis ------------------------------------------------------------------------------
@pytest.mark.parametrize("errors, verdict", [
    ({"train": 0.20, "train_dev": 0.21, "dev": 0.22, "test": 0.22}, "avoidable_bias"),
    ({"train": 0.01, "train_dev": 0.15, "dev": 0.16, "test": 0.16}, "variance"),
    ({"train": 0.01, "train_dev": 0.02, "dev": 0.20, "test": 0.21}, "data_mismatch"),
    ({"train": 0.01, "train_dev": 0.02, "dev": 0.03, "test": 0.12}, "dev_overfitting"),
    ({"train": 0.01, "train_dev": 0.02, "dev": 0.03, "test": 0.03}, "ok"),
    ({"dev": 0.3}, "unknown"),
    ({"train": 0.01, "dev": 0.90}, "variance_or_mismatch"),               # no train-dev set
    ({"train": 0.01, "dev": 0.90, "test": 0.91}, "variance_or_mismatch"),
    ({"train": 0.30, "dev": 0.31}, "avoidable_bias"),
])
def test_the_verdict_is_the_largest_gap_above_the_tolerance(errors, verdict):
    d = diagnose({k: {"error": v} for k, v in errors.items()}, bayes_error=0.0, tolerance=0.02)
    assert d["verdict"] == verdict and d["recipe"] == RECIPES[verdict]


def test_gaps_use_the_bayes_proxy_and_say_none_when_a_split_is_missing():
    d = diagnose({"train": {"error": 0.12}, "dev": {"error": 0.15}}, bayes_error=0.1, tolerance=0.05)
    assert d["gaps"]["avoidable_bias"] == pytest.approx(0.02)
    assert d["gaps"]["variance"] is None and d["gaps"]["data_mismatch"] is None
    assert d["gaps"]["dev_overfitting"] is None and d["verdict"] == "ok"
    assert d["gaps"]["variance_or_mismatch"] == pytest.approx(0.03)
    # every gap without a value is named, with the split it lacks
    assert set(d["unmeasured"]) == {"variance", "data_mismatch", "dev_overfitting"}
    assert d["unmeasured"]["dev_overfitting"] == "no test figure"
    reg = diagnose({"train": {"mse": 4.0, "loss": 2.0}}, bayes_error=1.0, tolerance=0.5)
    assert reg["figure"] == "mse" and reg["gaps"]["avoidable_bias"] == 3.0
    assert reg["verdict"] == "avoidable_bias"


def test_a_gap_within_its_noise_does_not_count_and_the_same_gap_on_more_rows_does():
    # 150 dev rows at 3% error, 150 test rows at 6%: a 0.03 gap above the tolerance, but
    # under 2 standard errors (about 0.024 each) -- the verdict stays ok.
    few = {"train": {"error": 0.01, "rows": 2000}, "train_dev": {"error": 0.02, "rows": 150},
           "dev": {"error": 0.03, "rows": 150}, "test": {"error": 0.06, "rows": 150}}
    d = diagnose(few, bayes_error=0.0, tolerance=0.02)
    assert d["gaps"]["dev_overfitting"] == pytest.approx(0.03)
    p_dev, p_test = (0.03 * 150 + 1) / 152, (0.06 * 150 + 1) / 152
    assert d["gap_errors"]["dev_overfitting"] == pytest.approx(
        np.sqrt(p_dev * (1 - p_dev) / 150 + p_test * (1 - p_test) / 150))
    assert d["verdict"] == "ok"
    many = {k: {**v, "rows": 20 * v["rows"]} for k, v in few.items()}
    assert diagnose(many, bayes_error=0.0, tolerance=0.02)["verdict"] == "dev_overfitting"


def test_a_split_with_no_errors_still_has_a_standard_error():
    d = diagnose({"train": {"error": 0.0, "rows": 10}, "train_dev": {"error": 0.3, "rows": 10}},
                 bayes_error=0.0, tolerance=0.02)
    assert d["gap_errors"]["avoidable_bias"] > 0.05      # 0 errors in 10 rows is not an exact 0
    assert d["verdict"] == "ok"                          # 3 of 10 against 0 of 10 is not yet variance
    reg = diagnose({"train": {"mse": 4.0, "rows": 10}}, bayes_error=1.0, tolerance=0.5)
    assert reg["gap_errors"]["avoidable_bias"] is None and reg["verdict"] == "avoidable_bias"


def test_a_dev_error_far_above_train_is_never_ok():
    # The mismatch a user builds as README.md says: train rows sent as train, the target
    # rows as dev, no train-dev set: the gap is there, and the verdict says so.
    results = {"train": {"error": 0.02, "rows": 1700}, "dev": {"error": 0.9, "rows": 300}}
    why = {"train_dev": "train_dev split empty: rows are sent with split train; send training rows "
                        "with split auto so a train-dev set is kept, or send train_dev rows",
           "test": "test split empty: no rows sent with split test or auto yet"}
    d = diagnose(results, bayes_error=0.05, tolerance=0.02, task="multiclass", no_figure=why)
    assert d["verdict"] == "variance_or_mismatch" and d["recipe"] == RECIPES["variance_or_mismatch"]
    assert "split auto" in d["recipe"] and "train_dev rows" in d["recipe"]
    assert d["gaps"]["variance_or_mismatch"] == pytest.approx(0.88)
    assert d["unmeasured"]["variance"] == why["train_dev"] == d["unmeasured"]["data_mismatch"]
    assert d["unmeasured"]["dev_overfitting"] == why["test"]
    # a handful of train-dev rows tells neither part apart: still not ok
    few = {**results, "train_dev": {"error": 0.5, "rows": 4}}
    d = diagnose(few, bayes_error=0.05, tolerance=0.02, task="multiclass")
    assert d["verdict"] == "variance_or_mismatch" and "variance" not in d["unmeasured"]
    # with enough train-dev rows the part that counts is the verdict, the sum is not
    enough = {**results, "train_dev": {"error": 0.03, "rows": 400}}
    assert diagnose(enough, bayes_error=0.05, tolerance=0.02)["verdict"] == "data_mismatch"
    enough["train_dev"]["error"] = 0.88
    assert diagnose(enough, bayes_error=0.05, tolerance=0.02)["verdict"] == "variance"


def test_the_figure_is_named_by_the_task_before_any_evaluation():
    assert diagnose({}, task="multiclass")["figure"] == "error"
    assert diagnose({}, task="binary")["figure"] == "error"
    assert diagnose({}, task="regression")["figure"] == "mse"
    d = diagnose({})
    assert d["figure"] is None and d["verdict"] == "unknown"
    assert all(d["gaps"][g] is None for g in GAPS) and set(d["unmeasured"]) == set(GAPS)


FRACTIONS = {"dev_fraction": 0.02, "test_fraction": 0.02, "train_dev_fraction": 0.02}


def test_why_a_split_has_no_figure():
    def why(split, held=0, frozen=False, fractions=FRACTIONS, **sent):
        return why_no_figure(split, held, sent, fractions, frozen, eval_interval_s=5.0)

    assert why("dev", held=36) == "dev split holds 36 distinct rows and has not been evaluated yet (it runs every 5 s)"
    assert why("train", held=2000).startswith("train split holds the last 2000 trained rows and has not")
    assert why("train_dev", train=1797) == ("train_dev split empty: rows are sent with split train; send "
                                            "training rows with split auto so a train-dev set is kept, or "
                                            "send train_dev rows")
    assert "none of the 40 rows sent with split auto" in why("train_dev", auto=40)
    assert "train_dev_fraction is 0" in why("train_dev", auto=40, fractions={**FRACTIONS,
                                                                             "train_dev_fraction": 0.0})
    assert "no rows sent with split test or auto" in why("test", train=100, dev=50)
    assert "dev_fraction is 0" in why("dev", auto=500, fractions={**FRACTIONS, "dev_fraction": 0.0})
    assert "no training rows yet" in why("train")
    assert "training is frozen" in why("train", auto=500, frozen=True)
    assert "no training step yet" in why("train", train=10)


# -- metrics against scikit-learn's definitions, computed here by hand ---------------------
def test_precision_recall_f1_by_hand():
    # binary: 3 TP, 1 FP, 2 FN, 4 TN
    p = np.array([.9, .8, .7, .6, .4, .3, .2, .1, .1, .2])[:, None]
    y = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=float)[:, None]
    f = evaluate_outputs("binary", p, y)
    assert f["precision"] == pytest.approx(3 / 4) and f["recall"] == pytest.approx(3 / 5)
    assert f["f1"] == pytest.approx(2 * .75 * .6 / 1.35) and f["error"] == pytest.approx(0.3)
    # multiclass macro over classes 0..2: class 2 never predicted -> precision 0
    P = np.eye(3)[[0, 0, 1, 1, 1, 0]]
    Y = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    f = evaluate_outputs("multiclass", P * 0.8 + 0.2 / 3, Y)
    prec = [2 / 3, 2 / 3, 0.0]
    rec = [1.0, 2 / 3, 0.0]
    f1 = [2 * p_ * r / (p_ + r) if p_ + r else 0.0 for p_, r in zip(prec, rec)]
    assert f["precision"] == pytest.approx(np.mean(prec)) and f["recall"] == pytest.approx(np.mean(rec))
    assert f["f1"] == pytest.approx(np.mean(f1))
    w = np.array([1, 1, 1, 1, 4, 1.0])
    assert evaluate_outputs("multiclass", P, Y, w)["weighted_error"] == pytest.approx(5 / 9)


# -- progressive validation ---------------------------------------------------------------------
def test_progressive_figures_are_the_means_of_the_batches():
    score = ProgressiveScore("multiclass", window=10**9)
    rng = np.random.default_rng(3)
    losses, wrong, rows = 0.0, 0, 0
    for m in (5, 17, 64):
        P = rng.dirichlet(np.ones(4), m)
        Y = np.eye(4)[rng.integers(0, 4, m)]
        f = evaluate_outputs("multiclass", P, Y)
        losses += f["loss"] * m
        wrong += round(f["error"] * m)
        rows += m
        score.add(P, Y)
    fig = score.figures()
    assert fig["rows"] == rows and fig["loss"] == pytest.approx(losses / rows)
    assert fig["error"] == pytest.approx(wrong / rows)
    # a huge window: the EWMA weighs rows alike, so it equals the all-time figure
    assert fig["window_error"] == pytest.approx(fig["error"], rel=1e-6)


def test_progressive_window_follows_drift_and_multilabel_skips_missing_labels():
    score = ProgressiveScore("binary", window=100)
    right = (np.full((50, 1), 0.9), np.ones((50, 1)))
    wrong = (np.full((50, 1), 0.9), np.zeros((50, 1)))
    for _ in range(20):
        score.add(*right)
    for _ in range(10):
        score.add(*wrong)
    fig = score.figures()
    assert fig["error"] == pytest.approx(1 / 3) and fig["window_error"] > 0.99
    P = np.array([[0.9, 0.1], [0.2, 0.7]])
    Y = np.array([[1.0, np.nan], [np.nan, 0.0]])
    loss, errors, count = batch_scores("multilabel", P, Y)
    assert count == 2 and errors == 1 and loss == pytest.approx(-math.log(0.9) - math.log(0.3))


# -- early stopping -------------------------------------------------------------------------------
def test_patience_counts_evaluations_without_improvement():
    es = EarlyStopping(patience=3, min_delta=0.01)
    assert es.observe(0.5, 10, 640) == "improved"
    assert es.observe(0.495, 20, 1280) == "waiting"     # within min_delta: not better
    assert es.observe(0.6, 30, 1920) == "waiting"
    assert es.observe(0.7, 40, 2560) == "stopped"
    assert es.observe(0.7, 50, 3200) == "stopped_already"
    assert es.best == 0.5 and es.best_version == 10
    assert es.observe(0.3, 60, 3840) == "improved" and not es.stopped
    state = es.to_state()
    again = EarlyStopping(3)
    again.load_state(json.loads(json.dumps(state)))
    assert again.figures() == es.figures()
    assert EarlyStopping(0).observe(0.5, 1, 1) == "improved"
    off = EarlyStopping(0)
    assert all(off.observe(1.0 + i, i, i) != "stopped" for i in range(10))


# -- satisficing latency and the history file ------------------------------------------------------
def test_latency_window_p99_and_bound():
    lw = LatencyWindow(size=1000)
    none = satisficing(lw, 0.01)
    assert none["met"] is None and none["requests"] == 0 and math.isnan(none["p99_seconds"])
    for i in range(3000):                 # only the last 1000 count: 0.002..0.003 s
        lw.record(1.0 if i < 2000 else 0.002 + (i - 2000) * 1e-6)
    assert lw.quantile(0.99) == pytest.approx(0.002 + 989e-6, abs=2e-6)
    assert satisficing(lw, 0.01)["met"] is True and satisficing(lw, 0.001)["met"] is False
    assert satisficing(lw, 0.01)["requests"] == 1000


def test_history_is_bounded_and_survives_a_torn_line(tmp_path):
    h = EvalHistory(str(tmp_path), max_bytes=4000)
    for i in range(200):
        h.append({"samples": i, "splits": {"dev": {"error": float("nan") if i == 3 else 0.1}}})
    with open(h.path, "a") as f:
        f.write('{"samples": 99')            # a crash mid-line
    records = read_history(str(tmp_path))
    assert records[-1]["samples"] == 199 and len(records) < 200
    assert [r["samples"] for r in records] == list(range(records[0]["samples"], 200))


def test_reservoirs_keep_weights_and_a_uniform_sample():
    r = Reservoir(100, 2, 1, np.float32)
    for k in range(100):
        x = np.stack([np.full(10, k), np.arange(10)], axis=1).astype(np.float32)
        r.offer(x, x[:, :1], np.full(10, 2.0))
    x, Y, w = r.rows()
    assert len(x) == 100 and np.all(w == 2.0)
    assert 30 < x[:, 0].mean() < 70          # rows from the whole history, not the first batches
    win = RecentWindow(5, 1, 1, np.float32)
    win.offer(np.arange(7, dtype=np.float32)[:, None], np.zeros((7, 1), np.float32))
    assert sorted(win.rows()[0][:, 0]) == [2, 3, 4, 5, 6] and np.all(win.rows()[2] == 1.0)


def test_a_resent_row_is_held_once():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((36, 4)).astype(np.float32)
    r = Reservoir(2000, 4, 1, np.float32)
    for p in range(8):                                   # eight passes, as `learnd replay --passes 8`
        for i in range(0, 36, 5):
            r.offer(x[i:i + 5], np.full((len(x[i:i + 5]), 1), p, np.float32))
    held, Y, _ = r.rows()
    assert r.filled == 36 and r.offered == 8 * 36
    assert {tuple(row) for row in held} == {tuple(row) for row in x}
    assert np.all(Y == 7)                                # the labels of the last copy
    r.offer(np.concatenate([x[:3], x[:3]]), np.array([[1], [2], [3], [4], [5], [6]], np.float32))
    assert r.filled == 36 and sorted(Y[np.isin(row_keys(held), row_keys(x[:3]))][:, 0]) == [4, 5, 6]


def test_a_full_reservoir_is_the_same_uniform_sample_of_distinct_rows_whatever_the_resends():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5000, 3)).astype(np.float32)
    once, often = Reservoir(300, 3, 1, np.float32), Reservoir(300, 3, 1, np.float32)
    once.offer(x, x[:, :1])
    for _ in range(3):                                   # resent, in other orders and batch sizes
        order = rng.permutation(len(x))
        for i in range(0, len(x), 97):
            often.offer(x[order[i:i + 97]], x[order[i:i + 97], :1])
    a, b = once.rows()[0], often.rows()[0]
    assert len(a) == len(b) == 300 and len(np.unique(b, axis=0)) == 300
    assert {tuple(row) for row in a} == {tuple(row) for row in b}
    assert abs(a[:, 0].mean() - x[:, 0].mean()) < 0.2     # a sample of the whole, not of one end


def test_a_reservoir_saved_with_repeated_rows_loads_each_once():
    # Reservoirs written before rows had keys held a resent row once per copy.
    x = np.random.default_rng(7).standard_normal((50, 2)).astype(np.float32)
    old = Reservoir(200, 2, 1, np.float32)
    old.x[:150], old.Y[:150], old.filled, old.offered = np.tile(x, (3, 1)), 1.0, 150, 150
    state = msgpack.unpackb(msgpack.packb(old.to_state()))       # as a checkpoint stores it
    assert unpack_array(state["x"]).shape == (150, 2)
    r = Reservoir(200, 2, 1, np.float32)
    r.load_state(state)
    assert r.filled == 50 and {tuple(row) for row in r.rows()[0]} == {tuple(row) for row in x}
    r.offer(x[:10], np.zeros((10, 1), np.float32))       # and goes on holding each once
    assert r.filled == 50


def test_the_train_window_counts_each_recent_row_once():
    win = RecentWindow(6, 1, 1, np.float32)
    x = np.array([1, 2, 1, 3, 1, 2, 4, 1], np.float32)[:, None]
    win.offer(x, np.arange(8, dtype=np.float32)[:, None])
    dx, dY, dw = win.distinct_rows()                     # the window holds 1, 3, 1, 2, 4, 1
    assert sorted(dx[:, 0]) == [1, 2, 3, 4] and len(dw) == 4
    assert dict(zip(dx[:, 0], dY[:, 0]))[1.0] == 7       # the most recent copy
