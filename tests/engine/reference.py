"""Plain NumPy references for the engine's math, written from DESIGN's formulas.

Everything here is float64, vectorized, and independent of the engine's kernels: the
derivatives are taken with respect to Z (not the stored A), batch norm's backward is
the textbook chain rule through mean and variance, and the losses use logaddexp.
Tests compare the engine against these.
"""
from __future__ import annotations

import numpy as np

LEAKY = 0.01


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))       # exact identity, no overflow


def act_forward(kind, Z):
    if kind == "relu":
        return np.maximum(Z, 0.0)
    if kind == "leaky_relu":
        return np.maximum(LEAKY * Z, Z)
    if kind == "tanh":
        return np.tanh(Z)
    if kind == "sigmoid":
        return sigmoid(Z)
    if kind == "linear":
        return Z.copy()
    raise KeyError(kind)


def act_derivative(kind, Z):
    """g'(Z); relu'(0) = 0 and leaky_relu'(0) = 0.01 as DESIGN says."""
    if kind == "relu":
        return (Z > 0).astype(np.float64)
    if kind == "leaky_relu":
        return np.where(Z > 0, 1.0, LEAKY)
    if kind == "tanh":
        return 1.0 - np.tanh(Z) ** 2
    if kind == "sigmoid":
        s = sigmoid(Z)
        return s * (1.0 - s)
    if kind == "linear":
        return np.ones_like(Z)
    raise KeyError(kind)


# -- output heads: per-row loss L_i and dL_i/dZ ------------------------------------------
def head_loss_rows(task, Z, Y):
    """L (m,) and dL/dZ (m, K) of each row, unweighted and not divided by m."""
    if task == "multiclass":
        shifted = Z - Z.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -(Y * logp).sum(axis=1), np.exp(logp) - Y
    if task in ("binary", "multilabel"):
        labelled = ~np.isnan(Y)
        Yz = np.where(labelled, Y, 0.0)
        # -y log p - (1-y) log(1-p) with log p = -log(1+e^-z), log(1-p) = -log(1+e^z)
        bce = Yz * np.logaddexp(0.0, -Z) + (1.0 - Yz) * np.logaddexp(0.0, Z)
        return (bce * labelled).sum(axis=1), (sigmoid(Z) - Yz) * labelled
    if task == "regression":
        d = Z - Y
        return 0.5 * (d * d).sum(axis=1), d
    raise KeyError(task)


