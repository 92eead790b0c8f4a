"""Input normalization by running (all-time) statistics, and input checks."""
import numpy as np
from numba import njit

from .moments import column_moments

MIN_STD = 1e-8


@njit(cache=True, nogil=True, error_model="numpy")
def count_nonfinite(X):
    """How many entries of X (m, n) are NaN or +-Inf."""
    m, n = X.shape
    bad = 0
    for i in range(m):
        for j in range(n):
            if not np.isfinite(X[i, j]):
                bad += 1
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def welford_merge(X, count, mean, m2, new_mean, new_m2):
    """Merge the batch X (m, n) into running statistics (count, mean (n,), m2 (n,)),
    writing the result to new_mean, new_m2 and returning the new count.

    Chan et al.'s parallel form of Welford's update: the batch's own mean and sum of
    squared deviations are combined with the running ones, all in float64, so a long
    stream does not lose precision the way sum and sum-of-squares would.
    """
    m, n = X.shape
    total = count + m
    column_moments(X, new_mean, new_m2)
    for j in range(n):
        delta = new_mean[j] - mean[j]
        new_m2[j] = m2[j] + new_m2[j] + delta * delta * count * m / total
        new_mean[j] = mean[j] + delta * m / total
    return total


@njit(cache=True, nogil=True, error_model="numpy")
def normalizer_scale(count, mean, m2, shift, inv_scale):
    """shift = mean; inv_scale = 1/std (biased), or 1 where std < 1e-8 (centre only).
    Before any data (count 0): shift 0, inv_scale 1, so inputs pass unchanged.
    """
    for j in range(mean.shape[0]):
        if count == 0:
            shift[j] = 0.0
            inv_scale[j] = 1.0
            continue
        std = np.sqrt(m2[j] / count)
        shift[j] = mean[j]
        inv_scale[j] = 1.0 / std if std >= MIN_STD else 1.0


@njit(cache=True, nogil=True, error_model="numpy")
def normalize_into(X, shift, inv_scale, Out):
    """Out = (X - shift) * inv_scale, casting to Out's dtype.  X, Out: (m, n)."""
    m, n = X.shape
    for i in range(m):
        for j in range(n):
            Out[i, j] = (X[i, j] - shift[j]) * inv_scale[j]
