"""Each Numba kernel against a plain NumPy reference (tests/engine/reference.py), and the
whole-network kernels against the reference network, step by step."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from learnd.engine import Model
from learnd.engine.kernels.activations import ACTIVATIONS, activation_backward, activation_forward
from learnd.engine.kernels.batchnorm import (batchnorm_backward, batchnorm_forward_eval,
                                      batchnorm_forward_train, batchnorm_update_running)
from learnd.engine.kernels.dense import dense_backward, dense_forward
from learnd.engine.kernels.dropout import bits_buffer, dropout_backward, dropout_forward
from learnd.engine.kernels.labels import (class_ids_to_onehot, copy_into, first_bad_binary,
                                   first_bad_onehot)
from learnd.engine.kernels.losses import HEADS, head_loss, head_output, softmax_rows
from learnd.engine.kernels.normalize import (count_nonfinite, normalize_into, normalizer_scale,
                                      welford_merge)
from learnd.engine.kernels.optim import (adam_step, global_norm, momentum_step, rmsprop_step, sgd_step,
                                        sum_of_squares)
from learnd.engine.kernels.regularization import add_weight_penalty_grad, weight_penalty
from learnd.engine.kernels.rng import next_uint64, next_uniform, seed_state, xoshiro_fill

from . import reference as ref
from .helpers import ACTIVATIONS as ACTIVATION_NAMES
from .helpers import N_OUTPUTS, TASKS, batch, dropout_masks, targets

TIGHT = dict(rtol=1e-10, atol=1e-12)


# -- dense ----------------------------------------------------------------------------------
@pytest.mark.parametrize("with_bias", [True, False])
def test_dense_forward_and_backward_match_numpy(rng, with_bias):
    m, n_in, n_out = 7, 5, 4
    A = rng.normal(size=(m, n_in))
    W = rng.normal(size=(n_out, n_in))
    b = rng.normal(size=n_out) if with_bias else np.empty(0)
    Z = np.empty((m, n_out))
    dense_forward(A, W, b, Z)
    assert_allclose(Z, A @ W.T + (b if with_bias else 0.0), **TIGHT)

    dZ = rng.normal(size=(m, n_out))
    dW = np.full_like(W, np.nan)
    db = np.full_like(b, np.nan)
    dA = np.full_like(A, np.nan)
    dense_backward(dZ, A, W, dW, db, dA)
    assert_allclose(dW, dZ.T @ A, **TIGHT)
    assert_allclose(dA, dZ @ W, **TIGHT)
    if with_bias:
        assert_allclose(db, dZ.sum(axis=0), **TIGHT)


def test_dense_backward_skips_input_gradient_when_given_no_buffer(rng):
    A, W, dZ = rng.normal(size=(3, 2)), rng.normal(size=(4, 2)), rng.normal(size=(3, 4))
    dW, db = np.empty((4, 2)), np.empty(4)
    dense_backward(dZ, A, W, dW, db, np.empty((0, 0)))
    assert_allclose(dW, dZ.T @ A, **TIGHT)


# -- activations ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_forward_and_backward_match_numpy(rng, name):
    Z = rng.normal(size=(6, 5)) * 3
    Z[0, :3] = 0.0                                   # the kink: relu'(0) must be 0
    Z[1, 0], Z[1, 1] = 40.0, -40.0                   # saturation without overflow
    A = np.empty_like(Z)
    activation_forward(Z, A, ACTIVATIONS[name])
    assert_allclose(A, ref.act_forward(name, Z), **TIGHT)

    dA = rng.normal(size=Z.shape)
    dZ = np.empty_like(Z)
    activation_backward(dA, A, dZ, ACTIVATIONS[name])
    assert_allclose(dZ, dA * ref.act_derivative(name, Z), rtol=1e-9, atol=1e-12)
    # in place, as the network runs it
    activation_backward(dA, A, dA, ACTIVATIONS[name])
    assert_allclose(dA, dZ, **TIGHT)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activations_in_place_give_exactly_the_out_of_place_values(rng, name, dtype):
    """Each in-place form (A over Z; dZ over dA; dZ over A) runs a loop of its own that
    writes through one name: the same values, bit for bit."""
    kind = ACTIVATIONS[name]
    Z = (rng.normal(size=(37, 29)) * 3).astype(dtype)
    A = np.empty_like(Z)
    activation_forward(Z, A, kind)
    Z_in_place = Z.copy()
    activation_forward(Z_in_place, Z_in_place, kind)
    assert np.array_equal(Z_in_place, A)

    dA = rng.normal(size=Z.shape).astype(dtype)
    dZ = np.empty_like(Z)
    activation_backward(dA, A, dZ, kind)
    over_dA, over_A = dA.copy(), A.copy()
    activation_backward(over_dA, A, over_dA, kind)
    activation_backward(dA, over_A, over_A, kind)
    assert np.array_equal(over_dA, dZ)
    assert np.array_equal(over_A, dZ)


def test_relu_derivative_at_zero_is_zero_and_leaky_slope_is_one_hundredth():
    Z = np.array([[0.0, -2.0, 3.0]])
    A = np.empty_like(Z)
    dZ = np.empty_like(Z)
    activation_forward(Z, A, ACTIVATIONS["relu"])
    activation_backward(np.ones_like(Z), A, dZ, ACTIVATIONS["relu"])
    assert dZ.tolist() == [[0.0, 0.0, 1.0]]
    activation_forward(Z, A, ACTIVATIONS["leaky_relu"])
    assert A.tolist() == [[0.0, -0.02, 3.0]]
    activation_backward(np.ones_like(Z), A, dZ, ACTIVATIONS["leaky_relu"])
    assert dZ.tolist() == [[0.01, 0.01, 1.0]]


# -- batch norm -------------------------------------------------------------------------------
def _bn_buffers(m, n):
    return (np.empty((m, n)), np.empty((m, n)), np.empty(n), np.empty(n), np.empty(n))


def test_batchnorm_train_forward_uses_batch_mean_and_biased_variance(rng):
    m, n, eps = 9, 4, 1e-5
    Z = rng.normal(size=(m, n)) * [1, 3, 0.1, 10] + [0, 5, -2, 100]
    gamma, beta = rng.normal(size=n), rng.normal(size=n)
    Zhat, Out, mean, var, inv_std = _bn_buffers(m, n)
    batchnorm_forward_train(Z, gamma, beta, Zhat, Out, mean, var, inv_std, eps)
    expected, (_, ref_mean, ref_var, ref_zhat) = ref.bn_train(Z, gamma, beta, eps)
    assert_allclose(mean, ref_mean, **TIGHT)
    assert_allclose(var, ref_var, **TIGHT)                 # ddof=0
    assert_allclose(inv_std, 1 / np.sqrt(ref_var + eps), **TIGHT)
    assert_allclose(Zhat, ref_zhat, rtol=1e-9, atol=1e-12)
    assert_allclose(Out, expected, rtol=1e-9, atol=1e-12)


def test_batchnorm_backward_matches_textbook_chain_rule(rng):
    m, n, eps = 8, 5, 1e-5
    Z = rng.normal(size=(m, n)) * 2 + 1
    gamma, beta = rng.normal(size=n), rng.normal(size=n)
    Zhat, Out, mean, var, inv_std = _bn_buffers(m, n)
    batchnorm_forward_train(Z, gamma, beta, Zhat, Out, mean, var, inv_std, eps)
    dOut = rng.normal(size=(m, n))
    dgamma, dbeta, dZ, scratch = np.empty(n), np.empty(n), np.empty((m, n)), np.empty(n)
    batchnorm_backward(dOut, Zhat, gamma, inv_std, dgamma, dbeta, dZ, scratch)
    _, cache = ref.bn_train(Z, gamma, beta, eps)
    ref_dZ, ref_dgamma, ref_dbeta = ref.bn_backward(dOut, cache, gamma, eps)
    assert_allclose(dgamma, ref_dgamma, rtol=1e-9, atol=1e-12)
    assert_allclose(dbeta, ref_dbeta, **TIGHT)
    assert_allclose(dZ, ref_dZ, rtol=1e-8, atol=1e-11)
    # in place (dZ aliasing dOut), as the network runs it
    batchnorm_backward(dOut, Zhat, gamma, inv_std, dgamma, dbeta, dOut, scratch)
    assert_allclose(dOut, ref_dZ, rtol=1e-8, atol=1e-11)


def test_batchnorm_eval_uses_running_statistics(rng):
    m, n, eps = 5, 3, 1e-3
    Z = rng.normal(size=(m, n))
    gamma, beta = rng.normal(size=n), rng.normal(size=n)
    rmean, rvar = rng.normal(size=n), rng.uniform(0.5, 2.0, size=n)
    Out = np.empty_like(Z)
    batchnorm_forward_eval(Z, gamma, beta, rmean, rvar, eps, Out)
    assert_allclose(Out, ref.bn_eval(Z, gamma, beta, rmean, rvar, eps), **TIGHT)
    batchnorm_forward_eval(Z, gamma, beta, rmean, rvar, eps, Z)    # in place
    assert_allclose(Z, Out, **TIGHT)


def test_batchnorm_running_update_is_ewma_of_mean_and_unbiased_variance(rng):
    m, n, beta = 6, 4, 0.9
    rmean, rvar = np.zeros(n), np.ones(n)
    ref_mean, ref_var = rmean.copy(), rvar.copy()
    for _ in range(5):
        Z = rng.normal(size=(m, n)) * 3 + 2
        batchnorm_update_running(rmean, rvar, Z.mean(axis=0), Z.var(axis=0), m, beta)
        ref_mean, ref_var = ref.bn_running_update(ref_mean, ref_var, Z, beta)
    assert_allclose(rmean, ref_mean, **TIGHT)
    assert_allclose(rvar, ref_var, **TIGHT)


# -- dropout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.8])
def test_dropout_keeps_expected_activation(seed, rng, keep):
    A = rng.uniform(0.5, 1.5, size=(50, 40))
    mask, Out = np.empty_like(A), np.empty_like(A)
    state = seed_state(seed)
    total = np.zeros_like(A)
    kept = 0
    draws = 200
    for _ in range(draws):
        dropout_forward(A, mask, Out, keep, state, bits_buffer(A.shape[1]))
        assert set(np.unique(mask)) <= {0.0, 1.0 / keep}
        assert_allclose(Out, A * mask, **TIGHT)
        total += Out
        kept += np.count_nonzero(mask)
    assert abs(kept / (draws * A.size) - keep) < 0.01
    # inverted dropout: the mean activation over many masks is the undropped one
    assert abs(total.mean() / draws / A.mean() - 1.0) < 0.01


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 4, 7, 128, 255])
def test_dropout_decides_each_unit_from_16_bits_of_the_draws_in_order(seed, rng, dtype, n):
    """The kernel against the definition, one row at a time: a 64-bit draw every four
    units, unit j kept when its 16 bits (the draw shifted down 16 * (j % 4)) are below
    keep_prob * 2^16; kept units scaled by 1/keep_prob.  The same masks, outputs and
    final generator state, whatever the row width."""
    m, keep = 5, 0.7
    A = rng.normal(size=(m, n)).astype(dtype)
    mask, Out = np.empty_like(A), np.empty_like(A)
    state, ref_state = seed_state(seed), seed_state(seed)
    dropout_forward(A, mask, Out, keep, state, bits_buffer(n))
    threshold = int(keep * 65536 + 0.5)
    ref_mask = np.empty_like(A)
    for i in range(m):
        for j in range(n):
            if j % 4 == 0:
                r = int(next_uint64(ref_state))
            ref_mask[i, j] = 1.0 / keep if (r & 0xFFFF) < threshold else 0.0
            r >>= 16
    assert np.array_equal(mask, ref_mask)
    assert np.array_equal(Out, A * ref_mask)
    assert np.array_equal(state, ref_state)


def test_dropout_is_reproducible_from_rng_state_and_backward_applies_mask(seed, rng):
    A = rng.normal(size=(8, 6))
    s1, s2 = seed_state(seed), seed_state(seed)
    m1, m2, o1, o2 = (np.empty_like(A) for _ in range(4))
    dropout_forward(A, m1, o1, 0.6, s1, bits_buffer(A.shape[1]))
    dropout_forward(A, m2, o2, 0.6, s2, bits_buffer(A.shape[1]))
    assert np.array_equal(m1, m2) and np.array_equal(s1, s2)
    assert not np.array_equal(s1, seed_state(seed))        # the state advanced
    dropout_forward(A, m2, o2, 0.6, s2, bits_buffer(A.shape[1]))
    assert not np.array_equal(m1, m2)                       # a new mask next time
    dOut = rng.normal(size=A.shape)
    dA = np.empty_like(A)
    dropout_backward(dOut, m1, dA)
    assert_allclose(dA, dOut * m1, **TIGHT)


def test_xoshiro_outputs_match_a_plain_python_xoshiro256starstar(seed):
    """next_uint64 and xoshiro_fill against the published algorithm written in plain
    Python integers: the same outputs and the same state after them."""
    mask64 = (1 << 64) - 1

    def rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & mask64

    def reference(state, n):
        s = [int(w) for w in state]
        out = []
        for _ in range(n):
            out.append(rotl((s[1] * 5) & mask64, 7) * 9 & mask64)
            t = (s[1] << 17) & mask64
            s[2] ^= s[0]
            s[3] ^= s[1]
            s[1] ^= s[2]
            s[0] ^= s[3]
            s[2] ^= t
            s[3] = rotl(s[3], 45)
        return out, s

    state = seed_state(seed)
    expected, expected_state = reference(state, 37)
    one_by_one = seed_state(seed)
    assert [int(next_uint64(one_by_one)) for _ in range(37)] == expected
    assert [int(w) for w in one_by_one] == expected_state
    filled, out = seed_state(seed), np.zeros(40, np.uint64)
    xoshiro_fill(filled, out, 37)
    assert [int(v) for v in out[:37]] == expected and not out[37:].any()
    assert [int(w) for w in filled] == expected_state


def test_rng_uniforms_are_uniform_on_unit_interval(seed):
    state = seed_state(seed)
    u = np.array([next_uniform(state) for _ in range(20000)])
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert abs(u.var() - 1 / 12) < 0.005
    assert not np.array_equal(seed_state(seed), seed_state(seed + 1))
    assert seed_state(0).any()


# -- losses -----------------------------------------------------------------------------------
def _head_targets(task, m, K, rng):
    if task == "multiclass":
        return np.eye(K)[rng.integers(0, K, size=m)]
    if task in ("binary", "multilabel"):
        Y = rng.integers(0, 2, size=(m, K)).astype(np.float64)
        if task == "multilabel":
            Y[0, 1] = Y[3, 0] = np.nan
        return Y
    return rng.normal(size=(m, K))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("task", TASKS)
def test_each_head_loss_and_fused_gradient_match_numpy(rng, task, weighted):
    m = 6
    K = 1 if task == "binary" else 3
    Z = rng.normal(size=(m, K)) * 3
    Y = _head_targets(task, m, K, rng)
    raw_w = rng.uniform(0.1, 3.0, size=m) if weighted else None
    w = raw_w / raw_w.mean() if weighted else np.empty(0)
    P, dZ = np.empty((m, K)), np.empty((m, K))
    loss = head_loss(HEADS[task], Z, Y, w, P, dZ)
    ref_loss, ref_dZ = ref.weighted_mean_loss(task, Z, Y, raw_w)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert_allclose(dZ, ref_dZ, **TIGHT)
    assert_allclose(P, ref.head_output(task, Z), **TIGHT)
    out = np.empty((m, K))
    head_output(HEADS[task], Z, out)
    assert_allclose(out, ref.head_output(task, Z), **TIGHT)


def test_multilabel_nan_label_contributes_nothing(rng):
    m, K = 5, 3
    Z = rng.normal(size=(m, K))
    Y = rng.integers(0, 2, size=(m, K)).astype(np.float64)
    P, dZ = np.empty((m, K)), np.empty((m, K))
    head = HEADS["multilabel"]
    full = head_loss(head, Z, Y, np.empty(0), P, dZ)
    Ynan = Y.copy()
    Ynan[2, 1] = np.nan
    dZ_nan = np.empty((m, K))
    masked = head_loss(head, Z, Ynan, np.empty(0), P, dZ_nan)
    assert dZ_nan[2, 1] == 0.0
    mask = np.ones((m, K), bool)
    mask[2, 1] = False
    assert_allclose(dZ_nan[mask], dZ[mask], **TIGHT)
    entry = (np.logaddexp(0, -Z[2, 1]) if Y[2, 1] == 1 else np.logaddexp(0, Z[2, 1])) / m
    assert masked == pytest.approx(full - entry, rel=1e-12)


def test_heads_are_stable_at_extreme_logits():
    Z = np.array([[1000.0, 0.0, -1000.0], [-800.0, -800.0, -799.0]])
    Y = np.eye(3)[[0, 2]]
    P, dZ = np.empty((2, 3)), np.empty((2, 3))
    loss = head_loss(HEADS["multiclass"], Z, Y, np.empty(0), P, dZ)
    assert np.isfinite(loss) and np.all(np.isfinite(P)) and np.all(np.isfinite(dZ))
    assert loss == pytest.approx(ref.weighted_mean_loss("multiclass", Z, Y)[0], rel=1e-12)
    P2 = np.empty_like(P)
    softmax_rows(Z, P2)
    assert_allclose(P2.sum(axis=1), 1.0)
    Zs = np.array([[800.0], [-800.0]])
    Ys = np.array([[0.0], [1.0]])
    loss = head_loss(HEADS["binary"], Zs, Ys, np.empty(0), np.empty((2, 1)), np.empty((2, 1)))
    assert loss == pytest.approx(800.0, rel=1e-12)


# -- regularization -----------------------------------------------------------------------------
def test_weight_penalty_and_its_gradient_match_numpy(rng):
    W = rng.normal(size=12)
    W[3] = 0.0
    l2, l1 = 0.3, 0.07
    assert weight_penalty(W, l2, l1) == pytest.approx(0.5 * l2 * (W @ W) + l1 * np.abs(W).sum(), rel=1e-12)
    g = rng.normal(size=12)
    expected = g + l2 * W + l1 * np.sign(W)                 # sign(0) = 0
    add_weight_penalty_grad(W, g, l2, l1)
    assert_allclose(g, expected, **TIGHT)


# -- optimizer kernels ------------------------------------------------------------------------
TINY64 = np.finfo(np.float64).tiny

def test_optimizer_kernels_match_formulas_with_gradient_scale(rng):
    n, lr, b1, b2, eps, scale = 10, 0.05, 0.8, 0.95, 1e-8, 0.3
    theta0, g = rng.normal(size=n), rng.normal(size=n)
    gs = scale * g

    th = theta0.copy()
    sgd_step(th, g, scale, lr)
    assert_allclose(th, theta0 - lr * gs, **TIGHT)

    th, v = theta0.copy(), rng.normal(size=n)
    v0 = v.copy()
    momentum_step(th, g, v, scale, lr, b1, 1 - b1, TINY64)
    assert_allclose(v, b1 * v0 + (1 - b1) * gs, **TIGHT)
    assert_allclose(th, theta0 - lr * v, **TIGHT)

    th, s = theta0.copy(), rng.uniform(0, 1, size=n)
    s0 = s.copy()
    rmsprop_step(th, g, s, scale, lr, b2, 1 - b2, eps, TINY64)
    assert_allclose(s, b2 * s0 + (1 - b2) * gs ** 2, **TIGHT)
    assert_allclose(th, theta0 - lr * gs / (np.sqrt(s) + eps), **TIGHT)

    t = 4
    th, v, s = theta0.copy(), v0.copy(), s0.copy()
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
    adam_step(th, g, v, s, scale, lr / c1, b1, 1 - b1, b2, 1 - b2, 1 / c2, eps, TINY64)
    v_ref, s_ref = b1 * v0 + (1 - b1) * gs, b2 * s0 + (1 - b2) * gs ** 2
    assert_allclose(v, v_ref, **TIGHT)
    assert_allclose(s, s_ref, **TIGHT)
    vhat, shat = v_ref / (1 - b1 ** t), s_ref / (1 - b2 ** t)
    assert_allclose(th, theta0 - lr * vhat / (np.sqrt(shat) + eps), **TIGHT)


def test_optimizer_kernels_store_subnormal_moments_as_zero(rng):
    """A moment that decays below the smallest normal float is stored as 0 (subnormal
    arithmetic is slow on x86); every other entry is the plain formula, in float32 as
    in float64, and theta moves as the formula with the flushed moment says."""
    for dtype in (np.float32, np.float64):
        tiny = np.finfo(dtype).tiny
        n, lr, b1, b2, eps = 8, dtype(1e-3), dtype(0.9), dtype(0.999), dtype(1e-8)
        theta0 = rng.normal(size=n).astype(dtype)
        g = np.zeros(n, dtype)                       # a dead unit's weights: no gradient
        g[:2] = rng.normal(size=2)                   # two live ones
        # entries 2-4 decay into the subnormals this step; 5-7 stay normal (3 tiny / b)
        v0 = np.array([0.1, -0.1, tiny, -tiny, 1.05 * tiny, 3 * tiny, -3 * tiny, 0.5], dtype)
        s0 = np.array([0.1, 0.1, tiny, tiny, 1.0001 * tiny, 3 * tiny, 2 * tiny, 0.5], dtype)
        one = dtype(1)

        def flushed(x):
            return np.where(np.abs(x) < tiny, dtype(0), x)

        th, v = theta0.copy(), v0.copy()
        momentum_step(th, g, v, one, lr, b1, one - b1, dtype(tiny))
        v_ref = flushed(b1 * v0 + (one - b1) * g)
        assert_allclose(v, v_ref, rtol=1e-6, atol=0)
        assert np.all(v[2:5] == 0) and np.all(v[5:] != 0)
        assert_allclose(th, theta0 - lr * v_ref, rtol=1e-6)

        th, s = theta0.copy(), s0.copy()
        rmsprop_step(th, g, s, one, lr, b2, one - b2, eps, dtype(tiny))
        s_ref = flushed(b2 * s0 + (one - b2) * g * g)
        assert_allclose(s, s_ref, rtol=1e-6, atol=0)
        assert np.all(s[2:4] == 0) and np.all(s[5:] != 0)

        th, v, s = theta0.copy(), v0.copy(), s0.copy()
        adam_step(th, g, v, s, one, lr, b1, one - b1, b2, one - b2, one, eps, dtype(tiny))
        assert_allclose(v, v_ref, rtol=1e-6, atol=0)
        assert_allclose(s, s_ref, rtol=1e-6, atol=0)
        assert_allclose(th, theta0 - lr * v_ref / (np.sqrt(s_ref) + eps), rtol=1e-6)
        assert np.count_nonzero((v != 0) & (np.abs(v) < tiny)) == 0
        assert np.count_nonzero((s != 0) & (s < tiny)) == 0


def test_a_dead_units_moments_go_from_normal_to_zero_without_subnormals(rng):
    """Through the Model: a unit that never fires (no gradient into its weights) has
    moments that decay step by step; at no step is one of them subnormal, and they end
    at exactly 0 (without the flush they would spend ~150 of these steps subnormal)."""
    from learnd.engine import Model
    for optimizer in ("adam", "momentum", "rmsprop"):
        model = Model(hidden=(4,), task="binary", input_dim=3, optimizer=optimizer, beta1=0.9, beta2=0.9,
                      normalize_inputs=False)
        X = rng.normal(size=(16, 3)).astype(np.float32)
        y = rng.integers(0, 2, 16)
        model.partial_fit(X, y)
        params = model.network.params
        params["W1"][0] = 0.0
        params["b1"][0] = -100.0            # unit 0 never fires again
        start, shape = model.network.layout.param_slices["W1"]
        dead = slice(start, start + shape[1])
        tiny = np.finfo(np.float32).tiny
        smallest_seen = np.inf
        for _ in range(1200):               # 0.9^1200 ~ 1e-55: past the subnormals
            model.partial_fit(X, y)
            for moment in model.optimizer.state.values():
                m = np.abs(moment[dead])
                assert not np.any((m != 0) & (m < tiny))
                if np.any(m != 0):
                    smallest_seen = min(smallest_seen, m[m != 0].min())
        assert smallest_seen < 1e-37          # the moments did reach the edge of the normals
        for moment in model.optimizer.state.values():
            assert np.all(moment[dead] == 0)


def test_global_norm_is_l2_norm_and_propagates_non_finite(rng):
    g = rng.normal(size=50).astype(np.float32)
    assert global_norm(g) == pytest.approx(np.linalg.norm(g.astype(np.float64)), rel=1e-12)
    big = np.full(4, 3e20, dtype=np.float32)                # squares overflow float32, not float64
    assert global_norm(big) == pytest.approx(6e20, rel=1e-6)
    assert sum_of_squares(g) == pytest.approx(np.sum(g.astype(np.float64) ** 2), rel=1e-12)
    assert sum_of_squares(g[:0]) == 0.0
    g[7] = np.inf
    assert not np.isfinite(global_norm(g))
    g[7] = np.nan
    assert not np.isfinite(global_norm(g))


# -- input normalization kernels --------------------------------------------------------------
def test_welford_merge_matches_numpy_over_all_batches(rng):
    n = 4
    count, mean, m2 = 0.0, np.zeros(n), np.zeros(n)
    new_mean, new_m2 = np.empty(n), np.empty(n)
    seen = []
    for m in (1, 7, 3, 50, 2):
        X = rng.normal(size=(m, n)) * [1, 10, 0.01, 1] + [1e6, -3, 0, 5]
        seen.append(X)
        count = welford_merge(X, count, mean, m2, new_mean, new_m2)
        mean, new_mean = new_mean, mean
        m2, new_m2 = new_m2, m2
    allX = np.concatenate(seen)
    assert count == len(allX)
    assert_allclose(mean, allX.mean(axis=0), rtol=1e-12)
    assert_allclose(m2 / count, allX.var(axis=0), rtol=1e-7)


def test_normalizer_scale_centres_constant_features_and_passes_before_data():
    shift, inv = np.empty(3), np.empty(3)
    normalizer_scale(0.0, np.array([5.0, 1, 2]), np.array([9.0, 1, 1]), shift, inv)
    assert shift.tolist() == [0, 0, 0] and inv.tolist() == [1, 1, 1]
    count = 10.0
    m2 = np.array([4.0 * count, (1e-9) ** 2 * count, 0.0])        # std 2, 1e-9, 0
    normalizer_scale(count, np.array([1.0, 2.0, 3.0]), m2, shift, inv)
    assert shift.tolist() == [1.0, 2.0, 3.0]
    assert_allclose(inv, [0.5, 1.0, 1.0])


def test_normalize_into_and_count_nonfinite(rng):
    X = rng.normal(size=(4, 3))
    shift, inv = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    out32 = np.empty((4, 3), dtype=np.float32)
    normalize_into(X, shift, inv, out32)
    assert_allclose(out32, (X - shift) * inv, rtol=1e-6)
    assert count_nonfinite(X) == 0
    X[0, 0], X[2, 1], X[3, 2] = np.nan, np.inf, -np.inf
    assert count_nonfinite(X) == 3


# -- label kernels ----------------------------------------------------------------------------
def test_label_kernels():
    Y = np.full((3, 4), -1.0)
    assert class_ids_to_onehot(np.array([2, 0, 3]), 4, Y) == -1
    assert np.array_equal(Y, np.eye(4)[[2, 0, 3]])
    Y[...] = 7.0
    assert class_ids_to_onehot(np.array([1, 4, 0]), 4, Y) == 1
    assert np.all(Y == 7.0)                                     # untouched when an id is bad
    assert class_ids_to_onehot(np.array([0, -1]), 4, Y[:2]) == 1
    assert first_bad_binary(np.array([[0.0, 1.0], [1.0, np.nan]]), True) == -1
    assert first_bad_binary(np.array([[0.0, 1.0], [1.0, np.nan]]), False) == 1
    assert first_bad_binary(np.array([[0.0, 0.5]]), True) == 0
    assert first_bad_onehot(np.array([[0.2, 0.8], [1.0, 0.0]]), 1e-3) == -1
    assert first_bad_onehot(np.array([[1.0, 0.0], [0.5, 0.6]]), 1e-3) == 1
    assert first_bad_onehot(np.array([[1.5, -0.5]]), 1e-3) == 0
    dst = np.empty((2, 2), dtype=np.float32)
    copy_into(np.array([[1, 2], [3, 4]]), dst)
    assert dst.tolist() == [[1, 2], [3, 4]]


# -- whole-network kernels: a training step and inference against the reference -------------
def check_step_against_reference(model, X, y, w, lr, masks_expected=False):
    """One sgd partial_fit: loss, gradient, update, running stats and inference agree
    with the NumPy reference network."""
    net = ref.Net(model.spec)
    K = model.spec.n_outputs
    P0, S0 = ref.params64(model), ref.stats64(model)
    loss = model.partial_fit(X, y, sample_weight=w)
    norm = model.normalizer
    shift, inv = norm.shift.astype(np.float64), norm.inv_scale.astype(np.float64)
    masks = dropout_masks(model, len(X))
    assert bool(masks) == masks_expected
    ref_loss, ref_grads, batch_Z = ref.forward_backward(
        net, P0, X, targets(model.spec.task, y, K), w, shift, inv, masks,
        model.spec.l2, model.spec.l1)
    tol = dict(rtol=1e-9, atol=1e-12) if model.dtype == np.float64 else dict(rtol=2e-3, atol=2e-5)
    assert loss == pytest.approx(ref_loss, rel=tol["rtol"])
    for name, g in ref_grads.items():
        assert_allclose(model.network.grads[name], g, err_msg=name, **tol)
    assert set(ref_grads) == set(model.network.grads)
    for name, p in model.network.params.items():          # sgd: theta -= lr * g
        assert_allclose(p, P0[name] - lr * ref_grads[name], err_msg=name, **tol)
    for l, Z in batch_Z.items():
        rm, rv = ref.bn_running_update(S0[f"running_mean{l}"], S0[f"running_var{l}"], Z,
                                       model.spec.bn_beta)
        assert_allclose(model.network.stats[f"running_mean{l}"], rm, **tol)
        assert_allclose(model.network.stats[f"running_var{l}"], rv, **tol)
    proba = ref.predict_proba(net, ref.params64(model), ref.stats64(model), X, shift, inv)
    assert_allclose(model.predict_proba(X), proba, **tol)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_network_step_matches_reference(rng, activation, task, batch_norm):
    lr = 0.05
    model = Model(hidden=(4, 3), activation=activation, task=task, n_outputs=N_OUTPUTS[task],
                  batch_norm=batch_norm, l2=0.02, l1=0.01, optimizer="sgd", lr=lr,
                  dtype="float64", seed=3)
    for _ in range(3):
        model.partial_fit(*batch(task, 6, 5, rng, scale=2.0, offset=1.0))
    X, y = batch(task, 6, 5, rng, scale=2.0, offset=1.0)
    check_step_against_reference(model, X, y, rng.uniform(0.2, 3.0, size=6), lr)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hidden", [(), (5,), (6, 5, 4)], ids=["0-hidden", "1-hidden", "3-hidden"])
def test_network_step_matches_reference_for_any_depth_with_dropout(rng, hidden, dtype):
    lr = 0.1
    model = Model(hidden=hidden, activation=("tanh", "relu", "leaky_relu")[:len(hidden)] or "relu",
                  task="multiclass", n_outputs=4, keep_prob=0.7, optimizer="sgd", lr=lr,
                  dtype=dtype, seed=5)
    for _ in range(2):
        model.partial_fit(*batch("multiclass", 10, 6, rng, n_outputs=4))
    X, y = batch("multiclass", 10, 6, rng, n_outputs=4)
    check_step_against_reference(model, X, y, None, lr, masks_expected=bool(hidden))
