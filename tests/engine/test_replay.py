"""Replay: rehearse is partial_fit's step without the new-row bookkeeping, the ring keeps
the newest rows in order, draws come only from it, its state resumes the same draws,
the hot path allocates no arrays, and one pass with replay learns more than without."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from learnd.engine import EngineError, Model, Replay
from learnd.engine.datasets import load

from .test_hot_path import LIMIT, _peak_growth


def _batches(rng, n, m=16, d=5):
    for _ in range(n):
        X = rng.standard_normal((m, d)).astype(np.float32)
        yield X, (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)


def test_rehearse_is_the_same_step_as_partial_fit_but_counts_no_new_rows(rng):
    """Without input normalization the two steps are the same arithmetic; rehearse leaves
    samples_seen (the schedule's clock) and the normalizer's statistics alone."""
    batches = list(_batches(rng, 4))
    a = Model(hidden=(8,), task="binary", normalize_inputs=False, seed=3)
    b = Model(hidden=(8,), task="binary", normalize_inputs=False, seed=3)
    a.partial_fit(*batches[0])
    b.partial_fit(*batches[0])
    for X, y in batches[1:]:
        la, lb = a.partial_fit(X, y), b.rehearse(X, y)
        assert la == lb
    for name, value in a.params.items():
        assert_array_equal(value, b.params[name], err_msg=name)
    assert a.steps == b.steps == 4
    assert a.samples_seen == 64 and b.samples_seen == 16

    c = Model(hidden=(8,), task="binary", seed=3)
    c.partial_fit(*batches[0])
    before = c.normalizer.get_state()
    c.rehearse(*batches[1])
    after = c.normalizer.get_state()
    assert after["count"] == before["count"] == 16
    assert_array_equal(after["mean"], before["mean"])


def test_rehearse_before_any_row_is_refused():
    with pytest.raises(EngineError, match="nothing to rehearse"):
        Model(task="binary").rehearse(np.zeros((4, 3)), np.zeros(4))


def test_the_ring_keeps_the_newest_rows_in_arrival_order():
    model = Model(hidden=(4,), task="regression", input_dim=1)
    replay = Replay(model, rows=10, ratio=0)
    for start in range(0, 23, 3):              # rows 0..23 in batches of 3: the ring wraps
        x = np.arange(start, start + 3, dtype=np.float32).reshape(3, 1)
        replay.add(x, x.copy())
    state = replay.get_state()
    assert_array_equal(state["x"][:, 0], np.arange(14, 24))
    assert replay.filled == 10 and replay.added == 24
    replay.add(np.arange(100, 125, dtype=np.float32).reshape(25, 1), np.zeros((25, 1), np.float32))
    assert_array_equal(replay.get_state()["x"][:, 0], np.arange(115, 125))   # larger than the ring


def test_steps_draw_only_rows_of_the_ring(rng):
    model = Model(hidden=(4,), task="regression", input_dim=1)
    model.partial_fit(np.zeros((2, 1)), np.zeros(2))
    replay = Replay(model, rows=8, ratio=0, batch_size=32, recency=None)   # uniform
    replay.add(np.arange(0, 20, dtype=np.float32).reshape(20, 1), np.zeros((20, 1), np.float32))
    seen = []
    model.rehearse_checked = lambda X, Y, w: seen.append(X[:, 0].copy()) or 0.0
    for _ in range(20):
        replay.step()
    drawn = np.concatenate(seen)
    assert set(drawn.tolist()) == set(range(12, 20))      # every ring row, nothing older
    assert replay.steps == 20
    # a step takes at most the rows the ring holds; uniform: each of the 8 rows gets
    # about 1/8 of the 160 draws (20 ± 4.2)
    assert len(drawn) == 20 * 8
    counts = np.bincount(drawn.astype(int) - 12, minlength=8)
    assert counts.min() >= 6 and counts.max() <= 40


def test_recency_weights_the_draws_to_the_newest_rows():
    """Ages follow an exponential of mean `recency`, truncated to the window: mean about
    the recency when the window is much longer, and never a row outside the window."""
    model = Model(hidden=(4,), task="regression", input_dim=1)
    model.partial_fit(np.zeros((2, 1)), np.zeros(2))
    ages = {}
    for rows, recency in ((4096, 256.0), (300, 1000.0)):
        replay = Replay(model, rows=rows, ratio=0, batch_size=256, recency=recency, seed=4)
        replay.add(np.arange(5000, dtype=np.float32).reshape(-1, 1), np.zeros((5000, 1), np.float32))
        seen = []
        model.rehearse_checked = lambda X, Y, w: seen.append(X[:, 0].copy()) or 0.0
        for _ in range(200):
            replay.step()
        ages[rows] = 4999 - np.concatenate(seen)
    assert ages[4096].min() >= 0 and ages[4096].max() < 4096
    assert 240 < ages[4096].mean() < 272                  # 51,200 draws of mean 256
    assert np.mean(ages[4096] < 256) == pytest.approx(1 - np.exp(-1), abs=0.01)
    # a recency far longer than the window: close to uniform over it, never past it
    assert ages[300].max() < 300 and 130 < ages[300].mean() < 150


def test_learn_takes_one_new_step_and_ratio_replay_steps(rng):
    model = Model(hidden=(8,), task="binary", seed=1)
    replay = Replay(model, rows=64, ratio=3)
    for X, y in _batches(rng, 5):
        replay.learn(X, y)
    assert model.steps == 5 * 4 and replay.steps == 15
    assert model.samples_seen == 80 and replay.filled == 64


def test_a_replay_resumes_from_its_state_with_the_same_draws(rng):
    batches = list(_batches(rng, 6))
    a = Model(hidden=(8,), task="binary", seed=1)
    ra = Replay(a, rows=40, ratio=2, seed=9)
    for X, y in batches[:3]:
        ra.learn(X, y)
    b = Model.from_state(a.get_state())
    rb = Replay(b, rows=40, ratio=2, seed=0)
    rb.set_state(ra.get_state())
    for X, y in batches[3:]:
        assert ra.learn(X, y) == rb.learn(X, y)
    for name, value in a.params.items():
        assert_array_equal(value, b.params[name], err_msg=name)
    assert rb.steps == ra.steps == 12


def _ages_drawn(replay, model, steps=50):
    """Ages (0 = newest) of the rows `steps` replay steps draw; rows hold their arrival
    index in column 0."""
    seen = []
    model.rehearse_checked = lambda X, Y, w: seen.append(X[:, 0].copy()) or 0.0
    for _ in range(steps):
        replay.step()
    del model.rehearse_checked
    return replay.added - 1 - np.concatenate(seen)


def _indexed(start, m, d=3):
    """m rows whose first column is their arrival index."""
    x = np.zeros((m, d), dtype=np.float32)
    x[:, 0] = np.arange(start, start + m)
    return x


def test_forget_keeps_the_newest_rows_and_rows_added_later():
    model = Model(hidden=(4,), task="binary", input_dim=3)
    model.partial_fit(np.zeros((2, 3)), np.array([0, 1]))
    replay = Replay(model, rows=1000, ratio=0, batch_size=64, recency=None)
    for start in range(0, 640, 64):
        replay.add(_indexed(start, 64), np.zeros((64, 1), np.float32))
    assert replay.window == 640 and _ages_drawn(replay, model).max() > 500
    replay.forget(100)
    assert replay.window == 100
    ages = _ages_drawn(replay, model)
    assert ages.max() < 100 and ages.min() == 0
    replay.add(_indexed(640, 64), np.zeros((64, 1), np.float32))
    assert replay.window == 164 and _ages_drawn(replay, model).max() < 164
    replay.forget(0)                          # never fewer than the last batch's rows
    assert replay.window == 64 and _ages_drawn(replay, model).max() < 64


def _flipping_stream(seed, n=6000, flip=3000, d=4, m=32):
    """Batches of a stream labelled by a hyperplane replaced by another at row `flip`."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    y[flip:] = (X[flip:, 2] - X[flip:, 0] > 0)
    return [(X[a:a + m], y[a:a + m]) for a in range(0, n, m)]


def test_a_rise_of_the_error_cuts_the_window_to_the_new_concept():
    """Learned with `learn`, a sudden change is detected within a few hundred rows and
    replay then draws only rows after it; a stationary stream is never cut."""
    model = Model(hidden=(8,), task="binary", seed=2)
    replay = Replay(model, rows=4096, ratio=2, recency=None, seed=2)
    for i, (X, y) in enumerate(_flipping_stream(0)):
        replay.learn(X, y)
        if replay.cuts:
            break
    cut_at = (i + 1) * 32
    assert replay.cuts == 1 and 3000 < cut_at < 3600
    assert replay.filled == cut_at and replay.window <= cut_at - 3000 + 256     # ADWIN's buckets
    assert replay.window < replay.filled

    steady = Model(hidden=(8,), task="binary", seed=2)
    kept = Replay(steady, rows=4096, ratio=2, recency=None, seed=2)
    for X, y in _flipping_stream(0, flip=6000):
        kept.learn(X, y)
    assert kept.cuts == 0 and kept.window == kept.filled == 4096


def test_the_cut_helps_after_a_sudden_change_and_can_be_turned_off():
    """Uniform replay over a long window holds on to the old concept after the flip;
    with the cut the model recovers sooner.  Mean over 3 seeds of the error over the
    1,500 rows after the change."""
    def error_after_change(forget, seed):
        model = Model(hidden=(8,), task="binary", seed=seed)
        replay = Replay(model, rows=4096, ratio=4, recency=None, seed=seed, forget_on_drift=forget)
        wrong = []
        for i, (X, y) in enumerate(_flipping_stream(seed)):
            if 3000 <= i * 32 < 4500:
                wrong.append(model.predict(X).reshape(-1) != y)
            replay.learn(X, y)
        assert replay.cuts == (1 if forget else 0)
        return np.concatenate(wrong).mean()

    with_cut = np.mean([error_after_change(True, s) for s in range(3)])
    without = np.mean([error_after_change(False, s) for s in range(3)])
    assert with_cut < without - 0.05, (with_cut, without)


def test_a_regression_models_errors_are_not_watched():
    model = Model(hidden=(4,), task="regression", input_dim=1)
    replay = Replay(model, rows=100, ratio=0)
    assert replay.observe(np.r_[np.zeros(500), np.full(500, 100.0)]) is False
    assert replay.cuts == 0 and replay.detector.seen == 0


def test_the_window_and_its_detector_resume_from_the_state():
    batches = _flipping_stream(1)
    a = Model(hidden=(8,), task="binary", seed=1)
    ra = Replay(a, rows=4096, ratio=1, recency=None, seed=3)
    for X, y in batches[:100]:              # the flip is at batch 94
        ra.learn(X, y)
    b = Model.from_state(a.get_state())
    rb = Replay(b, rows=4096, ratio=1, recency=None, seed=0)
    rb.set_state(ra.get_state())
    assert (rb.window, rb.cuts, rb.window_start) == (ra.window, ra.cuts, ra.window_start)
    for X, y in batches[100:]:
        assert ra.learn(X, y) == rb.learn(X, y)
    assert (rb.window, rb.cuts, rb.detector.width) == (ra.window, ra.cuts, ra.detector.width)
    assert ra.cuts >= 1


def test_bad_settings_are_refused():
    model = Model(task="binary")
    for kwargs, match in (({"rows": 1}, "rows"), ({"ratio": -1}, "ratio"), ({"batch_size": 1}, "batch_size"),
                          ({"recency": 0}, "recency")):
        with pytest.raises(EngineError, match=match):
            Replay(model, **kwargs)


def test_a_replay_step_allocates_no_arrays(rng):
    X = rng.standard_normal((128, 100)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    model = Model(hidden=(64, 32), task="multiclass", n_outputs=10, batch_norm=True, keep_prob=0.8)
    replay = Replay(model, rows=1024, ratio=0, batch_size=128, recency=256)
    for _ in range(8):
        model.partial_fit(X, y)
        replay.remember(X, y)
    assert _peak_growth(replay.step) < LIMIT


def prequential(stream, learn, predict, batch=16):
    X, y = stream
    hits = []
    for start in range(0, len(X), batch):
        Xb, yb = X[start:start + batch], y[start:start + batch]
        if start:
            hits.append(predict(Xb) == yb)
        learn(Xb, yb)
    return np.concatenate(hits).mean()


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_one_pass_with_replay_learns_more_than_without(name):
    X, y, _ = load(name)
    task, K = ("multiclass", 10) if name == "digits" else ("binary", 1)
    scores = {}
    for ratio in (0, 16):
        model = Model(hidden=(64, 64), task=task, n_outputs=K, seed=0)
        replay = Replay(model, ratio=ratio)          # the defaults: 4096 rows, recency 256
        predict = (lambda Xb, m=model: m.predict(Xb)) if task == "multiclass" else \
                  (lambda Xb, m=model: m.predict(Xb)[:, 0])
        scores[ratio] = prequential((X, y), replay.learn, predict)
    print(f"{name} prequential accuracy, one pass in batches of 16: no replay {scores[0]:.4f}, "
          f"replay ratio 16 {scores[16]:.4f}")
    assert scores[16] >= scores[0] + 0.01
