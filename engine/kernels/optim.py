"""Optimizer updates over the whole flat parameter buffer in one loop.

theta, g and the moment buffers are 1-D and equally long; g_scale multiplies the
gradient first (global-norm clipping folds in here, so clipping costs no extra pass).
Callers pass every scalar already in theta's dtype, and the kernels hold no float
literals, so a float32 update runs in float32 SIMD lanes from end to end.
"""
import numpy as np
from numba import njit


# Reassociating the sum lets it vectorize; it changes only the order of rounding (NaN and
# inf still propagate: no nnan/ninf flags), which tests/engine pin against NumPy.
@njit(cache=True, nogil=True, fastmath={"reassoc"})
def global_norm(g):
    """||g||_2 of a 1-D array, accumulated in float64; inf or nan if any entry is."""
    s = 0.0
    for i in range(g.shape[0]):
        s += np.float64(g[i]) * np.float64(g[i])
    return np.sqrt(s)


@njit(cache=True, nogil=True, error_model="numpy")
def sgd_step(theta, g, g_scale, lr):
    """theta -= lr g."""
    step = lr * g_scale
    for i in range(theta.shape[0]):
        theta[i] -= step * g[i]


@njit(cache=True, nogil=True, error_model="numpy")
def momentum_step(theta, g, v, g_scale, lr, beta1, one_minus_beta1):
    """v = beta1 v + (1 - beta1) g;  theta -= lr v."""
    c = one_minus_beta1 * g_scale
    for i in range(theta.shape[0]):
        v[i] = beta1 * v[i] + c * g[i]
        theta[i] -= lr * v[i]


@njit(cache=True, nogil=True, error_model="numpy")
def rmsprop_step(theta, g, s, g_scale, lr, beta2, one_minus_beta2, eps):
    """s = beta2 s + (1 - beta2) g^2;  theta -= lr g / (sqrt(s) + eps)."""
    for i in range(theta.shape[0]):
        gi = g_scale * g[i]
        s[i] = beta2 * s[i] + one_minus_beta2 * gi * gi
        theta[i] -= lr * gi / (np.sqrt(s[i]) + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def adam_step(theta, g, v, s, g_scale, lr_over_c1, beta1, one_minus_beta1, beta2,
              one_minus_beta2, inv_c2, eps):
    """v, s as momentum and rmsprop; theta -= lr v_hat / (sqrt(s_hat) + eps), where
    v_hat = v / c1 and s_hat = s / c2 with c1 = 1 - beta1^t, c2 = 1 - beta2^t undo the
    moments' bias toward their zero start (t counts steps from 1).  The caller passes
    lr / c1 and 1 / c2.
    """
    for i in range(theta.shape[0]):
        gi = g_scale * g[i]
        v[i] = beta1 * v[i] + one_minus_beta1 * gi
        s[i] = beta2 * s[i] + one_minus_beta2 * gi * gi
        theta[i] -= lr_over_c1 * v[i] / (np.sqrt(s[i] * inv_c2) + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def zero_ranges(flat, ranges):
    """flat[start:stop] = 0 for each row (start, stop) of ranges (k, 2) int64.

    Frozen layers' gradients (and optimizer moments when a layer freezes) are zeroed:
    every optimizer then moves those parameters by exactly 0, so they stay bit-identical.
    """
    for r in range(ranges.shape[0]):
        for i in range(ranges[r, 0], ranges[r, 1]):
            flat[i] = 0.0
