"""Learning-rate schedules: DESIGN's formulas over epoch = samples_seen // epoch_size, the
rate a step actually applies, and setting the rate by hand."""
import math

import numpy as np
import pytest

from learnd.engine import EngineError, Model
from learnd.engine.schedules import SCHEDULES

A0 = 0.1


def expected_rate(name, epoch, decay_rate, step_epochs=1, base=A0):
    return {
        "constant": lambda: base,
        "inverse_time": lambda: base / (1 + decay_rate * epoch),
        "exponential": lambda: base * decay_rate ** epoch,
        "inverse_sqrt": lambda: base * decay_rate / math.sqrt(epoch + 1),
        "staircase": lambda: base * decay_rate ** (epoch // step_epochs),
    }[name]()


def test_every_registered_schedule_has_a_reference_here():
    assert set(SCHEDULES) == {"constant", "inverse_time", "exponential", "inverse_sqrt", "staircase"}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_formula(name):
    schedule = SCHEDULES[name](A0, 0.5, 3)
    for epoch in range(10):
        assert schedule.get(epoch) == pytest.approx(expected_rate(name, epoch, 0.5, 3), rel=1e-15)


def applied_rate(model, X, y):
    """The rate the step on (X, y) applied: -Δθ / g, with plain sgd."""
    before = model.network.flat_params.copy() if model.network is not None else None
    model.partial_fit(X, y)
    g = model.network.flat_grads
    big = np.abs(g) > 1e-3
    rates = -(model.network.flat_params - before)[big] / g[big]
    assert np.allclose(rates, rates[0], rtol=1e-9)
    return rates[0]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_model_applies_the_scheduled_rate_by_epoch_of_samples_seen(rng, name):
    model = Model(hidden=(3,), task="regression", optimizer="sgd", lr=A0, schedule=name,
                  decay_rate=0.5, step_epochs=2, epoch_size=10, dtype="float64", input_dim=2,
                  batch_norm=False, seed=1)
    for step in range(12):                      # 4 rows per batch: epochs 0,0,0,1,1,2,...
        epoch = (4 * step) // 10
        assert model.epoch == epoch and model.samples_seen == 4 * step
        expected = expected_rate(name, epoch, 0.5, 2)
        assert model.learning_rate == pytest.approx(expected, rel=1e-15)
        X, y = rng.normal(size=(4, 2)), rng.normal(size=4)
        assert applied_rate(model, X, y) == pytest.approx(expected, rel=1e-9)


def test_set_learning_rate_by_hand_takes_effect_on_the_next_step(rng):
    model = Model(hidden=(3,), task="regression", optimizer="sgd", lr=A0, schedule="exponential",
                  decay_rate=0.5, epoch_size=8, dtype="float64", input_dim=2, batch_norm=False)
    for _ in range(4):                          # 16 samples: epoch 2
        model.partial_fit(rng.normal(size=(4, 2)), rng.normal(size=4))
    assert model.learning_rate == pytest.approx(A0 * 0.25)
    model.set_learning_rate(0.02)               # the new base; the decay goes on from it
    assert model.learning_rate == pytest.approx(0.02 * 0.25)
    assert applied_rate(model, rng.normal(size=(4, 2)), rng.normal(size=4)) == pytest.approx(0.005, rel=1e-9)
    constant = Model(hidden=(3,), task="regression", optimizer="sgd", lr=A0, dtype="float64",
                     input_dim=2, batch_norm=False)
    constant.partial_fit(rng.normal(size=(4, 2)), rng.normal(size=4))
    constant.set_learning_rate(0.3)
    assert constant.learning_rate == 0.3
    assert applied_rate(constant, rng.normal(size=(4, 2)), rng.normal(size=4)) == pytest.approx(0.3, rel=1e-9)


def test_schedule_can_be_switched_live_and_bad_rates_are_refused(rng):
    model = Model(hidden=(3,), task="regression", lr=A0, epoch_size=4, input_dim=2)
    for _ in range(3):
        model.partial_fit(rng.normal(size=(4, 2)), rng.normal(size=4))
    model.set(schedule="inverse_time", decay_rate=1.0)
    assert model.learning_rate == pytest.approx(A0 / 4)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(EngineError, match="lr"):
            model.set_learning_rate(bad)
    assert model.learning_rate == pytest.approx(A0 / 4)     # unchanged by the refusals


@pytest.mark.parametrize("settings, words", [
    (dict(schedule="exponential", decay_rate=0.0), "decay_rate"),
    (dict(schedule="staircase", decay_rate=1.5), "decay_rate"),
    (dict(schedule="inverse_sqrt", decay_rate=0.0), "decay_rate"),
    (dict(schedule="inverse_time", decay_rate=-0.1), "decay_rate"),
    (dict(schedule="cosine"), "schedule must be one of"),
    (dict(epoch_size=0), "epoch_size"),
    (dict(step_epochs=0), "step_epochs"),
])
def test_bad_schedule_settings_are_refused(settings, words):
    with pytest.raises(EngineError, match=words):
        Model(hidden=(3,), **settings)
