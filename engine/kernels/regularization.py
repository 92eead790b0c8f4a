"""L2 and L1 penalties on weight matrices (never on b, gamma, beta)."""
import numpy as np
from numba import njit


# Reassociating the two sums lets them vectorize; only the order of rounding changes
# (tests/engine compare with NumPy), and NaN/inf still propagate.
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def weight_penalty(W, l2, l1):
    """(l2 / 2) ||W||_F^2 + l1 sum |W|.  W: any contiguous 1-D view of weights."""
    sq = 0.0
    ab = 0.0
    for i in range(W.shape[0]):
        sq += W[i] * W[i]
        ab += abs(W[i])
    return 0.5 * l2 * sq + l1 * ab


@njit(cache=True, nogil=True, error_model="numpy")
def add_weight_penalty_grad(W, dW, l2, l1):
    """dW += l2 W + l1 sign(W), with sign(0) = 0.  W, dW: 1-D views of equal size."""
    for i in range(W.shape[0]):
        w = W[i]
        s = 0.0
        if w > 0:
            s = 1.0
        elif w < 0:
            s = -1.0
        dW[i] += l2 * w + l1 * s


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def add_weight_penalty_and_grad(W, dW, l2, l1):
    """dW += l2 W + l1 sign(W), in one pass that also sums what the step needs of both.

    Returns ((l2 / 2) ||W||_F^2 + l1 sum |W|, sum of dW^2 after the add): the penalty's
    share of J, the same value as weight_penalty (the sums' rounding order aside), and
    this block's share of the squared gradient norm, accumulated in float64 as
    optim.global_norm does.  W, dW: 1-D views of equal size.
    """
    sq = 0.0
    ab = 0.0
    gg = 0.0
    if l1 == 0.0:  # the common case: no sign, so the loop vectorizes
        for i in range(W.shape[0]):
            w = W[i]
            sq += w * w
            g = dW[i] + l2 * w
            dW[i] = g
            gg += np.float64(g) * np.float64(g)
        return 0.5 * l2 * sq, gg
    for i in range(W.shape[0]):
        w = W[i]
        s = 0.0
        if w > 0:
            s = 1.0
        elif w < 0:
            s = -1.0
        sq += w * w
        ab += abs(w)
        g = dW[i] + (l2 * w + l1 * s)
        dW[i] = g
        gg += np.float64(g) * np.float64(g)
    return 0.5 * l2 * sq + l1 * ab, gg
