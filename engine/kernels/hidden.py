"""A hidden layer's elementwise chain fused row by row: batch norm (optional),
activation, inverted dropout (optional), and the backward of the same chain.

The separate kernels (batchnorm, activations, dropout) are the definitions and the
tests' references; these apply them to one row at a time while it is in cache, so
each (m, n) activation is streamed through memory once per direction instead of once
per stage.  Each stage's inner loop stays a plain loop over the row, so it vectorizes.
Dropout's forward is the exception: it runs as a pass of its own after the rows (the
layer's A is still in cache), because its keep loop vectorizes only there (measured on
128 x 256 float32: 31 µs inside the row loop, 16 µs as its own pass).
"""
import numpy as np
from numba import njit

from .activations import activation_backward, activation_forward
from .dropout import dropout_forward
from .moments import column_moments


@njit(cache=True, nogil=True, error_model="numpy")
def hidden_forward_train(Z, bn, gamma, beta, Zhat, mean, var, inv_std, eps, kind, A,
                         drop, mask, Out, keep_prob, rng_state, bits):
    """Z -> [batch norm with batch statistics] -> A = g(.) -> [Out = A * mask].

    Z, Zhat, A, mask, Out: (m, n).  gamma, beta, mean, var, inv_std: (n,).
    bn: batch norm on (batchnorm.batchnorm_forward_train: Zhat and the statistics are
    written and the batch-norm output overwrites Z).  drop: dropout on
    (dropout.dropout_forward: mask and Out written, rng_state advanced alike; bits its
    uint64 scratch of at least ceil(n / 4) words).
    """
    m, n = Z.shape
    if bn:
        column_moments(Z, mean, var)
        for j in range(n):
            var[j] /= m
            inv_std[j] = 1.0 / np.sqrt(var[j] + eps)
    for i in range(m):
        if bn:
            for j in range(n):
                zh = (Z[i, j] - mean[j]) * inv_std[j]
                Zhat[i, j] = zh
                Z[i, j] = gamma[j] * zh + beta[j]
        activation_forward(Z[i:i + 1], A[i:i + 1], kind)
    if drop:
        dropout_forward(A, mask, Out, keep_prob, rng_state, bits)


@njit(cache=True, nogil=True, error_model="numpy")
def hidden_backward(G, A, kind, drop, mask, bn, Zhat, gamma, inv_std, dgamma, dbeta, sum_buf):
    """In place: G holds dL/d(layer output) and becomes dL/dZ (before batch norm).

    Backward of Out = g(BN(Z)) * mask: dA = G * mask; dY = dA * g'(A) (from the stored
    A); with batch norm dgamma = sum_i dY Zhat, dbeta = sum_i dY, and
    dZ = gamma inv_std / m * (m dY - dbeta - Zhat dgamma)  (batchnorm.batchnorm_backward).
    G, A, mask, Zhat: (m, n).  gamma, inv_std, dgamma, dbeta, sum_buf: (n,).
    """
    m, n = G.shape
    if bn:
        dgamma[:] = 0.0
        dbeta[:] = 0.0
    for i in range(m):
        if drop:
            for j in range(n):
                G[i, j] *= mask[i, j]
        activation_backward(G[i:i + 1], A[i:i + 1], G[i:i + 1], kind)
        if bn:
            for j in range(n):
                dbeta[j] += G[i, j]
                dgamma[j] += G[i, j] * Zhat[i, j]
    if not bn:
        return
    for j in range(n):
        sum_buf[j] = gamma[j] * inv_std[j] / m
    for i in range(m):
        for j in range(n):
            G[i, j] = sum_buf[j] * (m * G[i, j] - dbeta[j] - Zhat[i, j] * dgamma[j])