def head_output(task, Z):
    if task == "multiclass":
        e = np.exp(Z - Z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if task in ("binary", "multilabel"):
        return sigmoid(Z)
    return Z.copy()


def weighted_mean_loss(task, Z, Y, w=None):
    """(1/m) sum_i w_i L_i / mean(w) and its dJ/dZ."""
    m = Z.shape[0]
    w = np.ones(m) if w is None else np.asarray(w, dtype=np.float64) / np.mean(w)
    L, dL = head_loss_rows(task, Z, Y)
    return float((w * L).sum() / m), dL * (w / m)[:, None]


# -- batch norm -----------------------------------------------------------------------------
def bn_train(Z, gamma, beta, eps):
    mean = Z.mean(axis=0)
    var = Z.var(axis=0)                                   # biased
    Zhat = (Z - mean) / np.sqrt(var + eps)
    return gamma * Zhat + beta, (Z, mean, var, Zhat)


def bn_backward(dOut, cache, gamma, eps):
    """Textbook chain rule through mean and variance (not the engine's folded form)."""
    Z, mean, var, Zhat = cache
    m = Z.shape[0]
    dgamma = (dOut * Zhat).sum(axis=0)
    dbeta = dOut.sum(axis=0)
    dZhat = dOut * gamma
    inv = 1.0 / np.sqrt(var + eps)
    dvar = (dZhat * (Z - mean)).sum(axis=0) * -0.5 * inv ** 3
    dmean = -(dZhat * inv).sum(axis=0) + dvar * (-2.0 * (Z - mean)).mean(axis=0)
    dZ = dZhat * inv + dvar * 2.0 * (Z - mean) / m + dmean / m
    return dZ, dgamma, dbeta


def bn_eval(Z, gamma, beta, running_mean, running_var, eps):
    return gamma * (Z - running_mean) / np.sqrt(running_var + eps) + beta


def bn_running_update(running_mean, running_var, Z, bn_beta):
    """DESIGN's EWMA: running var tracks the unbiased batch variance (ddof=1)."""
    return (bn_beta * running_mean + (1 - bn_beta) * Z.mean(axis=0),
            bn_beta * running_var + (1 - bn_beta) * Z.var(axis=0, ddof=1))


# -- whole network --------------------------------------------------------------------------
class Net:
    """A model's architecture read from its spec: sizes, activations, batch norm, head."""

    def __init__(self, spec):
        self.sizes = spec.layer_sizes
        self.L = len(self.sizes) - 1
        self.activations = spec.activations
        self.batch_norm = spec.batch_norm
        self.task = spec.task
        self.bn_eps = spec.bn_eps

    def is_bn(self, l):
        return self.batch_norm and l < self.L


def forward_backward(net, P, X, Y, w=None, shift=None, inv_scale=None, masks=None,
                     l2=0.0, l1=0.0):
    """Training-mode J and its gradient with respect to every array in P.

    P: {"W1": (n1, n0), "b1" or "gamma1"/"beta1", ...} float64.  masks: {l: (m, n_l)}
    dropout masks (0 or 1/keep) for the hidden layers that have them.
    Returns (J, grads, batch) where batch[l] is layer l's pre-batch-norm Z.
    """
    masks = masks or {}
    X = np.asarray(X, dtype=np.float64)
    A = X if shift is None else (X - shift) * inv_scale
    inputs, caches, Zs, batch = [], {}, {}, {}
    for l in range(1, net.L + 1):
        inputs.append(A)
        Z = A @ P[f"W{l}"].T
        if f"b{l}" in P:
            Z = Z + P[f"b{l}"]
        if l == net.L:
            break
        if net.is_bn(l):
            batch[l] = Z
            Z, caches[l] = bn_train(Z, P[f"gamma{l}"], P[f"beta{l}"], net.bn_eps)
        Zs[l] = Z
        A = act_forward(net.activations[l - 1], Z)
        if l in masks:
            A = A * masks[l]
    J, dZ = weighted_mean_loss(net.task, Z, Y, w)
    for l in range(1, net.L + 1):
        W = P[f"W{l}"]
        J += 0.5 * l2 * (W * W).sum() + l1 * np.abs(W).sum()

    grads = {}
    for l in range(net.L, 0, -1):
        if l < net.L:
            dA = dZ
            if l in masks:
                dA = dA * masks[l]
            dZ = dA * act_derivative(net.activations[l - 1], Zs[l])
            if net.is_bn(l):
                dZ, grads[f"gamma{l}"], grads[f"beta{l}"] = bn_backward(
                    dZ, caches[l], P[f"gamma{l}"], net.bn_eps)
        W = P[f"W{l}"]
        grads[f"W{l}"] = dZ.T @ inputs[l - 1] + l2 * W + l1 * np.sign(W)
        if f"b{l}" in P:
            grads[f"b{l}"] = dZ.sum(axis=0)
        dZ = dZ @ W
    return J, grads, batch


def predict_proba(net, P, S, X, shift=None, inv_scale=None):
    """Inference: running statistics S, no dropout, the head's output."""
    A = np.asarray(X, dtype=np.float64)
    if shift is not None:
        A = (A - shift) * inv_scale
    for l in range(1, net.L + 1):
        Z = A @ P[f"W{l}"].T
        if f"b{l}" in P:
            Z = Z + P[f"b{l}"]
        if l == net.L:
            return head_output(net.task, Z)
        if net.is_bn(l):
            Z = bn_eval(Z, P[f"gamma{l}"], P[f"beta{l}"], S[f"running_mean{l}"],
                        S[f"running_var{l}"], net.bn_eps)
        A = act_forward(net.activations[l - 1], Z)


def params64(model):
    return {k: v.astype(np.float64) for k, v in model.network.params.items()}


def stats64(model):
    return {k: v.astype(np.float64) for k, v in model.network.stats.items()}


def input_gradient(net, P, S, X, Y, w=None, shift=None, inv_scale=None):
    """Inference-mode J (running statistics S, no dropout, no penalty) and dJ/dX in
    input units, by the chain rule through every layer and the input normalizer."""
    X = np.asarray(X, dtype=np.float64)
    shift = np.zeros(X.shape[1]) if shift is None else np.asarray(shift, dtype=np.float64)
    inv_scale = np.ones(X.shape[1]) if inv_scale is None else np.asarray(inv_scale, dtype=np.float64)
    A = (X - shift) * inv_scale
    pre, bn_scale = {}, {}
    for l in range(1, net.L + 1):
        Z = A @ P[f"W{l}"].T
        if f"b{l}" in P:
            Z = Z + P[f"b{l}"]
        if l == net.L:
            break
        if net.is_bn(l):
            bn_scale[l] = P[f"gamma{l}"] / np.sqrt(S[f"running_var{l}"] + net.bn_eps)
            Z = (Z - S[f"running_mean{l}"]) * bn_scale[l] + P[f"beta{l}"]
        pre[l] = Z
        A = act_forward(net.activations[l - 1], Z)
    J, dZ = weighted_mean_loss(net.task, Z, Y, w)
    for l in range(net.L, 0, -1):
        if l < net.L:
            dZ = dZ * act_derivative(net.activations[l - 1], pre[l])
            if net.is_bn(l):
                dZ = dZ * bn_scale[l]
        dZ = dZ @ P[f"W{l}"]
    return J, dZ * inv_scale
