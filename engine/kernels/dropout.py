"""Inverted dropout on hidden activations.

Each keep/drop decision compares 16 random bits with keep_prob * 2^16, so one 64-bit
draw decides four units; the keep probability is keep_prob rounded to a multiple of
2^-16 (a relative error below 1e-5 for keep_prob >= 0.5).

A row is done in two loops: the draws first, into `bits` (uint64, at least
ceil(n / 4) words), with the generator's state held in local variables; then the keep
decisions, which read the draws as little-endian 16-bit fields (unit j's field is
bits' uint16 view at j, what the draw's low 16 bits shifted down j % 4 times are) and
vectorize.  Drawing and deciding in one loop, the state went to memory and back for
every draw (the compiler cannot tell it from the rows being written) and the row took
five times as long.
"""
import sys

import numpy as np
from numba import njit

from .rng import xoshiro_fill

DECISIONS_PER_DRAW = 4

if sys.byteorder != "little":   # the uint16 view of a draw must list its fields low first
    raise ImportError("learnd's dropout kernels assume a little-endian machine")


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def keep_threshold(keep_prob):
    """A unit is kept when its 16 random bits are below this (keep_prob 1 keeps all)."""
    return np.uint64(keep_prob * 65536.0 + 0.5)


def bits_buffer(n_units):
    """A scratch `bits` for rows of up to n_units units."""
    return np.zeros(n_units // DECISIONS_PER_DRAW + 1, dtype=np.uint64)


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_forward(A, mask, Out, keep_prob, rng_state, bits):
    """Keep each unit with probability keep_prob and scale the kept ones by 1/keep_prob,
    so the expected activation is unchanged and inference needs no rescaling.

    A, mask, Out: (m, n); mask holds 0 or 1/keep_prob.  rng_state: uint64[4], advanced.
    bits: uint64 scratch of at least ceil(n / 4) words (bits_buffer).
    """
    m, n = A.shape
    if m == 0 or n == 0:
        return
    # Worked out once, not per row (made per row, the uint16 view alone cost a row a
    # third of its time).  A unit is kept when its 16 bits are <= last_kept = threshold
    # - 1, a uint16, so keep_prob 1 keeps every field (and a keep_prob below 2^-17,
    # which would round to keeping none, keeps 1 in 2^16).  kept = 1/keep_prob and
    # dropped = 0 in the mask's dtype, so the keep loop converts nothing.
    mask[0, 0] = 1.0 / keep_prob
    kept = mask[0, 0]
    dropped = kept - kept
    last_kept = np.uint16(max(keep_threshold(keep_prob), np.uint64(1)) - np.uint64(1))
    fields = bits.view(np.uint16)
    draws = (n + DECISIONS_PER_DRAW - 1) // DECISIONS_PER_DRAW
    for i in range(m):
        xoshiro_fill(rng_state, bits, draws)
        for j in range(n):   # uint16 lanes and no branch: the loop vectorizes
            value = kept if fields[j] <= last_kept else dropped
            mask[i, j] = value
            Out[i, j] = A[i, j] * value


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_backward(dOut, mask, dA):
    """Backward of Out = A * mask: dA = dOut * mask.  May run in place.  All (m, n)."""
    m, n = dOut.shape
    for i in range(m):
        for j in range(n):
            dA[i, j] = dOut[i, j] * mask[i, j]
