"""The population file: one versioned .npz (no pickle) holding every member.

Layout (format "learnd.population", version 1):
  meta                 JSON: the population's settings, counters, members, decisions,
                       champion and its generator's state (Population.get_state()["meta"])
  error, loss          the per-row score rings (members, window) float64
  m<i>/...             member i's model state, laid out as a model file (engine.state)
  r<i>/meta, r<i>/x, r<i>/Y, r<i>/w   member i's replay ring, when it replays
"""
from __future__ import annotations

import io
import json

import numpy as np

from . import state as model_state
from .errors import EngineError

_RING = ("x", "Y", "w")     # a replay ring's arrays; the rest of its state is JSON


def to_bytes(state):
    arrays = {"meta": np.array(json.dumps(state["meta"])), "error": state["error"], "loss": state["loss"]}
    for i, ms in enumerate(state["models"]):
        arrays.update(model_state.state_arrays(ms, prefix=f"m{i}/"))
    for i, rs in enumerate(state["replays"]):
        if rs is None:
            continue
        arrays[f"r{i}/meta"] = np.array(json.dumps({k: v for k, v in rs.items() if k not in _RING}))
        if rs["x"] is not None:
            for name in _RING:
                arrays[f"r{i}/{name}"] = rs[name]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def from_bytes(data):
    """Parse bytes written by to_bytes; raise EngineError if they are not a population file."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            n = len(meta["members"])
            models = [model_state.state_from_arrays(z, prefix=f"m{i}/") for i in range(n)]
            replays = []
            for i in range(n):
                rs = json.loads(str(z[f"r{i}/meta"])) if f"r{i}/meta" in z.files else None
                if rs is not None:
                    rs.update({name: z[f"r{i}/{name}"] if f"r{i}/{name}" in z.files else None for name in _RING})
                replays.append(rs)
            state = {"meta": meta, "models": models, "replays": replays, "error": z["error"], "loss": z["loss"]}
    except Exception as exc:  # zip, npy, JSON and key errors alike mean "not a population file"
        raise EngineError(f"not a readable learnd population file: {exc}") from None
    if meta.get("format") != "learnd.population":
        raise EngineError(f"not a learnd population file (format {meta.get('format')!r})")
    for ms in state["models"]:
        if ms["meta"].get("format") != model_state.FORMAT:
            raise EngineError("a member of the population file is not a learnd model state")
    return state
