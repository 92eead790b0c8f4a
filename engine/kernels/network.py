"""Whole-network passes over flat buffers: one kernel call per forward+backward.

Parameters live in one flat buffer `params` (and their gradients in `grads`, laid out
alike); per-layer views are cut from it with offsets held in the int64 table `layers`
(one row per layer, columns below). Activations live in one flat workspace `work`
holding `cap` rows: a slot of layer l with n units starts at `slot * cap` and is
viewed as (m, n) for a batch of m <= cap rows. Per-feature batch-norm scratch lives
in `feat`, and the running statistics in `stats`.
"""
import numpy as np
from numba import njit

from .activations import activation_backward, activation_forward
from .batchnorm import batchnorm_forward_eval, batchnorm_update_running
from .blas import matmul_nn
from .dense import dense_backward, dense_forward
from .hidden import hidden_backward, hidden_forward_train
from .losses import head_loss
from .normalize import normalize_into
from .optim import sum_of_squares
from .regularization import add_weight_penalty_and_grad, weight_penalty

# Columns of the `layers` table.  Offsets are -1 where a layer has no such array.
N_IN = 0
N_OUT = 1
OFF_W = 2         # W: (n_out, n_in) in params/grads
OFF_B = 3         # b: (n_out,)
OFF_GAMMA = 4     # gamma: (n_out,)
OFF_BETA = 5      # beta: (n_out,)
OFF_RMEAN = 6     # running_mean: (n_out,) in stats
OFF_RVAR = 7      # running_var: (n_out,) in stats
OFF_FEAT = 8      # batch mean, var, inv_std, scratch: 4 x (n_out,) in feat
ACT = 9           # activation code (hidden layers)
SLOT_Z = 10       # pre-activation Z; batch norm's output overwrites it in place
SLOT_ZHAT = 11    # normalized Zhat (batch norm)
SLOT_A = 12       # activation g(Z) before dropout; the head's P on the output layer
SLOT_MASK = 13    # dropout mask (0 or 1/keep_prob)
SLOT_DROP = 14    # activation after dropout
SLOT_G = 15       # gradient: dA arrives here, becomes dZ in place
N_COLUMNS = 16
SLOT_INPUT = 0    # the normalized input A0 always starts the workspace


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rows(buf, slot, cap, m, n):
    o = slot * cap
    return buf[o:o + m * n].reshape((m, n))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _seg(buf, off, size):
    if off < 0:
        return buf[0:0]
    return buf[off:off + size]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _matrix(buf, off, n_out, n_in):
    return buf[off:off + n_out * n_in].reshape((n_out, n_in))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _layer_input(work, layers, l, cap, m, dropout_on, keep):
    """The (m, n_in) array layer l reads: A0, or the previous layer's (dropped) output."""
    if l == 0:
        return _rows(work, SLOT_INPUT, cap, m, layers[0, N_IN])
    p = l - 1
    if dropout_on and keep[p] < 1.0:
        return _rows(work, layers[p, SLOT_DROP], cap, m, layers[p, N_OUT])
    return _rows(work, layers[p, SLOT_A], cap, m, layers[p, N_OUT])


