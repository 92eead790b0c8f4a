"""Output heads and their losses, each with its fused backward step dZ = (P - Y) w / m.

Every head returns (1/m) sum_i w_i L_i, where w holds the sample weights already
divided by their mean (an empty w means all ones).
"""
import numpy as np
from numba import njit

from .activations import sigmoid

SOFTMAX = 0       # multiclass: softmax + cross-entropy
SIGMOID = 1       # binary and multilabel: sigmoid + binary cross-entropy, NaN labels masked
IDENTITY = 2      # regression: linear + half squared error

HEADS = {"multiclass": SOFTMAX, "binary": SIGMOID, "multilabel": SIGMOID,
         "regression": IDENTITY}


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _softmax_row(Z, P, i):
    """P[i] = softmax(Z[i]), shifted by the row max so exp never overflows; returns
    (max, log of the shifted sum), with which log softmax is z - max - log_sum."""
    K = Z.shape[1]
    zmax = Z[i, 0]
    for k in range(1, K):
        if Z[i, k] > zmax:
            zmax = Z[i, k]
    total = 0.0
    for k in range(K):
        e = np.exp(Z[i, k] - zmax)
        P[i, k] = e
        total += e
    for k in range(K):
        P[i, k] /= total
    return zmax, np.log(total)


@njit(cache=True, nogil=True, error_model="numpy")
def softmax_rows(Z, P):
    """P = softmax(Z) per row.  Z, P: (m, K)."""
    for i in range(Z.shape[0]):
        _softmax_row(Z, P, i)


@njit(cache=True, nogil=True, error_model="numpy")
def head_output(head, Z, P):
    """Inference output of a head: softmax rows, sigmoid, or identity.  Z, P: (m, K)."""
    if head == SOFTMAX:
        softmax_rows(Z, P)
        return
    m, K = Z.shape
    for i in range(m):
        for k in range(K):
            P[i, k] = sigmoid(Z[i, k]) if head == SIGMOID else Z[i, k]


@njit(cache=True, nogil=True, error_model="numpy")
def softmax_cross_entropy(Z, Y, w, P, dZ):
    """L_i = -sum_k Y_ik log softmax(Z_i)_k;  dZ = (P - Y) w_i / m.

    log softmax is z - max - log(sum exp(z - max)), never log(0).
    Z, Y, P, dZ: (m, K)  w: (m,) or (0,).  Returns (1/m) sum_i w_i L_i.
    """
    m, K = Z.shape
    total = 0.0
    for i in range(m):
        zmax, log_s = _softmax_row(Z, P, i)
        wi = w[i] if w.shape[0] > 0 else 1.0
        li = 0.0
        for k in range(K):
            if Y[i, k] != 0.0:
                li -= Y[i, k] * (Z[i, k] - zmax - log_s)
            dZ[i, k] = (P[i, k] - Y[i, k]) * (wi / m)
        total += wi * li
    return total / m


@njit(cache=True, nogil=True, error_model="numpy")
def sigmoid_cross_entropy(Z, Y, w, P, dZ):
    """Binary cross-entropy per output, summed over outputs; NaN labels count nothing.

    L_ik = max(z, 0) - z y + log(1 + exp(-|z|))  (the stable form of
    -y log p - (1-y) log(1-p));  dZ = (P - Y) w_i / m, 0 where Y is NaN.
    Z, Y, P, dZ: (m, K)  w: (m,) or (0,).  Returns (1/m) sum_i w_i L_i.
    """
    m, K = Z.shape
    total = 0.0
    for i in range(m):
        wi = w[i] if w.shape[0] > 0 else 1.0
        li = 0.0
        for k in range(K):
            z = Z[i, k]
            p = sigmoid(z)
            P[i, k] = p
            y = Y[i, k]
            if np.isnan(y):
                dZ[i, k] = 0.0
                continue
            li += max(z, 0.0) - z * y + np.log1p(np.exp(-abs(z)))
            dZ[i, k] = (p - y) * (wi / m)
        total += wi * li
    return total / m


@njit(cache=True, nogil=True, error_model="numpy")
def squared_error(Z, Y, w, P, dZ):
    """L_i = sum_k 1/2 (z - y)^2 with a linear output;  dZ = (Z - Y) w_i / m.

    Z, Y, P, dZ: (m, K)  w: (m,) or (0,).  Returns (1/m) sum_i w_i L_i.
    """
    m, K = Z.shape
    total = 0.0
    for i in range(m):
        wi = w[i] if w.shape[0] > 0 else 1.0
        li = 0.0
        for k in range(K):
            d = Z[i, k] - Y[i, k]
            P[i, k] = Z[i, k]
            li += 0.5 * d * d
            dZ[i, k] = d * (wi / m)
        total += wi * li
    return total / m


@njit(cache=True, nogil=True, error_model="numpy")
def head_loss(head, Z, Y, w, P, dZ):
    """Loss of the given head and its dZ; see the per-head kernels."""
    if head == SOFTMAX:
        return softmax_cross_entropy(Z, Y, w, P, dZ)
    if head == SIGMOID:
        return sigmoid_cross_entropy(Z, Y, w, P, dZ)
    return squared_error(Z, Y, w, P, dZ)
