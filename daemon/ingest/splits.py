"""Which split a row belongs to: a stable hash of its inputs, so a resent row lands
where it landed before.

Rows sent with split "auto" go to train / dev / test by the hash's first draw and the
configured fractions; then a part of those train rows goes to train-dev, kept out of
training, by a second, independent draw.  Train-dev is training-distribution data the
model never learns from: it tells variance (train-dev − train) apart from data
mismatch (dev − train-dev).  Rows sent as "train" are all trained on, and rows sent as
"train_dev", "dev" or "test" all go there: a producer whose target data differ from its
training stream sends the stream as "auto" and the target rows as "dev" (or "test"), or
sends the stream as "train" and keeps a train-dev set itself with "train_dev".

The same hash, mixed once more, is the row's key: the held-out reservoirs keep one copy
of each row by it (daemon.evaluation), so a resent row is not counted as new evidence.

The hash reads the row's bytes in the model's dtype, with -0.0 taken as 0.0, so the
same values always hash alike whatever dtype the producer sent them in.
"""
from __future__ import annotations

import numpy as np
from numba import njit

TRAIN, TRAIN_DEV, DEV, TEST = 0, 1, 2, 3
NAMES = ("train", "train_dev", "dev", "test")
_TO_UNIT = 1.0 / float(1 << 53)
_KEY_SALT = 0xD6E8FEB86659FD93     # the key is a third draw, independent of the two split draws


@njit(cache=True, nogil=True)
def _mix(h):
    """splitmix64's finalizer: every input bit moves every output bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


@njit(cache=True, nogil=True)
def _row_hashes(words, h):
    """h[i] = the 64-bit hash of row i's words.  words: (m, k) unsigned ints; h: (m,) uint64."""
    m, k = words.shape
    # Each row's hash is a chain of k dependent mixes; walking the rows in the inner loop
    # runs m independent chains side by side, which the CPU overlaps (about 4x faster
    # than one row at a time, and the same hashes).
    for i in range(m):
        h[i] = np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(k)
    for j in range(k):
        for i in range(m):
            h[i] = _mix(h[i] ^ np.uint64(words[i, j]))


@njit(cache=True, nogil=True)
def row_draws(words, out):
    """Two uniform draws in [0, 1) per row from a 64-bit hash of the row's words.

    words: (m, k) unsigned ints (the row's bytes); out: (m, 2) float64.
    """
    m = words.shape[0]
    h = np.empty(m, dtype=np.uint64)
    _row_hashes(words, h)
    for i in range(m):
        out[i, 0] = float(h[i] >> np.uint64(11)) * _TO_UNIT
        out[i, 1] = float(_mix(h[i] ^ np.uint64(0x5851F42D4C957F2D)) >> np.uint64(11)) * _TO_UNIT


@njit(cache=True, nogil=True)
def row_keys_into(words, out):
    """out[i] = a 64-bit key of row i, from the same hash as its split draws.

    words: (m, k) unsigned ints; out: (m,) uint64.
    """
    _row_hashes(words, out)
    for i in range(words.shape[0]):
        out[i] = _mix(out[i] ^ np.uint64(_KEY_SALT))


def _words(x):
    x = np.ascontiguousarray(x + 0.0)        # -0.0 + 0.0 is 0.0: equal values, equal bytes
    return x.view(np.uint32 if x.dtype == np.float32 else np.uint64)


def row_hash_draws(x):
    """(m, 2) float64 draws for the rows of x (m, d) float32 or float64."""
    out = np.empty((x.shape[0], 2))
    row_draws(_words(x), out)
    return out


def row_keys(x):
    """(m,) uint64 keys of the rows of x (m, d) float32 or float64: equal rows, equal keys."""
    out = np.empty(x.shape[0], dtype=np.uint64)
    row_keys_into(_words(x), out)
    return out


class SplitAssigner:
    """Assigns the rows of a message to splits by their hash.

    fractions: (train, dev, test) for "auto" rows, summing to 1.
    train_dev_fraction: the part of "auto" training rows held out as train-dev.
    """

    def __init__(self, fractions=(0.96, 0.02, 0.02), train_dev_fraction=0.02):
        train, dev, test = fractions
        if min(fractions) < 0 or abs(train + dev + test - 1.0) > 1e-9:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
        if not 0.0 <= train_dev_fraction < 1.0:
            raise ValueError(f"train_dev_fraction must be in [0, 1), got {train_dev_fraction}")
        self.dev_below = dev
        self.test_below = dev + test
        self.train_dev_fraction = train_dev_fraction

    def assign(self, x, split):
        """(m,) int8 split codes (TRAIN, TRAIN_DEV, DEV, TEST) for the rows of x, sent
        with `split` ("auto", "train", "train_dev", "dev" or "test")."""
        m = x.shape[0]
        if split == "train_dev":
            return np.full(m, TRAIN_DEV, dtype=np.int8)
        if split == "dev":
            return np.full(m, DEV, dtype=np.int8)
        if split == "test":
            return np.full(m, TEST, dtype=np.int8)
        if split == "train":
            return np.full(m, TRAIN, dtype=np.int8)
        u = row_hash_draws(x)
        codes = np.where(u[:, 1] < self.train_dev_fraction, TRAIN_DEV, TRAIN).astype(np.int8)
        codes[u[:, 0] < self.test_below] = TEST
        codes[u[:, 0] < self.dev_below] = DEV
        return codes
