"""Load (or compile) ahead of time the kernels a process will run, so that no request
and no training step waits for Numba's cache: each process of the daemon is its own
interpreter and would otherwise pay it on first use, a fraction of a second."""
from __future__ import annotations

import numpy as np

from .drift import ADWIN
from .ensemble import Ensemble
from .kernels.adversarial import fgsm
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
    # Adversarial examples (a predict option) and, when training, the augmentation and
    # adversarial-training kernels: one head suffices, the kernels take it as a value.
    y = targets["multiclass"][1]
    model = Model(hidden=(2,), task="multiclass", n_outputs=3, input_dim=4, dtype=dtype, input_shape=(2, 2),
                  augment_shift=1, augment_flip=True, augment_mixup_alpha=0.2, augment_noise_std=0.1,
                  adversarial_epsilon=0.1)
    x4 = rng.standard_normal((8, 4)).astype(dtype)
    if training:
        model.partial_fit(x4, y)
    snap = model.snapshot()
    Y = np.eye(3, dtype=dtype)[y]
    dX = np.empty_like(x4)
    snap.input_loss_and_grad_into(x4, Y, dX, snap.new_workspace(), snap.new_input_grad_work())
    fgsm(x4, dX, 0.1, dX)
    if training:
        ADWIN(clock=1, grace_period=1).update(np.tile([0.0, 1.0], 32))
