"""Column statistics of a batch, shared by batch norm and the input normalizer."""
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def column_moments(X, mean, sq_dev):
    """mean[j] = (1/m) sum_i X[i, j];  sq_dev[j] = sum_i (X[i, j] - mean[j])^2.

    Two passes (mean first, then squared deviations) so a variance made from sq_dev
    never goes negative through cancellation.  X: (m, n)  mean, sq_dev: (n,).
    """
    m, n = X.shape
    mean[:] = 0.0
    sq_dev[:] = 0.0
    for i in range(m):
        for j in range(n):
            mean[j] += X[i, j]
    for j in range(n):
        mean[j] /= m
    for i in range(m):
        for j in range(n):
            d = X[i, j] - mean[j]
            sq_dev[j] += d * d
