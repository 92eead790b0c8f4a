"""Reading rows (and labels) from the files `learnd replay` and `learnd predict` take."""
from __future__ import annotations

import csv
import json
import os

import numpy as np


class DataFileError(ValueError):
    """A file that cannot be read as rows, with what was expected."""


def load_rows(path, label=None, labels_path=None, need_labels=True):
    """(X (m, n) float, y (m,) or (m, k) or None) from .npz, .csv or .npy.

    .npz: arrays X (or x) and y.  .csv: a header row; the label column is `label`
    (a name or a 0-based index; default: the last column).  .npy: X, with labels
    from `labels_path` (another .npy).
    """
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                key = "X" if "X" in z.files else "x" if "x" in z.files else None
                if key is None:
                    raise DataFileError(f"{path}: an .npz needs an array named X (or x); it has {z.files}")
                X = z[key]
                y = z["y"] if "y" in z.files else None
        elif ext == ".csv":
            X, y = _read_csv(path, label, need_labels)
        elif ext == ".npy":
            X = np.load(path, allow_pickle=False)
            y = np.load(labels_path, allow_pickle=False) if labels_path else None
        else:
            raise DataFileError(f"{path}: expected a .npz, .csv or .npy file")
    except OSError as exc:
        raise DataFileError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"{path}: {exc}") from None
    X = np.asarray(X)
    if X.ndim != 2:
        raise DataFileError(f"{path}: X must be 2-D (rows, features), got shape {X.shape}")
    if need_labels and y is None:
        raise DataFileError(f"{path}: no labels (y in an .npz, a label column in a .csv, --labels for .npy)")
    if y is not None and len(y) != len(X):
        raise DataFileError(f"{path}: {len(X)} rows of X but {len(y)} labels")
    return X, y


def _read_csv(path, label, need_labels):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataFileError(f"{path}: empty file")
        rows = [r for r in reader if r]
    try:
        data = np.array(rows, dtype=np.float64)
    except ValueError:
        raise DataFileError(f"{path}: every cell after the header row must be a number") from None
    if data.ndim != 2 or data.shape[1] != len(header):
        raise DataFileError(f"{path}: rows must have {len(header)} cells like the header")
    if not need_labels and label is None:
        return data, None
    if label is None:
        col = len(header) - 1
    elif str(label).lstrip("-").isdigit():
        col = int(label) % len(header)
    elif label in header:
        col = header.index(label)
    else:
        raise DataFileError(f"{path}: no column {label!r}; columns are {header}")
    y = data[:, col]
    if np.array_equal(y, np.round(y)):
        y = y.astype(np.int64)
    return np.delete(data, col, axis=1), y


def read_json_lines(stream):
    """Rows from JSON lines: each line a list of numbers or {"x": [...]}."""
    rows = []
    for n, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise DataFileError(f"stdin line {n}: not JSON: {exc}") from None
        row = value.get("x") if isinstance(value, dict) else value
        if not isinstance(row, list):
            raise DataFileError(f"stdin line {n}: expected a list of numbers or {{\"x\": [...]}}")
        rows.append(row)
    if not rows:
        raise DataFileError("no rows on stdin")
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        raise DataFileError("rows on stdin must all be lists of numbers of one length") from None
