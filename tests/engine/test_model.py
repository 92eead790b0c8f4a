"""Model options a user sees: outputs per task, multilabel NaN masking, sample weights,
float32 against float64, evaluate."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from learnd.engine import EngineError, Model

from . import reference as ref
from .helpers import N_OUTPUTS, TASKS, batch, targets


@pytest.mark.parametrize("task", TASKS)
def test_outputs_per_task(rng, task):
    K = N_OUTPUTS[task]
    model = Model(hidden=(6, 5), task=task, n_outputs=K, seed=2)
    for _ in range(3):
        model.partial_fit(*batch(task, 8, 4, rng))
    X = rng.normal(size=(7, 4))
    P = model.predict_proba(X)
    pred = model.predict(X)
    assert P.shape == (7, K) and P.dtype == np.float32
    if task == "multiclass":
        assert pred.shape == (7,) and pred.dtype.kind == "i"
        assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
        assert np.array_equal(pred, P.argmax(axis=1))
    elif task in ("binary", "multilabel"):
        assert pred.shape == (7, K) and set(np.unique(pred)) <= {0, 1}
        assert np.all((P > 0) & (P < 1))
        assert np.array_equal(pred, (P >= 0.5).astype(int))
    else:
        assert np.array_equal(pred, P)


def test_multilabel_unlabelled_output_learns_nothing(rng):
    model = Model(hidden=(5,), task="multilabel", n_outputs=3, optimizer="sgd", lr=0.5,
                  dtype="float64", seed=4)
    model.partial_fit(*batch("multilabel", 8, 4, rng))
    W, b = model.params["W2"].copy(), model.params["b2"].copy()
    X, y = batch("multilabel", 8, 4, rng)
    y[:, 1] = np.nan                                   # output 1 has no label in this batch
    model.partial_fit(X, y)
    assert np.array_equal(model.network.grads["W2"][1], np.zeros(5))
    assert model.network.grads["b2"][1] == 0.0
    assert np.array_equal(model.params["W2"][1], W[1])
    assert model.params["b2"][1] == b[1]
    assert not np.array_equal(model.params["W2"][0], W[0])      # the labelled ones moved


def test_multilabel_nan_entry_contributes_nothing_to_loss_or_gradient(rng):
    """Changing the network's output for a NaN-labelled entry changes neither J nor the
    gradient of anything but through that entry: J equals the reference with the entry
    dropped, whatever the label would have been."""
    model = Model(hidden=(5,), task="multilabel", n_outputs=3, batch_norm=False,
                  normalize_inputs=False, optimizer="sgd", dtype="float64", seed=4, input_dim=4)
    X, y = batch("multilabel", 6, 4, rng)
    y[~np.isnan(y)] = 1.0
    y[2, 0] = np.nan
    P = ref.params64(model)
    net = ref.Net(model.spec)
    J, grads, _ = ref.forward_backward(net, P, X, y)
    losses = []
    for fill in (0.0, 1.0):
        filled = y.copy()
        filled[2, 0] = fill
        losses.append(ref.forward_backward(net, P, X, filled)[0])
    assert losses[0] != losses[1] and J < min(losses)          # the entry would have counted
    loss = model.partial_fit(X, y)
    assert loss == pytest.approx(J, rel=1e-12)
    for name, g in grads.items():
        assert_allclose(model.network.grads[name], g, rtol=1e-10, atol=1e-14)


def _sgd_step(X, y, w=None, **kw):
    settings = dict(hidden=(5, 4), task="multiclass", n_outputs=3, batch_norm=False,
                    normalize_inputs=False, optimizer="sgd", lr=0.1, dtype="float64", seed=7,
                    input_dim=X.shape[1])
    settings.update(kw)
    model = Model(**settings)
    loss = model.partial_fit(X, y, sample_weight=w)
    return loss, model


def test_a_weight_two_row_equals_the_row_duplicated(rng):
    X, y = batch("multiclass", 5, 4, rng)
    w = np.array([1.0, 2.0, 1.0, 1.0, 1.0])
    dup = [0, 1, 1, 2, 3, 4]
    weighted_loss, weighted = _sgd_step(X, y, w, l2=0.01)
    dup_loss, duplicated = _sgd_step(X[dup], y[dup], l2=0.01)
    assert weighted_loss == pytest.approx(dup_loss, rel=1e-13)
    for name, value in weighted.params.items():
        assert_allclose(value, duplicated.params[name], rtol=1e-12, atol=1e-15, err_msg=name)
    plain_loss, plain = _sgd_step(X, y, l2=0.01)
    assert abs(plain_loss - weighted_loss) > 1e-6                 # the weight did something


def test_weight_zero_drops_a_row_and_uniform_weights_change_nothing(rng):
    X, y = batch("multiclass", 5, 4, rng)
    zero_loss, zero = _sgd_step(X, y, np.array([1.0, 1.0, 0.0, 1.0, 1.0]))
    keep = [0, 1, 3, 4]
    drop_loss, dropped = _sgd_step(X[keep], y[keep])
    assert zero_loss == pytest.approx(drop_loss, rel=1e-13)
    assert_allclose(zero.params["W1"], dropped.params["W1"], rtol=1e-12, atol=1e-15)
    loss3, uniform = _sgd_step(X, y, np.full(5, 3.0))
    loss_none, none = _sgd_step(X, y)
    assert loss3 == loss_none
    assert all(np.array_equal(v, none.params[k]) for k, v in uniform.params.items())


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_float32_and_float64_models_agree(rng, task):
    batches = [batch(task, 16, 6, rng) for _ in range(10)]
    models = {dt: Model(hidden=(8, 6), task=task, n_outputs=N_OUTPUTS[task], dtype=dt, seed=3,
                        lr=0.01)
              for dt in ("float32", "float64")}
    for X, y in batches:
        l32 = models["float32"].partial_fit(X, y)
        l64 = models["float64"].partial_fit(X, y)
        assert l32 == pytest.approx(l64, rel=1e-4)
    for dt, model in models.items():
        assert all(v.dtype == np.dtype(dt) for v in model.params.values())
        assert model.predict_proba(batches[0][0]).dtype == np.dtype(dt)
    assert_allclose(models["float32"].predict_proba(batches[0][0]),
                    models["float64"].predict_proba(batches[0][0]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("task", TASKS)
def test_evaluate_reports_inference_figures_without_penalties(rng, task):
    K = N_OUTPUTS[task]
    model = Model(hidden=(6,), task=task, n_outputs=K, seed=2, dtype="float64", l2=0.1)
    for _ in range(3):
        model.partial_fit(*batch(task, 8, 4, rng))
    X, y = batch(task, 20, 4, rng)
    figures = model.evaluate(X, y)
    P = model.predict_proba(X)
    Y = targets(task, y, K)
    if task == "regression":
        assert set(figures) == {"loss", "mse", "mae"}
        assert figures["mse"] == pytest.approx(np.mean((P - Y) ** 2), rel=1e-12)
        assert figures["mae"] == pytest.approx(np.mean(np.abs(P - Y)), rel=1e-12)
        assert figures["loss"] == pytest.approx(0.5 * ((P - Y) ** 2).sum(axis=1).mean(), rel=1e-12)
    else:
        assert set(figures) == {"loss", "accuracy", "error", "precision", "recall", "f1"}
        if task == "multiclass":
            acc = np.mean(model.predict(X) == y)
            assert figures["loss"] == pytest.approx(-np.log(P[np.arange(20), y]).mean(), rel=1e-10)
        else:
            labelled = ~np.isnan(Y)
            acc = np.mean((model.predict(X) == Y)[labelled])
            Yz = np.where(labelled, Y, 0)
            bce = -(Yz * np.log(P) + (1 - Yz) * np.log(1 - P)) * labelled
            assert figures["loss"] == pytest.approx(bce.sum(axis=1).mean(), rel=1e-10)
        assert figures["accuracy"] == pytest.approx(acc)
        assert figures["error"] == pytest.approx(1 - acc)
    assert repr(model).startswith(f"Model(4-6-{K} {task}")


def test_last_batch_outputs_are_the_steps_own_forward_pass(rng):
    """Without dropout and batch norm, a step's forward pass is an inference pass at the
    parameters before the update (on inputs normalized with this batch included)."""
    model = Model(hidden=(8,), task="multiclass", n_outputs=3, input_dim=4, dtype="float64",
                  normalize_inputs=False, seed=1)
    with pytest.raises(EngineError):
        model.last_batch_outputs()
    for _ in range(3):
        X, y = batch("multiclass", 16, 4, rng)
        before = model.predict_proba(X)
        model.partial_fit(X, y)
        assert_allclose(model.last_batch_outputs(), before, rtol=1e-12)
        assert not np.allclose(model.predict_proba(X), before)     # the step changed the model
