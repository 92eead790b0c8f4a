"""Optimizers: each one's first three steps against DESIGN's formulas worked out here, both
on the Optimizer classes and through a Model whose gradient is computed by hand;
gradient clipping, L2 and L1 as they reach the update."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from learnd.engine import EngineError, Model
from learnd.engine.optimizers import OPTIMIZERS

LR, B1, B2, EPS = 0.05, 0.8, 0.95, 1e-8


def trajectory(name, theta0, grads, lr=LR, b1=B1, b2=B2, eps=EPS):
    """θ after each step, from DESIGN: sgd θ -= αg; momentum v = β1 v + (1-β1) g, θ -= αv;
    rmsprop s = β2 s + (1-β2) g², θ -= α g / (√s + ε); adam both, bias-corrected."""
    theta = theta0.copy()
    v = np.zeros_like(theta)
    s = np.zeros_like(theta)
    out = []
    for t, g in enumerate(grads, start=1):
        if name == "sgd":
            theta = theta - lr * g
        elif name == "momentum":
            v = b1 * v + (1 - b1) * g
            theta = theta - lr * v
        elif name == "rmsprop":
            s = b2 * s + (1 - b2) * g * g
            theta = theta - lr * g / (np.sqrt(s) + eps)
        elif name == "adam":
            v = b1 * v + (1 - b1) * g
            s = b2 * s + (1 - b2) * g * g
            vhat, shat = v / (1 - b1 ** t), s / (1 - b2 ** t)
            theta = theta - lr * vhat / (np.sqrt(shat) + eps)
        else:
            raise KeyError(name)
        out.append(theta)
    return out


def test_every_registered_optimizer_has_a_reference_here():
    assert set(OPTIMIZERS) == {"sgd", "momentum", "rmsprop", "adam"}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_first_three_steps_follow_the_formulas(rng, name):
    theta0 = rng.normal(size=9)
    grads = [rng.normal(size=9) * scale for scale in (1.0, 0.3, 2.0)]
    opt = OPTIMIZERS[name](B1, B2, EPS)
    theta = theta0.copy()
    for t, (g, expected) in enumerate(zip(grads, trajectory(name, theta0, grads)), start=1):
        opt.step(theta, g, LR)
        assert opt.t == t
        assert_allclose(theta, expected, rtol=1e-12, atol=1e-14, err_msg=f"step {t}")
    assert set(opt.state) == set(OPTIMIZERS[name].moments)


def linear_regression_gradient(W, b, X, Y):
    """J = (1/m) Σ ½ ||W x + b - y||²  ->  dW = (Z - Y)ᵀ X / m,  db = mean(Z - Y)."""
    D = X @ W.T + b - Y
    return D.T @ X / len(X), D.mean(axis=0)


def flat(W, b):
    return np.concatenate([W.ravel(), b])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_model_steps_equal_hand_computed_updates(rng, name):
    model = Model(hidden=(), task="regression", n_outputs=2, batch_norm=False,
                  normalize_inputs=False, optimizer=name, lr=LR, beta1=B1, beta2=B2, eps=EPS,
                  dtype="float64", seed=4, input_dim=3)
    W, b = model.params["W1"].copy(), model.params["b1"].copy()
    v = s = 0.0
    for t in range(1, 4):
        X, Y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
        gW, gb = linear_regression_gradient(W, b, X, Y)
        g = flat(gW, gb)
        theta = flat(W, b)
        if name == "sgd":
            theta = theta - LR * g
        elif name == "momentum":
            v = B1 * v + (1 - B1) * g
            theta = theta - LR * v
        elif name == "rmsprop":
            s = B2 * s + (1 - B2) * g ** 2
            theta = theta - LR * g / (np.sqrt(s) + EPS)
        else:
            v = B1 * v + (1 - B1) * g
            s = B2 * s + (1 - B2) * g ** 2
            theta = theta - LR * (v / (1 - B1 ** t)) / (np.sqrt(s / (1 - B2 ** t)) + EPS)
        loss = model.partial_fit(X, Y)
        assert loss == pytest.approx(0.5 * ((X @ W.T + b - Y) ** 2).sum() / 8, rel=1e-12)
        W, b = theta[:6].reshape(2, 3), theta[6:]
        assert_allclose(model.params["W1"], W, rtol=1e-12, atol=1e-14, err_msg=f"W1 after step {t}")
        assert_allclose(model.params["b1"], b, rtol=1e-12, atol=1e-14, err_msg=f"b1 after step {t}")
        assert model.steps == t


def _one_sgd_step(rng, **settings):
    """A linear model, one sgd step; returns (W0, b0, X, Y, W1, b1)."""
    model = Model(hidden=(), task="regression", n_outputs=2, batch_norm=False,
                  normalize_inputs=False, optimizer="sgd", lr=LR, dtype="float64", seed=4,
                  input_dim=3, **settings)
    W0, b0 = model.params["W1"].copy(), model.params["b1"].copy()
    X, Y = rng.normal(size=(8, 3)) * 5, rng.normal(size=(8, 2)) * 5
    model.partial_fit(X, Y)
    return W0, b0, X, Y, model.params["W1"].copy(), model.params["b1"].copy()


def test_clip_norm_scales_the_whole_gradient_to_the_limit(rng):
    W0, b0, X, Y, W1, b1 = _one_sgd_step(rng, clip_norm=0.5, l2=0.1)
    gW, gb = linear_regression_gradient(W0, b0, X, Y)
    gW = gW + 0.1 * W0
    norm = np.linalg.norm(flat(gW, gb))
    assert norm > 0.5                                        # the test must actually clip
    scale = 0.5 / norm
    assert_allclose(W1, W0 - LR * scale * gW, rtol=1e-12)
    assert_allclose(b1, b0 - LR * scale * gb, rtol=1e-12)
    applied = np.linalg.norm(flat(W1 - W0, b1 - b0)) / LR
    assert applied == pytest.approx(0.5, rel=1e-12)


def test_clip_norm_leaves_a_small_gradient_alone(rng):
    W0, b0, X, Y, W1, b1 = _one_sgd_step(rng, clip_norm=1e6)
    gW, gb = linear_regression_gradient(W0, b0, X, Y)
    assert_allclose(W1, W0 - LR * gW, rtol=1e-12)
    assert_allclose(b1, b0 - LR * gb, rtol=1e-12)


def test_clipped_adam_moments_see_the_clipped_gradient(rng):
    model = Model(hidden=(), task="regression", n_outputs=2, batch_norm=False,
                  normalize_inputs=False, optimizer="adam", lr=LR, beta1=B1, beta2=B2, eps=EPS,
                  clip_norm=0.25, dtype="float64", seed=4, input_dim=3)
    W0, b0 = model.params["W1"].copy(), model.params["b1"].copy()
    X, Y = rng.normal(size=(8, 3)) * 5, rng.normal(size=(8, 2)) * 5
    model.partial_fit(X, Y)
    g = flat(*linear_regression_gradient(W0, b0, X, Y))
    g = g * 0.25 / np.linalg.norm(g)
    assert_allclose(model.optimizer.state["v"], (1 - B1) * g, rtol=1e-12)
    assert_allclose(model.optimizer.state["s"], (1 - B2) * g * g, rtol=1e-12)


@pytest.mark.parametrize("penalty", ["l2", "l1"])
def test_penalties_reach_the_weights_but_not_the_biases(rng, penalty):
    W0, b0, X, Y, W1, b1 = _one_sgd_step(rng, **{penalty: 0.3})
    gW, gb = linear_regression_gradient(W0, b0, X, Y)
    extra = 0.3 * W0 if penalty == "l2" else 0.3 * np.sign(W0)
    assert_allclose(W1, W0 - LR * (gW + extra), rtol=1e-12)
    assert_allclose(b1, b0 - LR * gb, rtol=1e-12)


def test_penalties_are_in_the_returned_loss(rng):
    model = Model(hidden=(4,), task="regression", l2=0.2, l1=0.1, dtype="float64", seed=2,
                  batch_norm=False, normalize_inputs=False, input_dim=3)
    X, y = rng.normal(size=(5, 3)), rng.normal(size=5)
    plain = Model(hidden=(4,), task="regression", dtype="float64", seed=2, batch_norm=False,
                  normalize_inputs=False, input_dim=3)
    Ws = [model.params["W1"], model.params["W2"]]
    expected = sum(0.1 * (W ** 2).sum() + 0.1 * np.abs(W).sum() for W in Ws)
    assert model.partial_fit(X, y) == pytest.approx(plain.partial_fit(X, y) + expected, rel=1e-12)


def test_optimizer_settings_can_change_between_steps(rng):
    model = Model(hidden=(), task="regression", batch_norm=False, normalize_inputs=False,
                  optimizer="momentum", beta1=0.9, dtype="float64", input_dim=2, lr=LR)
    X, y = rng.normal(size=(4, 2)), rng.normal(size=4)
    model.partial_fit(X, y)
    v1 = model.optimizer.state["v"].copy()
    theta = np.concatenate([model.params["W1"].ravel(), model.params["b1"]])
    g = flat(*linear_regression_gradient(model.params["W1"].copy(), model.params["b1"].copy(),
                                         X, y.reshape(-1, 1)))
    model.set(beta1=0.5)
    model.partial_fit(X, y)
    v2 = 0.5 * v1 + 0.5 * g
    assert_allclose(model.optimizer.state["v"], v2, rtol=1e-12)
    assert_allclose(np.concatenate([model.params["W1"].ravel(), model.params["b1"]]),
                    theta - LR * v2, rtol=1e-12)
    with pytest.raises(EngineError, match="optimizer"):
        model.set(optimizer="sgd")
