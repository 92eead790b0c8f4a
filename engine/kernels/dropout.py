"""Inverted dropout on hidden activations."""
from numba import njit

from .rng import next_uniform


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_forward(A, mask, Out, keep_prob, rng_state):
    """Keep each unit with probability keep_prob and scale the kept ones by 1/keep_prob,
    so the expected activation is unchanged and inference needs no rescaling.

    A, mask, Out: (m, n); mask holds 0 or 1/keep_prob.  rng_state: uint64[4], advanced.
    """
    m, n = A.shape
    scale = 1.0 / keep_prob
    for i in range(m):
        for j in range(n):
            if next_uniform(rng_state) < keep_prob:
                mask[i, j] = scale
            else:
                mask[i, j] = 0.0
            Out[i, j] = A[i, j] * mask[i, j]


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_backward(dOut, mask, dA):
    """Backward of Out = A * mask: dA = dOut * mask.  May run in place.  All (m, n)."""
    m, n = dOut.shape
    for i in range(m):
        for j in range(n):
            dA[i, j] = dOut[i, j] * mask[i, j]