@njit(cache=True, nogil=True, error_model="numpy")
def loss_and_grad(X, Y, w, shift, inv_scale, params, grads, layers, keep, head,
                  bn_eps, l2, l1, work, cap, feat, rng_state, dropout_on, compute_grad, bits):
    """J on a training batch (batch statistics, dropout when dropout_on) and, when
    compute_grad, its gradient with respect to every parameter into `grads`.

    X: (m, n0) raw inputs, normalized here with shift, inv_scale (n0,).
    Y: (m, K) targets  w: (m,) weights over their mean, or (0,).
    keep: (L,) keep probabilities (1 for the output layer).  rng_state: uint64[4].
    bits: dropout's uint64 scratch, at least ceil(widest hidden layer / 4) words.
    Returns (J, sum of grads^2): J = (1/m) sum w_i L_i + (l2/2) sum ||W||^2 + l1 sum |W|,
    and the squared global norm of the gradient (NaN when not compute_grad), so that
    clipping and the finiteness check need no pass of their own over `grads`.
    """
    m = X.shape[0]
    L = layers.shape[0]
    A0 = _rows(work, SLOT_INPUT, cap, m, layers[0, N_IN])
    normalize_into(X, shift, inv_scale, A0)
    penalty = 0.0
    for l in range(L):
        n_in = layers[l, N_IN]
        n_out = layers[l, N_OUT]
        W = _matrix(params, layers[l, OFF_W], n_out, n_in)
        b = _seg(params, layers[l, OFF_B], n_out)
        Z = _rows(work, layers[l, SLOT_Z], cap, m, n_out)
        dense_forward(_layer_input(work, layers, l, cap, m, dropout_on, keep), W, b, Z)
        if not compute_grad and (l2 != 0.0 or l1 != 0.0):
            # with the gradient, the pass after backward sums the penalty as it adds its gradient
            penalty += weight_penalty(_seg(params, layers[l, OFF_W], n_out * n_in), l2, l1)
        if l == L - 1:
            break
        f = layers[l, OFF_FEAT]
        bn = layers[l, OFF_GAMMA] >= 0
        drop = dropout_on and keep[l] < 1.0
        hidden_forward_train(
            Z, bn, _seg(params, layers[l, OFF_GAMMA], n_out), _seg(params, layers[l, OFF_BETA], n_out),
            _rows(work, layers[l, SLOT_ZHAT], cap, m, n_out) if bn else Z,
            _seg(feat, f, n_out), _seg(feat, f + n_out, n_out), _seg(feat, f + 2 * n_out, n_out), bn_eps,
            layers[l, ACT], _rows(work, layers[l, SLOT_A], cap, m, n_out), drop,
            _rows(work, layers[l, SLOT_MASK], cap, m, n_out) if drop else Z,
            _rows(work, layers[l, SLOT_DROP], cap, m, n_out) if drop else Z, keep[l], rng_state, bits)

    n_last = layers[L - 1, N_OUT]
    loss = head_loss(head, _rows(work, layers[L - 1, SLOT_Z], cap, m, n_last), Y, w,
                     _rows(work, layers[L - 1, SLOT_A], cap, m, n_last),
                     _rows(work, layers[L - 1, SLOT_G], cap, m, n_last)) + penalty
    if not compute_grad:
        return loss, np.nan

    for l in range(L - 1, -1, -1):
        n_in = layers[l, N_IN]
        n_out = layers[l, N_OUT]
        dZ = _rows(work, layers[l, SLOT_G], cap, m, n_out)
        if l < L - 1:
            # dZ holds dA of this layer's (dropped) output; turn it into dZ in place.
            f = layers[l, OFF_FEAT]
            bn = layers[l, OFF_GAMMA] >= 0
            drop = dropout_on and keep[l] < 1.0
            hidden_backward(dZ, _rows(work, layers[l, SLOT_A], cap, m, n_out), layers[l, ACT], drop,
                            _rows(work, layers[l, SLOT_MASK], cap, m, n_out) if drop else dZ, bn,
                            _rows(work, layers[l, SLOT_ZHAT], cap, m, n_out) if bn else dZ,
                            _seg(params, layers[l, OFF_GAMMA], n_out), _seg(feat, f + 2 * n_out, n_out),
                            _seg(grads, layers[l, OFF_GAMMA], n_out), _seg(grads, layers[l, OFF_BETA], n_out),
                            _seg(feat, f + 3 * n_out, n_out))
        if l > 0:
            dA_prev = _rows(work, layers[l - 1, SLOT_G], cap, m, n_in)
        else:
            dA_prev = work[0:0].reshape((0, 0))
        dense_backward(dZ, _layer_input(work, layers, l, cap, m, dropout_on, keep),
                       _matrix(params, layers[l, OFF_W], n_out, n_in),
                       _matrix(grads, layers[l, OFF_W], n_out, n_in),
                       _seg(grads, layers[l, OFF_B], n_out), dA_prev)

    # One pass over each layer's gradient once the GEMMs are done: the penalty's gradient
    # goes in and the squares are summed in the same loop (measured on W1, 784-256-128-10
    # at 2 BLAS threads: the penalty added inside the backward loop and a norm pass of its
    # own afterwards cost 50-80 us more than this pass).
    grad_sq = 0.0
    for l in range(L):
        n_out = layers[l, N_OUT]
        size = n_out * layers[l, N_IN]
        dW = _seg(grads, layers[l, OFF_W], size)
        if l2 != 0.0 or l1 != 0.0:
            layer_penalty, sq = add_weight_penalty_and_grad(_seg(params, layers[l, OFF_W], size), dW, l2, l1)
            loss += layer_penalty
        else:
            sq = sum_of_squares(dW)
        grad_sq += (sq + sum_of_squares(_seg(grads, layers[l, OFF_B], n_out))
                    + sum_of_squares(_seg(grads, layers[l, OFF_GAMMA], n_out))
                    + sum_of_squares(_seg(grads, layers[l, OFF_BETA], n_out)))
    return loss, grad_sq


