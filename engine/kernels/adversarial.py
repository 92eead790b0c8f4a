"""Adversarial examples by the fast gradient sign method (Goodfellow et al. 2015)."""
from numba import njit

from .rng import next_uniform


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _sign(v):
    if v > 0:
        return 1.0
    if v < 0:
        return -1.0
    return 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def fgsm(X, dX, epsilon, Out):
    """Out = X + epsilon * sign(dX): the step of size epsilon per feature (max norm)
    that raises the loss most to first order.  X, dX, Out: (m, n0); Out may alias X."""
    m, n = X.shape
    for i in range(m):
        for j in range(n):
            Out[i, j] = X[i, j] + epsilon * _sign(dX[i, j])


@njit(cache=True, nogil=True, error_model="numpy")
def fgsm_some_rows(X, dX, epsilon, fraction, rng_state, Out):
    """Out = X with each row, with probability `fraction`, replaced by its FGSM example
    X + epsilon * sign(dX) (adversarial training's mix of clean and attacked rows).

    X, dX, Out: (m, n0); Out may alias X.  Returns how many rows were replaced.
    """
    m, n = X.shape
    replaced = 0
    for i in range(m):
        attack = next_uniform(rng_state) < fraction
        if attack:
            replaced += 1
        for j in range(n):
            Out[i, j] = X[i, j] + epsilon * _sign(dX[i, j]) if attack else X[i, j]
    return replaced
