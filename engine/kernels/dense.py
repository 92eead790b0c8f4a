"""Fully connected layer: Z = A_prev W^T + b."""
from numba import njit

from .blas import matmul_nn, matmul_nt, matmul_tn


@njit(cache=True, nogil=True, error_model="numpy")
def dense_forward(A_prev, W, b, Z):
    """Z = A_prev @ W.T + b.

    A_prev: (m, n_in)  W: (n_out, n_in)  b: (n_out,) or (0,) for no bias  Z: (m, n_out)
    """
    matmul_nt(A_prev, W, Z)
    if b.shape[0] > 0:
        m, n = Z.shape
        for i in range(m):
            for j in range(n):
                Z[i, j] += b[j]


@njit(cache=True, nogil=True, error_model="numpy")
def dense_backward(dZ, A_prev, W, dW, db, dA_prev):
    """Backward of Z = A_prev @ W.T + b.

    dW = dZ^T A_prev;  db = sum_rows dZ;  dA_prev = dZ W (skipped when dA_prev is (0, 0)).
    dZ: (m, n_out)  A_prev: (m, n_in)  W, dW: (n_out, n_in)  db: (n_out,) or (0,)
    """
    matmul_tn(dZ, A_prev, dW)
    if db.shape[0] > 0:
        m, n = dZ.shape
        db[:] = 0.0
        for i in range(m):
            for j in range(n):
                db[j] += dZ[i, j]
    if dA_prev.shape[0] > 0:
        matmul_nn(dZ, W, dA_prev)
