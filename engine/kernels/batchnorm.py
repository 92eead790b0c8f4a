"""Batch normalization over the rows of a mini-batch, per feature (column)."""
import numpy as np
from numba import njit

from .moments import column_moments


@njit(cache=True, nogil=True, error_model="numpy")
def batchnorm_forward_train(Z, gamma, beta, Zhat, Out, mean, var, inv_std, eps):
    """Normalize with the batch's own statistics.

    mean = (1/m) sum_i Z;  var = (1/m) sum_i (Z - mean)^2 (biased);
    Zhat = (Z - mean) / sqrt(var + eps);  Out = gamma * Zhat + beta.
    Z, Zhat, Out: (m, n)  gamma, beta, mean, var, inv_std: (n,).  Out may alias Z.
    """
    m, n = Z.shape
    column_moments(Z, mean, var)
    for j in range(n):
        var[j] /= m
        inv_std[j] = 1.0 / np.sqrt(var[j] + eps)
    for i in range(m):
        for j in range(n):
            zh = (Z[i, j] - mean[j]) * inv_std[j]
            Zhat[i, j] = zh
            Out[i, j] = gamma[j] * zh + beta[j]


@njit(cache=True, nogil=True, error_model="numpy")
def batchnorm_backward(dOut, Zhat, gamma, inv_std, dgamma, dbeta, dZ, sum_buf):
    """Backward of Out = gamma * (Z - mean) * inv_std + beta, batch statistics included.

    dgamma = sum_i dOut * Zhat;  dbeta = sum_i dOut;  with dZhat = dOut * gamma:
    dZ = inv_std / m * (m dZhat - sum_i dZhat - Zhat * sum_i dZhat Zhat).
    dOut, Zhat, dZ: (m, n); dZ may alias dOut.  gamma, inv_std, dgamma, dbeta: (n,).
    sum_buf: (n,) scratch.
    """
    m, n = dOut.shape
    dgamma[:] = 0.0
    dbeta[:] = 0.0
    for i in range(m):
        for j in range(n):
            g = dOut[i, j]
            dbeta[j] += g
            dgamma[j] += g * Zhat[i, j]
    # sum_i dZhat = gamma * dbeta and sum_i dZhat * Zhat = gamma * dgamma.
    for j in range(n):
        sum_buf[j] = gamma[j] * inv_std[j] / m
    for i in range(m):
        for j in range(n):
            dZ[i, j] = sum_buf[j] * (m * dOut[i, j] - dbeta[j] - Zhat[i, j] * dgamma[j])


@njit(cache=True, nogil=True, error_model="numpy")
def batchnorm_forward_eval(Z, gamma, beta, running_mean, running_var, eps, Out):
    """Inference: Out = gamma * (Z - running_mean) / sqrt(running_var + eps) + beta.

    Z, Out: (m, n), Out may alias Z.  gamma, beta, running_mean, running_var: (n,).
    """
    m, n = Z.shape
    for i in range(m):
        for j in range(n):
            scale = gamma[j] / np.sqrt(running_var[j] + eps)
            Out[i, j] = (Z[i, j] - running_mean[j]) * scale + beta[j]


@njit(cache=True, nogil=True, error_model="numpy")
def batchnorm_update_running(running_mean, running_var, mean, var, m, momentum_beta):
    """EWMA of the batch statistics: running = beta * running + (1 - beta) * batch.

    The running variance tracks the unbiased batch variance (x m / (m - 1)), as
    PyTorch's BatchNorm1d does, so inference matches it with momentum = 1 - beta.
    All arrays: (n,).
    """
    unbias = m / (m - 1.0)
    for j in range(mean.shape[0]):
        running_mean[j] = momentum_beta * running_mean[j] + (1.0 - momentum_beta) * mean[j]
        running_var[j] = momentum_beta * running_var[j] + (1.0 - momentum_beta) * var[j] * unbias
