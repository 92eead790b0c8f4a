"""xoshiro256** with its state in an explicit uint64[4] array.

The state travels with the model (checkpoints save it), so a resumed model draws
exactly the dropout masks the original would have drawn.
"""
import numpy as np
from numba import njit

_U53 = 1.0 / 9007199254740992.0  # 2**-53


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rotl(x, k):
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _step(s0, s1, s2, s3):
    """One xoshiro256** step on the state words: (output, s0, s1, s2, s3)."""
    result = _rotl(s1 * np.uint64(5), 7) * np.uint64(9)
    t = s1 << np.uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return result, s0, s1, s2, s3


@njit(cache=True, nogil=True, error_model="numpy")
def next_uint64(state):
    """Advance `state` (uint64[4]) one step and return the next 64-bit output."""
    result, state[0], state[1], state[2], state[3] = _step(state[0], state[1], state[2], state[3])
    return result


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def xoshiro_fill(state, out, n):
    """out[:n] = the next n outputs, as n calls of next_uint64 would give them, with the
    state in local variables until the end (a loop of next_uint64 stores and reloads it
    for every output when the compiler cannot rule out that `out` overlaps it)."""
    s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
    for k in range(n):
        out[k], s0, s1, s2, s3 = _step(s0, s1, s2, s3)
    state[0], state[1], state[2], state[3] = s0, s1, s2, s3


@njit(cache=True, nogil=True, error_model="numpy")
def next_uniform(state):
    """A float64 uniform on [0, 1) from the top 53 bits of the next output."""
    return np.float64(next_uint64(state) >> np.uint64(11)) * _U53


def seed_state(seed):
    """uint64[4] generator state derived from an integer seed (never all zeros)."""
    words = np.random.SeedSequence(seed).generate_state(4, np.uint64)
    if not words.any():
        words[0] = 1
    return words


@njit(cache=True, nogil=True, error_model="numpy")
def next_below(state, n):
    """An int uniform on [0, n) (n >= 1), by multiplying a 53-bit uniform: the bias is
    below n / 2^53, nothing for the row counts and pixel shifts it draws."""
    return np.int64(next_uniform(state) * n)


@njit(cache=True, nogil=True, error_model="numpy")
def next_normal(state):
    """A standard normal by Box-Muller (one of the pair; the other is dropped so that
    the state alone says where the stream stands)."""
    u1 = 1.0 - next_uniform(state)         # (0, 1]: log never sees 0
    u2 = next_uniform(state)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@njit(cache=True, nogil=True, error_model="numpy")
def next_gamma(state, shape):
    """Gamma(shape, 1) by Marsaglia and Tsang's squeeze (shape >= 1), boosted by
    U^(1/shape) for shape < 1."""
    boost = 1.0
    if shape < 1.0:
        boost = (1.0 - next_uniform(state)) ** (1.0 / shape)
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    while True:
        x = next_normal(state)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = 1.0 - next_uniform(state)
        if np.log(u) < 0.5 * x * x + d - d * v + d * np.log(v):
            return d * v * boost


@njit(cache=True, nogil=True, error_model="numpy")
def next_beta(state, a, b):
    """Beta(a, b) as G_a / (G_a + G_b) of two gamma draws."""
    x = next_gamma(state, a)
    y = next_gamma(state, b)
    return x / (x + y)
