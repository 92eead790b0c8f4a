"""Load (or compile) ahead of time the kernels a process will run, so that no request
and no training step waits for Numba's cache: each process of the daemon is its own
interpreter and would otherwise pay it on first use, a fraction of a second."""
from __future__ import annotations

import numpy as np

from .drift import ADWIN
from .ensemble import Ensemble
from .kernels.normalize import count_nonfinite
from .labels import labels_from_outputs
from .model import Model


def warm_up(dtype="float32", training=True):
    """Run every kernel for `dtype` once on a tiny model of each task, with and without
    batch norm: inference of one model and of an ensemble, the input check and the label
    mapping; with `training`, a step (dropout included), the training-mode outputs and
    the drift detector the trainer runs on its progressive error."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype(dtype)
    targets = {"multiclass": (3, rng.integers(0, 3, 8)), "binary": (1, rng.integers(0, 2, 8)),
               "multilabel": (2, rng.integers(0, 2, (8, 2)).astype(np.float64)),
               "regression": (1, rng.standard_normal(8))}
    for task, (n_outputs, y) in targets.items():
        snaps = []
        for batch_norm in (True, False):
            model = Model(hidden=(2,), task=task, n_outputs=n_outputs, input_dim=3, batch_norm=batch_norm,
                          keep_prob=0.9, dtype=dtype)
            if training:
                model.partial_fit(x, y)
                model.predict_proba(x)
            snaps.append(model.snapshot())
        for snap in (*snaps, Ensemble(snaps)):
            out = np.empty((x.shape[0], n_outputs), dtype=dtype)
            snap.predict_into(x, out, snap.new_workspace())
            labels_from_outputs(task, out)
    count_nonfinite(x)
    if training:
        ADWIN(clock=1, grace_period=1).update(np.tile([0.0, 1.0], 32))
