"""Data augmentation of training rows: image shifts and flips, mixup, Gaussian noise.

Every kernel reads the batch X (m, n0) and writes a separate Out, so the caller's rows
(and the held-out and predict rows that never come here) stay as they were.  Random
draws come from the model's explicit xoshiro state (rng), which checkpoints carry.
"""
from numba import njit

from .rng import next_below, next_beta, next_normal, next_uniform


@njit(cache=True, nogil=True, error_model="numpy")
def shift_flip(X, height, width, channels, max_shift, flip, rng_state, Out):
    """Each row, read as an image (height, width, channels) in C order, moved by
    (dy, dx) drawn uniformly from [-max_shift, max_shift] and then, when flip, mirrored left
    to right with probability 1/2.  Pixels shifted in repeat the nearest edge pixel,
    so no value is invented that the image did not hold.

    X, Out: (m, height * width * channels).
    """
    m = X.shape[0]
    span = 2 * max_shift + 1
    for i in range(m):
        dy = next_below(rng_state, span) - max_shift
        dx = next_below(rng_state, span) - max_shift
        mirror = flip and next_uniform(rng_state) < 0.5
        for r in range(height):
            src_r = min(max(r - dy, 0), height - 1)
            for c in range(width):
                cc = width - 1 - c if mirror else c
                src_c = min(max(cc - dx, 0), width - 1)
                o = (r * width + c) * channels
                s = (src_r * width + src_c) * channels
                for ch in range(channels):
                    Out[i, o + ch] = X[i, s + ch]


@njit(cache=True, nogil=True, error_model="numpy")
def mixup(X, Y, alpha, rng_state, Out, Y_out):
    """Out[i] = lam X[i] + (1 - lam) X[j], Y_out[i] likewise, with j a row drawn
    uniformly from the batch and lam ~ Beta(alpha, alpha) drawn per row (Zhang et al.'s
    mixup: the network learns to be linear between training rows).

    X, Out: (m, n0)  Y, Y_out: (m, K) targets (one-hot rows become soft ones).
    Out may not alias X, nor Y_out Y.
    """
    m, n = X.shape
    K = Y.shape[1]
    for i in range(m):
        j = next_below(rng_state, m)
        lam = next_beta(rng_state, alpha, alpha)
        for f in range(n):
            Out[i, f] = lam * X[i, f] + (1.0 - lam) * X[j, f]
        for k in range(K):
            Y_out[i, k] = lam * Y[i, k] + (1.0 - lam) * Y[j, k]


@njit(cache=True, nogil=True, error_model="numpy")
def add_noise(X, inv_scale, std, rng_state, Out):
    """Out = X + std * N(0, 1) / inv_scale: noise of standard deviation `std` in the
    network's normalized input units (each feature's noise scaled by its own spread),
    so one std suits features measured on any scale.  May run in place.

    X, Out: (m, n0)  inv_scale: (n0,) the input normalizer's.
    """
    m, n = X.shape
    for i in range(m):
        for j in range(n):
            Out[i, j] = X[i, j] + std * next_normal(rng_state) / inv_scale[j]
