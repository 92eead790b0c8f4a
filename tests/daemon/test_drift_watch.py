"""The trainer's drift parts on their own: row errors against a loop, the detector on a
stream that changes, the learning-rate boost and its end, a state that resumes."""
from __future__ import annotations

import numpy as np
import pytest

from learnd.daemon.config import Config
from learnd.daemon.errors import ConfigError
from learnd.daemon.training.drift import DriftWatch
from learnd.engine.drift import row_errors
from learnd.engine import Model


def test_row_errors_are_the_rows_progressive_errors():
    rng = np.random.default_rng(0)
    P = rng.random((50, 3))
    Y = np.eye(3)[rng.integers(0, 3, 50)]
    ref = [float(np.argmax(P[i]) != np.argmax(Y[i])) for i in range(50)]
    assert row_errors("multiclass", P, Y).tolist() == ref
    Yl = (rng.random((50, 3)) < 0.5).astype(float)
    Yl[3] = np.nan                      # a row with no label is left out
    Yl[4, 1] = np.nan
    got = row_errors("multilabel", P, Yl)
    ref = []
    for i in range(50):
        lab = ~np.isnan(Yl[i])
        if lab.any():
            ref.append(float(((P[i] >= 0.5) != (Yl[i] >= 0.5))[lab].mean()))
    np.testing.assert_allclose(got, ref)
    assert row_errors("regression", P, Y) is None


def test_a_change_in_the_error_rate_is_found_at_its_stream_position(seed):
    rng = np.random.default_rng(seed)
    watch = DriftWatch(Config())
    found = []
    errors = (rng.random(40_000) < np.where(np.arange(40_000) < 20_000, 0.1, 0.4)).astype(float)
    for k in range(0, 40_000, 64):
        found += watch.observe(errors[k:k + 64])
    assert len(found) == 1 and 20_000 < found[0] < 20_600
    assert watch.rows == 40_000


def test_boost_multiplies_the_rate_then_returns_it_and_never_compounds():
    cfg = Config(on_drift="boost_lr", drift_boost=10.0, drift_boost_rows=1000)
    watch = DriftWatch(cfg)
    model = Model(hidden=(4,), task="binary", n_outputs=1, input_dim=2, lr=0.01)
    watch.start_boost({0: model}, samples_trained=5000)
    assert model.learning_rate == pytest.approx(0.1)
    watch.apply_boost({0: model}, 5500)
    assert model.learning_rate == pytest.approx(0.01 * (1 + 9 * 0.5))
    watch.start_boost({0: model}, 5500)            # a second drift restarts from the base
    assert model.learning_rate == pytest.approx(0.1)
    watch.apply_boost({0: model}, 6500)
    assert model.learning_rate == pytest.approx(0.01) and watch.boost is None


def test_reset_optimizer_starts_adam_afresh():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((64, 3)).astype(np.float32), rng.integers(0, 2, 64)
    model = Model(hidden=(8,), task="binary", n_outputs=1, seed=0)
    for _ in range(5):
        model.partial_fit(X, y)
    model.reset_optimizer()
    assert model.steps == 0
    assert all(not v.any() for v in model.optimizer.state.values())
    # Adam's first step moves every weight with a gradient by lr * g / (|g| + eps): about lr.
    before = model.params["W1"].copy()
    model.partial_fit(X, y)
    moved = np.abs(model.params["W1"] - before)
    assert model.steps == 1
    np.testing.assert_allclose(moved[moved > 1e-6], model.learning_rate, rtol=1e-2)


def test_the_detector_resumes_from_its_state(seed):
    rng = np.random.default_rng(seed)
    errors = (rng.random(40_000) < np.repeat([0.1, 0.45, 0.15, 0.5], 10_000)).astype(float)
    whole, first = DriftWatch(Config()), DriftWatch(Config())
    expected = whole.observe(errors)
    got = first.observe(errors[:12_000])
    second = DriftWatch(Config())
    second.load_state(first.to_state())
    got += second.observe(errors[12_000:])
    assert got == expected and len(expected) >= 2 and second.falls == whole.falls >= 1


@pytest.mark.parametrize("kv", [{"on_drift": "panic"}, {"drift_detector": "ddm"}, {"drift_delta": 0.0},
                                {"drift_boost": 0.5}])
def test_bad_drift_settings_are_refused(kv):
    with pytest.raises(ConfigError):
        Config(**kv).validate()


def test_new_challengers_need_a_population():
    with pytest.raises(ConfigError):
        Config(on_drift="new_challengers").validate()
    Config(on_drift="new_challengers", search_members=4).validate()
