"""Label checks and their conversion into the dense target matrix Y (m, K)."""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def class_ids_to_onehot(y, n_classes, Y):
    """Y[i] = one-hot(y[i]).  Returns the index of the first id outside [0, K), or -1.
    y: (m,) integer ids  Y: (m, K).  Y is untouched when an id is out of range.
    """
    m = y.shape[0]
    for i in range(m):
        if y[i] < 0 or y[i] >= n_classes:
            return i
    for i in range(m):
        for k in range(n_classes):
            Y[i, k] = 0.0
        Y[i, y[i]] = 1.0
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def first_bad_binary(y, allow_nan):
    """Index of the first entry of y (m, K) that is not 0 or 1 (or NaN when allowed), or -1."""
    m, K = y.shape
    for i in range(m):
        for k in range(K):
            v = y[i, k]
            if v == 0 or v == 1:
                continue
            if allow_nan and np.isnan(v):
                continue
            return i
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def first_bad_onehot(y, tol):
    """Index of the first row of y (m, K) that is not a probability row, or -1."""
    m, K = y.shape
    for i in range(m):
        s = 0.0
        for k in range(K):
            v = y[i, k]
            if not (v >= 0.0 and v <= 1.0):
                return i
            s += v
        if abs(s - 1.0) > tol:
            return i
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def copy_into(src, dst):
    """dst[...] = src with a dtype cast.  src, dst: (m, K)."""
    m, K = src.shape
    for i in range(m):
        for k in range(K):
            dst[i, k] = src[i, k]
