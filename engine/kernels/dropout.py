"""Inverted dropout on hidden activations.

Each keep/drop decision compares 16 random bits with keep_prob * 2^16, so one 64-bit
draw decides four units; the keep probability is keep_prob rounded to a multiple of
2^-16 (a relative error below 1e-5 for keep_prob >= 0.5).
"""
import numpy as np
from numba import njit

from .rng import next_uint64

DECISIONS_PER_DRAW = 4
_LOW16 = np.uint64(0xFFFF)
_SHIFT16 = np.uint64(16)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def keep_threshold(keep_prob):
    """A unit is kept when its 16 random bits are below this (keep_prob 1 keeps all)."""
    return np.uint64(keep_prob * 65536.0 + 0.5)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def dropout_row(a, mask, out, threshold, scale, rng_state):
    """One row: mask[j] = scale if kept else 0;  out[j] = a[j] * mask[j].  a, mask, out: (n,)."""
    n = a.shape[0]
    r = np.uint64(0)
    for j in range(n):
        if j % DECISIONS_PER_DRAW == 0:
            r = next_uint64(rng_state)
        mask[j] = scale if (r & _LOW16) < threshold else 0.0
        out[j] = a[j] * mask[j]
        r >>= _SHIFT16


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_forward(A, mask, Out, keep_prob, rng_state):
    """Keep each unit with probability keep_prob and scale the kept ones by 1/keep_prob,
    so the expected activation is unchanged and inference needs no rescaling.

    A, mask, Out: (m, n); mask holds 0 or 1/keep_prob.  rng_state: uint64[4], advanced.
    """
    threshold = keep_threshold(keep_prob)
    scale = 1.0 / keep_prob
    for i in range(A.shape[0]):
        dropout_row(A[i], mask[i], Out[i], threshold, scale, rng_state)


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_backward(dOut, mask, dA):
    """Backward of Out = A * mask: dA = dOut * mask.  May run in place.  All (m, n)."""
    m, n = dOut.shape
    for i in range(m):
        for j in range(n):
            dA[i, j] = dOut[i, j] * mask[i, j]