@njit(cache=True, nogil=True, error_model="numpy")
def inference_logits(X, shift, inv_scale, params, stats, layers, bn_eps, work, cap):
    """The inference forward pass up to the head: running statistics, no dropout.

    X: (m, n0) raw inputs, normalized into the input slot of `work` (`cap` >= m rows of
    every Z slot); each layer computes in place in its Z slot, so a hidden layer's slot
    ends up holding its activation A.  Returns the last layer's Z, (m, K), a view of work.
    """
    m = X.shape[0]
    L = layers.shape[0]
    A_prev = _rows(work, SLOT_INPUT, cap, m, layers[0, N_IN])
    normalize_into(X, shift, inv_scale, A_prev)
    for l in range(L - 1):
        n_in = layers[l, N_IN]
        n_out = layers[l, N_OUT]
        Z = _rows(work, layers[l, SLOT_Z], cap, m, n_out)
        dense_forward(A_prev, _matrix(params, layers[l, OFF_W], n_out, n_in),
                      _seg(params, layers[l, OFF_B], n_out), Z)
        if layers[l, OFF_GAMMA] >= 0:
            batchnorm_forward_eval(Z, _seg(params, layers[l, OFF_GAMMA], n_out),
                                   _seg(params, layers[l, OFF_BETA], n_out),
                                   _seg(stats, layers[l, OFF_RMEAN], n_out),
                                   _seg(stats, layers[l, OFF_RVAR], n_out), bn_eps, Z)
        activation_forward(Z, Z, layers[l, ACT])
        A_prev = Z
    n_in = layers[L - 1, N_IN]
    n_out = layers[L - 1, N_OUT]
    Z = _rows(work, layers[L - 1, SLOT_Z], cap, m, n_out)
    dense_forward(A_prev, _matrix(params, layers[L - 1, OFF_W], n_out, n_in),
                  _seg(params, layers[L - 1, OFF_B], n_out), Z)
    return Z


@njit(cache=True, nogil=True, error_model="numpy")
def input_loss_and_grad(X, Y, w, shift, inv_scale, params, stats, layers, head, bn_eps,
                        work, cap, P, dZ, scratch, dX, compute_grad):
    """Inference-mode J on (X, Y, w) and, when compute_grad, dJ/dX into dX: the
    gradient with respect to the raw inputs, through the input normalizer.

    Inference mode (running statistics, no dropout) makes each row's gradient depend
    on that row alone, as the attacked prediction does.  The weights' penalty does
    not depend on X and is left out of J.
    X: (m, n0) raw inputs  Y: (m, K) targets in the units the head learns  w: (m,)
    weights over their mean, or (0,).  `layers` is an inference table (Layout.infer_table):
    each hidden layer's Z slot of `work` (`cap` rows) ends up holding its activation A,
    which the backward pass overwrites with dZ.  P, dZ: (m, K) scratch for the head.
    scratch: at least m * (widest hidden layer) values.  dX: (m, n0).
    Backward of A0 = (X - shift) * inv_scale:  dX = (dZ1 W1) * inv_scale.
    """
    m = X.shape[0]
    L = layers.shape[0]
    loss = head_loss(head, inference_logits(X, shift, inv_scale, params, stats, layers, bn_eps, work, cap),
                     Y, w, P, dZ)
    if not compute_grad:
        return loss
    G = dZ
    for l in range(L - 1, -1, -1):
        n_in = layers[l, N_IN]
        W = _matrix(params, layers[l, OFF_W], layers[l, N_OUT], n_in)
        if l == 0:
            matmul_nn(G, W, dX)
            break
        p = l - 1
        dA = scratch[:m * n_in].reshape((m, n_in))
        matmul_nn(G, W, dA)
        # Layer p's slot holds A = g(Y), Y = gamma (Z - running_mean) / sqrt(running_var + eps)
        # + beta (or Y = Z); dZ = dA g'(A) [* gamma / sqrt(running_var + eps)] replaces A.
        A = _rows(work, layers[p, SLOT_Z], cap, m, n_in)
        activation_backward(dA, A, A, layers[p, ACT])
        if layers[p, OFF_GAMMA] >= 0:
            gamma = _seg(params, layers[p, OFF_GAMMA], n_in)
            rvar = _seg(stats, layers[p, OFF_RVAR], n_in)
            for j in range(n_in):
                scale = gamma[j] / np.sqrt(rvar[j] + bn_eps)
                for i in range(m):
                    A[i, j] *= scale
        G = A
    n0 = layers[0, N_IN]
    for i in range(m):
        for j in range(n0):
            dX[i, j] *= inv_scale[j]
    return loss


@njit(cache=True, nogil=True, error_model="numpy")
def update_running_stats(stats, feat, layers, m, bn_beta, frozen):
    """Fold the last training batch's statistics into every batch-norm layer's EWMA,
    except the frozen layers' (frozen: (L,) uint8, 1 where a layer is frozen), whose
    statistics stay those the layer was trained with."""
    for l in range(layers.shape[0]):
        if layers[l, OFF_GAMMA] < 0 or frozen[l]:
            continue
        n = layers[l, N_OUT]
        f = layers[l, OFF_FEAT]
        batchnorm_update_running(_seg(stats, layers[l, OFF_RMEAN], n), _seg(stats, layers[l, OFF_RVAR], n),
                                 feat[f:f + n], feat[f + n:f + 2 * n], m, bn_beta)
