"""Checks labels and sample weights against the task and writes the target matrix.

Each function raises EngineError naming what was expected and what came, and writes
nothing into the buffers it was given unless the whole batch is valid.
"""
from __future__ import annotations

import numpy as np

from .errors import EngineError
from .kernels.labels import class_ids_to_onehot, copy_into, first_bad_binary, first_bad_onehot
from .kernels.normalize import count_nonfinite

ONEHOT_TOLERANCE = 1e-3


def _as_array(y, name):
    try:
        arr = np.asarray(y)
    except Exception as exc:  # anything numpy cannot turn into an array
        raise EngineError(f"{name} must be an array, got {type(y).__name__}: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise EngineError(f"{name} must hold numbers or bools, got dtype {arr.dtype}")
    # The kernels take native-endian arrays, and of the floats only float32/64.
    if arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    elif not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def write_targets(task, n_outputs, y, m, Y):
    """Check labels y for a batch of m rows and write them as floats into Y (m, K).

    binary: (m,) or (m, 1) of 0/1 (ints, bools or floats).
    multiclass: (m,) integer class ids in [0, K), or (m, K) one-hot / probability rows.
    multilabel: (m, K) of 0/1, NaN meaning "no label".
    regression: (m,) when K is 1, or (m, K); finite floats.
    """
    y = _as_array(y, "y")
    K = n_outputs
    if y.ndim == 0 or y.shape[0] != m:
        raise EngineError(f"y must have one label row per input row ({m}), got shape {y.shape}")
    if task == "multiclass" and y.ndim == 1:
        if y.dtype.kind == "f":
            if count_nonfinite(y.reshape(m, 1)) or not np.array_equal(y, np.floor(y)):
                raise EngineError("multiclass labels must be integer class ids, got non-integer floats")
            y = y.astype(np.int64)
        elif y.dtype.kind == "b":
            raise EngineError("multiclass labels must be integer class ids, got bools")
        bad = class_ids_to_onehot(np.ascontiguousarray(y), K, Y)
        if bad >= 0:
            raise EngineError(f"multiclass label {y[bad]} at row {bad} is outside [0, {K})")
        return
    if y.ndim == 1 and K == 1 and task in ("binary", "regression", "multilabel"):
        y = y.reshape(m, 1)
    if y.ndim != 2 or y.shape[1] != K:
        if task == "multiclass":
            expected = f"({m},) class ids or ({m}, {K}) one-hot rows"
        elif K == 1:
            expected = f"({m},) or ({m}, 1)"
        else:
            expected = f"({m}, {K})"
        raise EngineError(f"{task} labels must have shape {expected}, got {y.shape}")
    y = np.ascontiguousarray(y)
    if task == "regression":
        if y.dtype.kind in "b":
            raise EngineError("regression targets must be numbers, got bools")
        if y.dtype.kind == "f" and count_nonfinite(y):
            raise EngineError("regression targets must be finite, got NaN or Inf")
    elif task == "multiclass":
        if y.dtype.kind != "f":
            y = y.astype(np.float64)
        bad = first_bad_onehot(y, ONEHOT_TOLERANCE)
        if bad >= 0:
            raise EngineError(f"multiclass label row {bad} is not one-hot (entries in [0, 1] "
                              f"summing to 1): {y[bad].tolist()}")
    else:  # binary, multilabel
        # One kernel pass for floats and ints alike (an int is never NaN): two NumPy
        # reductions cost a small network's step several microseconds more.
        bad = -1 if y.dtype.kind == "b" else first_bad_binary(y, task == "multilabel")
        if bad >= 0:
            allowed = "0, 1 or NaN" if task == "multilabel" else "0 or 1"
            raise EngineError(f"{task} labels must be {allowed}; row {bad} has {y[bad].tolist()}")
    copy_into(y, Y)


def labels_from_outputs(task, P):
    """What predict returns for head outputs P (m, n_outputs): class ids (m,) for
    multiclass, 0/1 labels (m, n_outputs) for binary and multilabel, P itself (values)
    for regression."""
    if task == "multiclass":
        return P.argmax(axis=1)
    if task in ("binary", "multilabel"):
        return (P >= 0.5).astype(np.int64)
    return P


def write_weights(sample_weight, m, out):
    """Check sample weights (m,) and write w / mean(w) into out (m,).  None writes nothing
    and returns an empty array (the kernels read it as all ones)."""
    if sample_weight is None:
        return out[:0]
    w = _as_array(sample_weight, "sample_weight")
    if w.shape != (m,):
        raise EngineError(f"sample_weight must have shape ({m},), got {w.shape}")
    w = w.astype(np.float64, copy=False)
    if count_nonfinite(w.reshape(m, 1)) or (w < 0).any():
        raise EngineError("sample_weight must be finite and >= 0")
    mean = w.mean()
    if mean <= 0:
        raise EngineError("sample_weight must not be all zero")
    np.divide(w, mean, out=out[:m])
    return out[:m]
