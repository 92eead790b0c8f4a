"""Shared test helpers: labelled random batches and exact model-state comparison."""
from __future__ import annotations

import numpy as np

from learnd.engine import Model
from learnd.engine.kernels import network as KN

TASKS = ("binary", "multiclass", "multilabel", "regression")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "linear")
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")

N_OUTPUTS = {"binary": 1, "multiclass": 3, "multilabel": 3, "regression": 2}


def labels(task, m, rng, n_outputs=None, nan_fraction=0.2):
    """Valid labels for `task` in DESIGN's main format: (m,) ids, (m,) 0/1 for binary,
    (m, K) 0/1 with a `nan_fraction` of NaN ("no label") for multilabel, (m, K) floats
    for regression ((m,) when K is 1)."""
    K = N_OUTPUTS[task] if n_outputs is None else n_outputs
    if task == "multiclass":
        return rng.integers(0, K, size=m)
    if task == "binary":
        return rng.integers(0, 2, size=m)
    if task == "multilabel":
        y = rng.integers(0, 2, size=(m, K)).astype(np.float64)
        y[rng.random((m, K)) < nan_fraction] = np.nan
        return y
    return rng.normal(size=(m, K)) if K > 1 else rng.normal(size=m)


def batch(task, m, n, rng, n_outputs=None, scale=1.0, offset=0.0):
    """(X, y): X (m, n) normal * scale + offset, and labels for the task."""
    X = rng.normal(size=(m, n)) * scale + offset
    return X, labels(task, m, rng, n_outputs)


def moved_model(activation="tanh", task="multiclass", batch_norm=True, rng=None, steps=3, rows=6,
                seed=11, **kw):
    """Input 5, hidden (4, 3), float64, moved `steps` sgd steps on `rows`-row batches off
    its initial point, so gamma, beta, the biases, the running statistics and the
    normalizer are no longer at their starting values.  kw overrides the settings."""
    settings = dict(hidden=(4, 3), activation=activation, task=task, n_outputs=N_OUTPUTS[task],
                    batch_norm=batch_norm, dtype="float64", optimizer="sgd", lr=0.1, seed=seed)
    settings.update(kw)
    model = Model(**settings)
    for _ in range(steps):
        model.partial_fit(*batch(task, rows, 5, rng, scale=2.0, offset=1.0))
    return model


def targets(task, y, K):
    """The (m, K) float64 target matrix DESIGN's label conventions describe."""
    y = np.asarray(y, dtype=np.float64)
    if task == "multiclass" and y.ndim == 1:
        return np.eye(K)[y.astype(int)]
    return y.reshape(len(y), K)


def full_state(model):
    """Everything a model holds that training or a bad input could change, copied:
    get_state() plus the normalizer's derived shift/scale and the step counter."""
    s = model.get_state()
    if model.normalizer is not None:
        s["norm_live"] = {"shift": model.normalizer.shift.copy(),
                          "inv_scale": model.normalizer.inv_scale.copy(),
                          "count": np.array(model.normalizer.count)}
    s["steps"] = model.steps
    s["input_dim"] = model.spec.input_dim
    return s


def assert_same_state(a, b, path="state"):
    """Bit-for-bit equality of two nested states (dicts of arrays and plain values)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{path}: {type(b)} is not an array"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f"{path} differs"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def dropout_masks(model, m):
    """The masks the last training pass drew, read from the network's workspace."""
    net = model.network
    cap = net.train_work.cap
    masks = {}
    for l, row in enumerate(net.layout.table[:-1], start=1):
        slot = row[KN.SLOT_MASK]
        if slot >= 0:
            n = row[KN.N_OUT]
            masks[l] = net.train_work.buf[slot * cap:slot * cap + m * n].reshape(m, n).astype(np.float64)
    return masks
