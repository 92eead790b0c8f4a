"""What the stream looks like: input size, task and outputs, fixed by configuration or
by the first training batch; and the checks every message's arrays must pass."""
from __future__ import annotations

import logging

import numpy as np

from learnd.clients.protocol import ProtocolError
from learnd.engine import EngineError
from learnd.engine.labels import write_targets
from learnd.engine.spec import TASKS

log = logging.getLogger("learnd.schema")

# Guessing more classes than this from one batch's largest id is more likely a bad label
# than a real task; a producer with that many classes says so with header "n_outputs".
MAX_GUESSED_CLASSES = 10_000


class Schema:
    """input_dim, task and n_outputs of the model; None until known."""

    def __init__(self, input_dim=None, task=None, n_outputs=None):
        self.input_dim = input_dim
        self.task = task
        self.n_outputs = n_outputs

    @property
    def known(self):
        return self.input_dim is not None and self.task is not None and self.n_outputs is not None

    def to_dict(self):
        return {"input_dim": self.input_dim, "task": self.task, "n_outputs": self.n_outputs}

    def infer(self, x, y, header):
        """Fix what is still unknown from a first training batch and its header.

        The task comes from header "task" when given, else from the labels: floats other
        than 0/1 mean regression; integer ids mean binary when all are 0/1, else multiclass
        with max id + 1 classes (header "n_outputs" is the reliable way to say how many);
        2-D 0/1 labels mean one-hot multiclass when every row sums to 1, else multilabel.
        """
        task = self.task or header.get("task")
        n_out = self.n_outputs or header.get("n_outputs")
        if task is not None and task not in TASKS:
            raise ProtocolError("bad_header", f"header 'task' must be one of {', '.join(TASKS)}")
        if n_out is not None and (not isinstance(n_out, int) or isinstance(n_out, bool) or n_out < 1):
            raise ProtocolError("bad_header", "header 'n_outputs' must be a positive int")
        if x is None or y is None:
            raise ProtocolError("not_ready", "the first training batch must carry x and y")
        # Shapes first: the guesses below read the labels, and an empty batch has none.
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ProtocolError("shape_mismatch", f"x must be 2-D with at least one row and one feature, "
                                                  f"got shape {list(x.shape)}")
        if y.shape[0] != x.shape[0]:
            raise ProtocolError("shape_mismatch", f"y has {y.shape[0]} rows, x has {x.shape[0]}")
        if task is None:
            task, guessed = _guess_task(y)
            n_out = n_out or guessed
        elif n_out is None:
            n_out = _guess_outputs(task, y)
        if task == "binary":
            n_out = 1
        if n_out > MAX_GUESSED_CLASSES and not header.get("n_outputs"):
            raise ProtocolError("bad_label", f"the labels imply {n_out} outputs; give header "
                                             "'n_outputs' if that is really meant")
        self.input_dim = self.input_dim or int(x.shape[1])
        self.task, self.n_outputs = task, int(n_out)
        log.info("stream schema fixed by the first batch: input_dim=%d task=%s n_outputs=%d",
                 self.input_dim, self.task, self.n_outputs)


def _guess_task(y):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        finite = y[~np.isnan(y)] if y.dtype.kind == "f" else y
        if np.isin(finite, (0, 1)).all():
            if y.dtype.kind != "f" or not np.isnan(y).any():
                if (y.sum(axis=1) == 1).all():
                    return "multiclass", y.shape[1]
            return "multilabel", y.shape[1]
        return "regression", y.shape[1]
    flat = y.reshape(-1)
    if flat.dtype.kind == "b" or (flat.dtype.kind in "iu" and np.isin(flat, (0, 1)).all()):
        return "binary", 1
    if flat.dtype.kind == "f":
        if np.isin(flat, (0.0, 1.0)).all():
            return "binary", 1
        return "regression", 1
    return "multiclass", max(int(flat.max()) + 1, 2)


def _guess_outputs(task, y):
    y = np.asarray(y)
    if task == "multiclass":
        return y.shape[1] if y.ndim == 2 else max(int(y.max()) + 1, 2)
    return y.shape[1] if y.ndim == 2 else 1


def check_x(x, schema, limits_rows, max_abs=0.0):
    """x must be (m, input_dim) numbers, finite, 1 <= m, and |x| <= max_abs (0: no bound)."""
    if x.ndim != 2:
        raise ProtocolError("shape_mismatch", f"x must be 2-D (rows, features), got shape {list(x.shape)}")
    if x.dtype.kind not in "iuf":
        raise ProtocolError("bad_array", f"x must be numbers, got dtype {x.dtype.str}")
    m, n = x.shape
    if m == 0 or n == 0:
        raise ProtocolError("shape_mismatch", f"x needs at least one row and one feature, got {list(x.shape)}")
    if schema.input_dim is not None and n != schema.input_dim:
        raise ProtocolError("shape_mismatch", f"x must have {schema.input_dim} features, got {n}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ProtocolError("non_finite", "x holds NaN or Inf")
    check_magnitude("x", x, max_abs)


def check_magnitude(name, a, max_abs):
    """Refuse values beyond ±max_abs (a finite numeric array; max_abs 0 means no bound)."""
    if not max_abs or a.size == 0:
        return
    largest = max(abs(float(a.max())), abs(float(a.min())))
    if largest > max_abs:
        raise ProtocolError("out_of_range", f"{name} holds a value of magnitude {largest:.3g}, beyond "
                                            f"max_abs_value = {max_abs:g}")


def check_converted(name, a):
    """After conversion to the model's dtype: a finite value too large for it became Inf."""
    if not np.isfinite(a).all():
        raise ProtocolError("non_finite", f"{name} holds values too large for {a.dtype} (they overflow to Inf)")


def targets(y, schema, m, dtype, max_abs=0.0):
    """Labels y checked for the task and converted to float targets (m, n_outputs);
    regression targets beyond ±max_abs are refused (0: no bound)."""
    if y.shape[0] != m:
        raise ProtocolError("shape_mismatch", f"y has {y.shape[0]} rows, x has {m}")
    if schema.task == "regression" and y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ProtocolError("non_finite", "y holds NaN or Inf")
    if schema.task == "regression" and y.dtype.kind in "iuf":
        check_magnitude("y", y, max_abs)
    if schema.task in ("binary", "multiclass") and y.dtype.kind == "f" and np.isinf(y).any():
        raise ProtocolError("non_finite", "y holds Inf")
    Y = np.empty((m, schema.n_outputs), dtype=dtype)
    try:
        with np.errstate(over="ignore", invalid="ignore"):   # such targets are refused, here or below
            write_targets(schema.task, schema.n_outputs, y, m, Y)
    except EngineError as exc:
        code = "shape_mismatch" if "shape" in str(exc) else "bad_label"
        raise ProtocolError(code, str(exc)) from None
    if schema.task == "regression":
        check_converted("y", Y)
    return Y


def weights(w, m):
    """Sample weights (m,), finite, >= 0, not all zero, as float64."""
    if w.ndim != 1 or w.shape[0] != m:
        raise ProtocolError("shape_mismatch", f"w must have shape [{m}], got {list(w.shape)}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all():
        raise ProtocolError("non_finite", "w holds NaN or Inf")
    if (w < 0).any() or not (w > 0).any():
        raise ProtocolError("bad_array", "w must be >= 0 and not all zero")
    return w
