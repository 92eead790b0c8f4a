"""The fused hidden-layer kernels compute exactly what the separate kernels compute in
sequence (batch norm, activation, dropout and their backward), and the one-pass L2/L1
penalty matches the two separate passes."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from learnd.engine.kernels.activations import ACTIVATIONS, activation_backward, activation_forward
from learnd.engine.kernels.batchnorm import batchnorm_backward, batchnorm_forward_train
from learnd.engine.kernels.dropout import bits_buffer, dropout_backward, dropout_forward
from learnd.engine.kernels.hidden import hidden_backward, hidden_forward_train
from learnd.engine.kernels.regularization import (add_weight_penalty_and_grad, add_weight_penalty_grad,
                                           weight_penalty)
from learnd.engine.kernels.rng import seed_state


def separate_chain(Z, gamma, beta, kind, keep, bn, drop, G, state):
    m, n = Z.shape
    Z = Z.copy()
    Zhat, A, mask, Out = (np.zeros_like(Z) for _ in range(4))
    mean, var, inv_std, scratch = (np.zeros(n) for _ in range(4))
    if bn:
        batchnorm_forward_train(Z, gamma, beta, Zhat, Z, mean, var, inv_std, 1e-5)
    activation_forward(Z, A, kind)
    if drop:
        dropout_forward(A, mask, Out, keep, state, bits_buffer(A.shape[1]))
    G = G.copy()
    if drop:
        dropout_backward(G, mask, G)
    activation_backward(G, A, G, kind)
    dgamma, dbeta = np.zeros(n), np.zeros(n)
    if bn:
        batchnorm_backward(G, Zhat, gamma, inv_std, dgamma, dbeta, G, scratch)
    return dict(Z=Z, Zhat=Zhat, A=A, mask=mask, Out=Out, mean=mean, var=var, G=G,
                dgamma=dgamma, dbeta=dbeta)


def fused_chain(Z, gamma, beta, kind, keep, bn, drop, G, state):
    m, n = Z.shape
    Z = Z.copy()
    Zhat, A, mask, Out = (np.zeros_like(Z) for _ in range(4))
    mean, var, inv_std, scratch = (np.zeros(n) for _ in range(4))
    hidden_forward_train(Z, bn, gamma, beta, Zhat, mean, var, inv_std, 1e-5, kind, A, drop, mask,
                         Out, keep, state, bits_buffer(n))
    G = G.copy()
    dgamma, dbeta = np.zeros(n), np.zeros(n)
    hidden_backward(G, A, kind, drop, mask, bn, Zhat, gamma, inv_std, dgamma, dbeta, scratch)
    return dict(Z=Z, Zhat=Zhat, A=A, mask=mask, Out=Out, mean=mean, var=var, G=G,
                dgamma=dgamma, dbeta=dbeta)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bn, drop", [(True, True), (True, False), (False, True), (False, False)])
def test_fused_hidden_layer_equals_the_separate_kernels(rng, seed, activation, bn, drop):
    m, n = 9, 7   # n not a multiple of the four decisions per random draw
    Z = rng.normal(size=(m, n)) * 2 + 0.5
    gamma, beta = rng.uniform(0.5, 1.5, n), rng.normal(size=n)
    G = rng.normal(size=(m, n))
    s1, s2 = seed_state(seed), seed_state(seed)
    a = separate_chain(Z, gamma, beta, ACTIVATIONS[activation], 0.7, bn, drop, G, s1)
    b = fused_chain(Z, gamma, beta, ACTIVATIONS[activation], 0.7, bn, drop, G, s2)
    for key in a:
        assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-14, err_msg=key)
    assert np.array_equal(s1, s2)           # the same random draws were consumed


def test_dropout_keep_rate_is_keep_prob_to_16_bits(seed):
    A = np.ones((400, 250))
    mask, Out = np.empty_like(A), np.empty_like(A)
    state = seed_state(seed)
    for keep in (0.5, 0.8, 0.95):
        dropout_forward(A, mask, Out, keep, state, bits_buffer(A.shape[1]))
        assert abs((mask > 0).mean() - keep) < 0.005
    dropout_forward(A, mask, Out, 1.0, state, bits_buffer(A.shape[1]))
    assert (mask == 1.0).all()


@pytest.mark.parametrize("l2, l1", [(1e-3, 0.0), (0.0, 1e-3), (1e-3, 2e-3)])
def test_one_pass_penalty_matches_the_two_passes(rng, l2, l1):
    W = rng.normal(size=1001)
    W[::97] = 0.0
    g1, g2 = rng.normal(size=1001), None
    g2 = g1.copy()
    expected = weight_penalty(W, l2, l1)
    add_weight_penalty_grad(W, g1, l2, l1)
    got, square_sum = add_weight_penalty_and_grad(W, g2, l2, l1)
    assert got == pytest.approx(expected, rel=1e-12)
    assert np.array_equal(g1, g2)
    assert square_sum == pytest.approx(g1 @ g1, rel=1e-12)       # of the gradient after the add


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_norm, l2, l1", [(True, 1e-3, 0.0), (False, 0.0, 1e-3), (False, 0.0, 0.0)])
def test_loss_and_grad_sums_the_squares_of_the_gradient_it_leaves(rng, dtype, batch_norm, l2, l1):
    """The squared global norm the kernel returns is that of every entry of `grads` as it
    leaves them (W with its penalty, b or gamma and beta): the step's clipping and
    finiteness check use it instead of a pass of their own."""
    from learnd.engine import Model
    model = Model(hidden=(7, 5), task="multiclass", n_outputs=3, input_dim=4, batch_norm=batch_norm,
                  l2=l2, l1=l1, dtype=np.dtype(dtype).name, seed=3)
    X = rng.normal(size=(9, 4))
    y = rng.integers(0, 3, 9)
    model.partial_fit(X, y)
    net = model.network
    Xc, Y, w = model._batch(X, y, None, training=True)
    loss = net.loss_and_grad(Xc, Y, w, model.normalizer.shift, model.normalizer.inv_scale, model.rng_state)
    g = net.flat_grads.astype(np.float64)
    assert np.isfinite(loss)
    assert net.grad_square_sum == pytest.approx(g @ g, rel=1e-12 if dtype == np.float64 else 1e-6)
    net.loss_and_grad(Xc, Y, w, model.normalizer.shift, model.normalizer.inv_scale, model.rng_state, grad=False)
    assert np.isnan(net.grad_square_sum)
