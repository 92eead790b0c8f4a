"""The model file: a versioned .npz (no pickle) and an atomic write.

Layout of a file (format "learnd.model", version 1):
  meta          0-d unicode array holding JSON: {"format", "version", "spec",
                "counters", "optimizer_t", "normalizer_count", "target_count"}
  param/<name>  each parameter (W1, b1, gamma1, beta1, ...)
  stat/<name>   each running statistic (running_mean1, running_var1, ...)
  opt/<name>    each optimizer moment, flat like the parameter buffer (v, s)
  norm/mean, norm/m2   the input normalizer's float64 statistics
  target/mean, target/m2   the regression targets' float64 statistics (engine.targets);
                absent from files written before them, read as none seen
  rng           the dropout generator's uint64[4] state
"""
from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np

from .errors import EngineError

FORMAT = "learnd.model"
VERSION = 1


GROUPS = ("param", "stat", "opt", "norm", "target")


def state_arrays(state, prefix=""):
    """A Model state dict (see Model.get_state) as the file's named arrays, each name
    after `prefix` (a population file keeps each member under its own)."""
    arrays = {f"{prefix}meta": np.array(json.dumps(state["meta"])), f"{prefix}rng": state["rng"]}
    for group in GROUPS:
        for name, arr in state[group].items():
            arrays[f"{prefix}{group}/{name}"] = arr
    return arrays


def state_from_arrays(z, prefix=""):
    """The Model state dict from the named arrays `z` (an open .npz) under `prefix`."""
    state = {"meta": json.loads(str(z[f"{prefix}meta"])), "rng": z[f"{prefix}rng"], **{g: {} for g in GROUPS}}
    for key in z.files:
        if not key.startswith(prefix):
            continue
        group, _, name = key[len(prefix):].partition("/")
        if name and group in GROUPS and "/" not in name:
            state[group][name] = z[key]
    return state


def state_to_bytes(state):
    """Serialize a Model state dict (see Model.get_state) to .npz bytes."""
    buf = io.BytesIO()
    np.savez(buf, **state_arrays(state))
    return buf.getvalue()


def state_from_bytes(data):
    """Parse .npz bytes written by state_to_bytes; raise EngineError if it is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            state = state_from_arrays(z)
            meta = state["meta"]
    except Exception as exc:  # zip, npy and JSON errors alike mean "not a model file"
        raise EngineError(f"not a readable learnd model file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise EngineError(f"not a learnd model file (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise EngineError(f"model file version {meta.get('version')} is not supported "
                          f"(this engine reads version {VERSION})")
    return state


def write_atomic(path, data):
    """Write bytes so the file is either the old one or the whole new one: a temporary
    file in the same directory, fsync, rename over the target, fsync of the directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
