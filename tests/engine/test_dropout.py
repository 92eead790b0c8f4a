"""Inverted dropout in the model: on in training (one keep_prob or one per hidden layer),
expected activation kept, never at inference."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from learnd.engine import EngineError, Model
from learnd.engine.kernels import network as KN

from . import reference as ref
from .helpers import batch, dropout_masks


def dropout_model(keep_prob, **kw):
    settings = dict(hidden=(30, 20), activation="relu", task="multiclass", n_outputs=3,
                    keep_prob=keep_prob, dtype="float64", seed=6)
    settings.update(kw)
    return Model(**settings)


def slot(model, l, column, m):
    net = model.network
    row = net.layout.table[l - 1]
    cap, n = net.train_work.cap, row[KN.N_OUT]
    start = row[column] * cap
    return net.train_work.buf[start:start + m * n].reshape(m, n)


def test_training_pass_keeps_the_expected_activation(rng):
    model = dropout_model(0.6, batch_norm=False)
    X, y = batch("multiclass", 40, 8, rng)
    model.partial_fit(X, y)
    net, norm = model.network, model.normalizer
    Y = np.eye(3)[y]
    w = np.empty(0)
    total = 0.0
    draws = 300
    for _ in range(draws):
        net.loss_and_grad(X, Y, w, norm.shift, norm.inv_scale, model.rng_state, grad=False)
        total = total + slot(model, 1, KN.SLOT_DROP, 40)
    # layer 1's undropped A does not depend on any mask: the mean over masks equals it
    undropped = slot(model, 1, KN.SLOT_A, 40)
    assert abs(total.sum() / draws / undropped.sum() - 1) < 0.01
    masks = dropout_masks(model, 40)
    assert set(masks) == {1, 2}
    for mask in masks.values():
        assert set(np.unique(mask)) == {0.0, 1 / 0.6}


def test_prediction_has_no_dropout_and_is_deterministic(rng):
    model = dropout_model(0.5)
    for _ in range(10):
        model.partial_fit(*batch("multiclass", 16, 8, rng))
    X = rng.normal(size=(12, 8))
    rng_before = model.rng_state.copy()
    P1, P2 = model.predict_proba(X), model.predict_proba(X)
    assert np.array_equal(P1, P2)
    assert np.array_equal(model.rng_state, rng_before)      # inference draws no masks
    norm = model.normalizer
    expected = ref.predict_proba(ref.Net(model.spec), ref.params64(model), ref.stats64(model), X,
                                 norm.shift, norm.inv_scale)
    assert_allclose(P1, expected, rtol=1e-10, atol=1e-14)
    # the same parameters without dropout predict exactly the same
    state = model.get_state()
    state["meta"]["spec"]["keep_prob"] = 1.0
    no_dropout = Model.from_state(state)
    assert np.array_equal(no_dropout.predict_proba(X), P1)


def test_training_loss_is_taken_with_dropout_as_applied(rng):
    X, y = batch("multiclass", 16, 8, rng)
    losses = set()
    for seed in range(4):
        model = dropout_model(0.5, seed=seed, batch_norm=False)
        plain = dropout_model(1.0, seed=seed, batch_norm=False)
        lp = plain.partial_fit(X, y)
        ld = model.partial_fit(X, y)
        assert ld != lp                       # a different forward pass: units were dropped
        losses.add(ld)
        again = dropout_model(0.5, seed=seed, batch_norm=False)
        assert again.partial_fit(X, y) == ld  # the seed fixes the masks
    assert len(losses) == 4


def test_keep_prob_per_layer(rng):
    model = dropout_model((1.0, 0.5))
    model.partial_fit(*batch("multiclass", 200, 8, rng))
    assert model.network.layout.table[0, KN.SLOT_MASK] == -1           # layer 1: no dropout
    masks = dropout_masks(model, 200)
    assert set(masks) == {2}
    assert abs((masks[2] == 0).mean() - 0.5) < 0.03
    model = dropout_model((0.9, 0.3))
    model.partial_fit(*batch("multiclass", 200, 8, rng))
    masks = dropout_masks(model, 200)
    assert abs((masks[1] == 0).mean() - 0.1) < 0.02
    assert abs((masks[2] == 0).mean() - 0.7) < 0.03


@pytest.mark.parametrize("keep_prob, words", [
    (0.0, r"keep_prob must be in \(0, 1\]"),
    (1.5, r"keep_prob must be in \(0, 1\]"),
    ((0.5, 0.5, 0.5), "3 values for 2 hidden layers"),
    ("half", "keep_prob must be a float"),
])
def test_bad_keep_prob_is_refused(keep_prob, words):
    with pytest.raises(EngineError, match=words):
        dropout_model(keep_prob)
