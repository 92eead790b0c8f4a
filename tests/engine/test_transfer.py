"""Transfer learning: from_pretrained keeps the trunk (weights, batch-norm statistics,
input normalizer), reinitializes the head, and frozen layers stay bit-identical under
every optimizer, through checkpoints, until unfreeze_after_rows."""
import numpy as np
import pytest

from learnd.engine import EngineError, Model

from .helpers import OPTIMIZERS, assert_same_state, batch, full_state

RIGHT = 1e-7


def pretrained(rng, **kw):
    settings = dict(hidden=(8, 6), activation="tanh", task="multiclass", n_outputs=4,
                    batch_norm=True, dtype="float64", seed=2)
    settings.update(kw)
    model = Model(**settings)
    for _ in range(20):
        model.partial_fit(*batch("multiclass", 16, 5, rng, n_outputs=4, scale=3.0, offset=2.0))
    return model


def test_from_pretrained_keeps_the_trunk_and_starts_a_new_head(rng):
    source = pretrained(rng)
    model = Model.from_pretrained(source, task="binary", reinit_layers=1, freeze_layers=(1,), seed=9)
    assert model.spec.task == "binary" and model.spec.n_outputs == 1
    for name in ("W1", "gamma1", "beta1", "W2", "gamma2", "beta2"):
        assert np.array_equal(model.params[name], source.params[name]), name
    for name in ("running_mean1", "running_var1", "running_mean2", "running_var2"):
        assert np.array_equal(model.params[name], source.params[name]), name
    assert model.params["W3"].shape == (1, 6) and not np.any(model.params["b3"])
    assert model.normalizer.count == source.normalizer.count
    assert np.array_equal(model.normalizer.shift, source.normalizer.shift)
    assert np.array_equal(model.normalizer.inv_scale, source.normalizer.inv_scale)
    assert model.samples_seen == 0 and model.steps == 0
    # Two reinitialized layers: layer 2 starts afresh as well.
    two = Model.from_pretrained(source, n_outputs=3, reinit_layers=2)
    assert np.array_equal(two.params["W1"], source.params["W1"])
    assert not np.array_equal(two.params["W2"], source.params["W2"])
    assert np.array_equal(two.params["running_var2"], np.ones(6))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_frozen_layers_stay_bit_identical_and_the_rest_learn(rng, optimizer):
    source = pretrained(rng)
    model = Model.from_pretrained(source, n_outputs=3, freeze_layers=(1, 2), optimizer=optimizer,
                                  l2=0.01, lr=0.05)
    frozen = {k: v.copy() for k, v in model.params.items() if k[-1] in "12"}
    normalizer = (model.normalizer.shift.copy(), model.normalizer.inv_scale.copy())
    head = model.params["W3"].copy()
    for _ in range(15):
        model.partial_fit(*batch("multiclass", 12, 5, rng, n_outputs=3, scale=3.0))
    for name, value in frozen.items():       # weights, gamma/beta and running statistics
        assert np.array_equal(model.params[name], value), name
    assert np.array_equal(model.normalizer.shift, normalizer[0])
    assert np.array_equal(model.normalizer.inv_scale, normalizer[1])
    assert not np.array_equal(model.params["W3"], head)


def test_gradient_check_covers_the_trainable_layers(rng):
    source = pretrained(rng)
    model = Model.from_pretrained(source, n_outputs=3, freeze_layers=(1,), l2=0.05)
    model.partial_fit(*batch("multiclass", 8, 5, rng, n_outputs=3))
    report = model.gradient_check(*batch("multiclass", 8, 5, rng, n_outputs=3))
    assert set(report.per_param) == {"W2", "gamma2", "beta2", "W3", "b3"}
    assert report.overall < RIGHT, str(report)


def test_freezing_a_layer_mid_training_stops_it_even_with_adam_moments(rng):
    model = pretrained(rng, optimizer="adam")
    model.set(freeze_layers=[2])
    W2 = model.params["W2"].copy()
    W1 = model.params["W1"].copy()
    for _ in range(5):
        model.partial_fit(*batch("multiclass", 16, 5, rng, n_outputs=4))
    assert np.array_equal(model.params["W2"], W2)
    assert not np.array_equal(model.params["W1"], W1)
    model.set(freeze_layers=[])
    model.partial_fit(*batch("multiclass", 16, 5, rng, n_outputs=4))
    assert not np.array_equal(model.params["W2"], W2)


def test_unfreeze_after_rows_fine_tunes_everything(rng):
    model = Model.from_pretrained(pretrained(rng), n_outputs=3, freeze_layers=(1, 2),
                                  unfreeze_after_rows=40)
    W1 = model.params["W1"].copy()
    for _ in range(3):                          # 36 rows: still frozen
        model.partial_fit(*batch("multiclass", 12, 5, rng, n_outputs=3))
    assert np.array_equal(model.params["W1"], W1) and model.spec.freeze_layers == (1, 2)
    model.partial_fit(*batch("multiclass", 12, 5, rng, n_outputs=3))    # 48 rows: unfrozen after it
    assert model.spec.freeze_layers == ()
    model.partial_fit(*batch("multiclass", 12, 5, rng, n_outputs=3))
    assert not np.array_equal(model.params["W1"], W1)


def test_the_frozen_set_survives_a_checkpoint_and_the_resumed_model_continues_alike(rng, tmp_path):
    source = pretrained(rng)
    source.save(tmp_path / "source.npz")
    model = Model.from_pretrained(tmp_path / "source.npz", n_outputs=3, freeze_layers=(1,),
                                  unfreeze_after_rows=100)
    assert np.array_equal(model.params["W1"], source.params["W1"])
    for _ in range(3):
        model.partial_fit(*batch("multiclass", 12, 5, rng, n_outputs=3))
    model.save(tmp_path / "resumed.npz")
    resumed = Model.load(tmp_path / "resumed.npz")
    assert resumed.spec.freeze_layers == (1,)
    for _ in range(8):                          # past unfreeze_after_rows on both
        X, y = batch("multiclass", 12, 5, rng, n_outputs=3)
        model.partial_fit(X, y)
        resumed.partial_fit(X, y)
    assert_same_state(full_state(model), full_state(resumed))
    assert model.spec.freeze_layers == ()


def test_from_pretrained_refuses_what_cannot_transfer(rng):
    source = pretrained(rng)
    with pytest.raises(EngineError, match="keeps the source's hidden"):
        Model.from_pretrained(source, hidden=(4,))
    with pytest.raises(EngineError, match="stay random"):
        Model.from_pretrained(source, n_outputs=3, reinit_layers=2, freeze_layers=(2,))
    with pytest.raises(EngineError, match="reinit_layers must be >= 1"):
        Model.from_pretrained(source, n_outputs=3, reinit_layers=0)
    with pytest.raises(EngineError, match="reinit_layers"):
        Model.from_pretrained(source, reinit_layers=4)
    with pytest.raises(EngineError, match="freeze_layers"):
        Model.from_pretrained(source, freeze_layers=(0,))
    with pytest.raises(EngineError, match="nothing to transfer"):
        Model.from_pretrained(Model(hidden=(3,)))
    with pytest.raises(EngineError, match="unfreeze_after_rows"):
        Model(unfreeze_after_rows=-1)
