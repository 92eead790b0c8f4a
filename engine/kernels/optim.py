"""Optimizer updates over the whole flat parameter buffer in one loop.

theta, g and the moment buffers are 1-D and equally long; g_scale multiplies the
gradient first (global-norm clipping folds in here, so clipping costs no extra pass).
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def global_norm(g):
    """||g||_2 of a 1-D array, accumulated in float64; inf or nan if any entry is."""
    s = 0.0
    for i in range(g.shape[0]):
        s += np.float64(g[i]) * np.float64(g[i])
    return np.sqrt(s)


@njit(cache=True, nogil=True)
def sgd_step(theta, g, g_scale, lr):
    """theta -= lr g."""
    for i in range(theta.shape[0]):
        theta[i] -= lr * (g_scale * g[i])


@njit(cache=True, nogil=True)
def momentum_step(theta, g, v, g_scale, lr, beta1):
    """v = beta1 v + (1 - beta1) g;  theta -= lr v."""
    for i in range(theta.shape[0]):
        v[i] = beta1 * v[i] + (1.0 - beta1) * (g_scale * g[i])
        theta[i] -= lr * v[i]


@njit(cache=True, nogil=True)
def rmsprop_step(theta, g, s, g_scale, lr, beta2, eps):
    """s = beta2 s + (1 - beta2) g^2;  theta -= lr g / (sqrt(s) + eps)."""
    for i in range(theta.shape[0]):
        gi = g_scale * g[i]
        s[i] = beta2 * s[i] + (1.0 - beta2) * gi * gi
        theta[i] -= lr * gi / (np.sqrt(s[i]) + eps)


@njit(cache=True, nogil=True)
def adam_step(theta, g, v, s, g_scale, lr, beta1, beta2, eps, t):
    """v, s as momentum and rmsprop; theta -= lr v_hat / (sqrt(s_hat) + eps), where
    v_hat = v / (1 - beta1^t) and s_hat = s / (1 - beta2^t) undo the moments' bias
    toward their zero start.  t counts steps from 1.
    """
    c1 = 1.0 / (1.0 - beta1 ** t)
    c2 = 1.0 / (1.0 - beta2 ** t)
    for i in range(theta.shape[0]):
        gi = g_scale * g[i]
        v[i] = beta1 * v[i] + (1.0 - beta1) * gi
        s[i] = beta2 * s[i] + (1.0 - beta2) * gi * gi
        theta[i] -= lr * (v[i] * c1) / (np.sqrt(s[i] * c2) + eps)
