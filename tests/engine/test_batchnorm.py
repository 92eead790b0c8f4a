"""Batch norm in the model: EWMA running statistics against NumPy over many steps, inference
from the running statistics, the layers it applies to, and its batch-size rule."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from learnd.engine import EngineError, Model

from . import reference as ref
from .helpers import assert_same_state, batch, full_state, targets


def bn_model(**kw):
    settings = dict(hidden=(5, 4), activation="tanh", task="multiclass", n_outputs=3,
                    batch_norm=True, bn_beta=0.7, dtype="float64", seed=8, lr=0.01)
    settings.update(kw)
    return Model(**settings)


def test_running_statistics_start_at_zero_mean_and_unit_variance():
    model = bn_model(input_dim=6)
    for l in (1, 2):
        assert np.array_equal(model.params[f"running_mean{l}"], np.zeros(model.spec.hidden[l - 1]))
        assert np.array_equal(model.params[f"running_var{l}"], np.ones(model.spec.hidden[l - 1]))


def test_running_statistics_are_the_ewma_of_batch_mean_and_unbiased_variance(rng):
    model = bn_model(input_dim=6)
    net = ref.Net(model.spec)
    running = {}
    for l, n in ((1, 5), (2, 4)):                 # DESIGN: mean starts at 0, variance at 1
        running[f"running_mean{l}"], running[f"running_var{l}"] = np.zeros(n), np.ones(n)
    for step in range(12):
        m = 2 + step % 5                          # unequal batch sizes: m/(m-1) varies
        X, y = batch("multiclass", m, 6, rng, n_outputs=3, scale=3.0, offset=2.0)
        P = ref.params64(model)
        model.partial_fit(X, y)
        norm = model.normalizer                   # the statistics this step trained with
        _, _, batch_Z = ref.forward_backward(net, P, X, targets("multiclass", y, 3),
                                             shift=norm.shift, inv_scale=norm.inv_scale)
        for l, Z in batch_Z.items():
            running[f"running_mean{l}"], running[f"running_var{l}"] = ref.bn_running_update(
                running[f"running_mean{l}"], running[f"running_var{l}"], Z, 0.7)
    assert set(running) == set(model.network.stats)
    for name, value in running.items():
        assert_allclose(model.params[name], value, rtol=1e-10, err_msg=name)


def test_inference_uses_running_statistics_row_by_row(rng):
    model = bn_model()
    for _ in range(20):
        model.partial_fit(*batch("multiclass", 16, 6, rng, n_outputs=3, scale=3.0, offset=2.0))
    X = rng.normal(size=(9, 6)) * 3 + 2
    P = model.predict_proba(X)
    net = ref.Net(model.spec)
    norm = model.normalizer
    expected = ref.predict_proba(net, ref.params64(model), ref.stats64(model), X,
                                 norm.shift, norm.inv_scale)
    assert_allclose(P, expected, rtol=1e-10, atol=1e-13)
    # inference never depends on the other rows of the request
    for i in range(len(X)):
        assert_allclose(model.predict_proba(X[i:i + 1])[0], P[i], rtol=1e-12, atol=1e-15)


def test_batch_norm_replaces_hidden_biases_and_keeps_the_output_bias():
    model = bn_model(hidden=(5, 4, 3), input_dim=6)
    assert list(model.params) == [
        "W1", "gamma1", "beta1", "W2", "gamma2", "beta2", "W3", "gamma3", "beta3", "W4", "b4",
        "running_mean1", "running_var1", "running_mean2", "running_var2",
        "running_mean3", "running_var3"]
    plain = bn_model(hidden=(5, 4, 3), input_dim=6, batch_norm=False)
    assert list(plain.params) == ["W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4"]


def test_one_row_training_batch_is_refused_but_one_row_prediction_works(rng):
    model = bn_model()
    model.partial_fit(*batch("multiclass", 4, 6, rng, n_outputs=3))
    before = full_state(model)
    X, y = batch("multiclass", 1, 6, rng, n_outputs=3)
    with pytest.raises(EngineError, match="at least 2 rows"):
        model.partial_fit(X, y)
    assert_same_state(before, full_state(model))
    assert model.predict(X).shape == (1,)
    model.partial_fit(*batch("multiclass", 2, 6, rng, n_outputs=3))     # 2 rows is enough
    plain = bn_model(batch_norm=False)
    plain.partial_fit(X, y)                                             # no rule without batch norm
    assert plain.steps == 1


def test_bn_beta_can_change_live(rng):
    model = bn_model(normalize_inputs=False)
    model.partial_fit(*batch("multiclass", 8, 6, rng, n_outputs=3))
    P = ref.params64(model)
    model.set(bn_beta=0.0)                      # the running stats become the last batch's
    X, y = batch("multiclass", 8, 6, rng, n_outputs=3, scale=2.0, offset=3.0)
    model.partial_fit(X, y)
    _, _, batch_Z = ref.forward_backward(ref.Net(model.spec), P, X, targets("multiclass", y, 3))
    for l in (1, 2):
        assert_allclose(model.params[f"running_mean{l}"], batch_Z[l].mean(axis=0), rtol=1e-10)
        assert_allclose(model.params[f"running_var{l}"], batch_Z[l].var(axis=0, ddof=1), rtol=1e-10)


def test_inference_matches_torch_batchnorm1d_with_momentum_one_minus_beta(rng):
    torch = pytest.importorskip("torch")
    bn_beta, eps = 0.8, 1e-5
    model = Model(hidden=(4,), activation="linear", task="regression", n_outputs=4,
                  batch_norm=True, bn_beta=bn_beta, bn_eps=eps, normalize_inputs=False,
                  dtype="float64", optimizer="sgd", lr=0.1, input_dim=3, seed=2)
    layer = torch.nn.BatchNorm1d(4, eps=eps, momentum=1 - bn_beta).double()
    for _ in range(6):
        X = rng.normal(size=(5, 3)) * 2 + 1
        W1 = model.params["W1"].copy()
        model.partial_fit(X, rng.normal(size=(5, 4)))
        layer.train()
        layer(torch.from_numpy(X @ W1.T))
    assert_allclose(model.params["running_mean1"], layer.running_mean.numpy(), rtol=1e-6)
    assert_allclose(model.params["running_var1"], layer.running_var.numpy(), rtol=1e-6)
