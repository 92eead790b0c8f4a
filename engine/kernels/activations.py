"""Hidden-layer activations; derivatives are written in terms of the stored output A."""
import numpy as np
from numba import njit

RELU = 0
LEAKY_RELU = 1
TANH = 2
SIGMOID = 3
LINEAR = 4

ACTIVATIONS = {"relu": RELU, "leaky_relu": LEAKY_RELU, "tanh": TANH,
               "sigmoid": SIGMOID, "linear": LINEAR}

LEAKY_SLOPE = 0.01


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def sigmoid(z):
    # Two branches so exp never overflows: exp(-|z|) <= 1.
    if z >= 0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return e / (1.0 + e)


@njit(cache=True, nogil=True, error_model="numpy")
def activation_forward(Z, A, kind):
    """A = g(Z), elementwise.  Z, A: (m, n)."""
    m, n = Z.shape
    for i in range(m):
        for j in range(n):
            z = Z[i, j]
            if kind == RELU:
                A[i, j] = z if z > 0 else 0.0
            elif kind == LEAKY_RELU:
                A[i, j] = z if z > 0 else LEAKY_SLOPE * z
            elif kind == TANH:
                A[i, j] = np.tanh(z)
            elif kind == SIGMOID:
                A[i, j] = sigmoid(z)
            else:
                A[i, j] = z


@njit(cache=True, nogil=True, error_model="numpy")
def activation_backward(dA, A, dZ, kind):
    """dZ = dA * g'(Z), with g' taken from the stored A = g(Z).  May run in place.

    relu: A > 0 exactly when Z > 0, and g'(0) = 0.  leaky_relu: likewise with slope 0.01.
    tanh: 1 - A^2.  sigmoid: A (1 - A).  linear: 1.
    dA, A, dZ: (m, n)
    """
    m, n = dA.shape
    for i in range(m):
        for j in range(n):
            a = A[i, j]
            if kind == RELU:
                d = 1.0 if a > 0 else 0.0
            elif kind == LEAKY_RELU:
                d = 1.0 if a > 0 else LEAKY_SLOPE
            elif kind == TANH:
                d = 1.0 - a * a
            elif kind == SIGMOID:
                d = a * (1.0 - a)
            else:
                d = 1.0
            dZ[i, j] = dA[i, j] * d
