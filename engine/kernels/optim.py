"""Optimizer updates over the whole flat parameter buffer in one loop.

theta, g and the moment buffers are 1-D and equally long; g_scale multiplies the
gradient first (global-norm clipping folds in here, so clipping costs no extra pass).
Callers pass every scalar already in theta's dtype, and the kernels hold no float
literals, so a float32 update runs in float32 SIMD lanes from end to end.

A moment whose magnitude falls below `tiny`, the dtype's smallest normal number
(1.2e-38 in float32), is stored as 0.  A parameter whose gradient stays 0 (the weights
into a ReLU unit that no longer fires) has moments that decay geometrically, and on
their way to 0 they pass through the subnormal floats, where every x86 operation that
reads or makes one takes a microcode assist tens to hundreds of cycles long: Adam's s,
decaying by beta2 = 0.999, spends some 16k steps there.  Stored as 0 they cost nothing,
and the update they would have made is below what theta's precision can hold (v < tiny
moves theta by less than lr tiny / eps; s < tiny is far below eps^2).
"""
import numpy as np
from numba import njit


# Reassociating the sum lets it vectorize; it changes only the order of rounding (NaN and
# inf still propagate: no nnan/ninf flags), which tests/engine pin against NumPy.
@njit(cache=True, nogil=True, fastmath={"reassoc"})
def sum_of_squares(g):
    """sum g^2 of a 1-D array, accumulated in float64; inf or nan if any entry is."""
    s = 0.0
    for i in range(g.shape[0]):
        s += np.float64(g[i]) * np.float64(g[i])
    return s


@njit(cache=True, nogil=True)
def global_norm(g):
    """||g||_2 of a 1-D array, accumulated in float64; inf or nan if any entry is."""
    return np.sqrt(sum_of_squares(g))


@njit(cache=True, nogil=True, error_model="numpy")
def sgd_step(theta, g, g_scale, lr):
    """theta -= lr g."""
    step = lr * g_scale
    for i in range(theta.shape[0]):
        theta[i] -= step * g[i]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _flushed(x, tiny, zero):
    """x, or 0 when |x| is below the smallest normal number (NaN passes unchanged)."""
    return zero if abs(x) < tiny else x


@njit(cache=True, nogil=True, error_model="numpy")
def momentum_step(theta, g, v, g_scale, lr, beta1, one_minus_beta1, tiny):
    """v = beta1 v + (1 - beta1) g;  theta -= lr v."""
    c = one_minus_beta1 * g_scale
    zero = tiny - tiny
    for i in range(theta.shape[0]):
        vi = _flushed(beta1 * v[i] + c * g[i], tiny, zero)
        v[i] = vi
        theta[i] -= lr * vi


@njit(cache=True, nogil=True, error_model="numpy")
def rmsprop_step(theta, g, s, g_scale, lr, beta2, one_minus_beta2, eps, tiny):
    """s = beta2 s + (1 - beta2) g^2;  theta -= lr g / (sqrt(s) + eps)."""
    zero = tiny - tiny
    for i in range(theta.shape[0]):
        gi = g_scale * g[i]
        si = _flushed(beta2 * s[i] + one_minus_beta2 * gi * gi, tiny, zero)
        s[i] = si
        theta[i] -= lr * gi / (np.sqrt(si) + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def adam_step(theta, g, v, s, g_scale, lr_over_c1, beta1, one_minus_beta1, beta2,
              one_minus_beta2, inv_c2, eps, tiny):
    """v, s as momentum and rmsprop; theta -= lr v_hat / (sqrt(s_hat) + eps), where
    v_hat = v / c1 and s_hat = s / c2 with c1 = 1 - beta1^t, c2 = 1 - beta2^t undo the
    moments' bias toward their zero start (t counts steps from 1).  The caller passes
    lr / c1 and 1 / c2.
    """
    zero = tiny - tiny
    for i in range(theta.shape[0]):
        gi = g_scale * g[i]
        vi = _flushed(beta1 * v[i] + one_minus_beta1 * gi, tiny, zero)
        si = _flushed(beta2 * s[i] + one_minus_beta2 * gi * gi, tiny, zero)
        v[i] = vi
        s[i] = si
        theta[i] -= lr_over_c1 * vi / (np.sqrt(si * inv_c2) + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def zero_ranges(flat, ranges):
    """flat[start:stop] = 0 for each row (start, stop) of ranges (k, 2) int64.

    Frozen layers' gradients (and optimizer moments when a layer freezes) are zeroed:
    every optimizer then moves those parameters by exactly 0, so they stay bit-identical.
    """
    for r in range(ranges.shape[0]):
        for i in range(ranges[r, 0], ranges[r, 1]):
            flat[i] = 0.0
