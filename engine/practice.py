"""What a training step does to its rows before learning from them: augmentation
(image shifts and flips, mixup, Gaussian noise) and adversarial training (FGSM rows
mixed into the batch).  Only training steps come here; evaluation and prediction
read their rows as given.
"""
from __future__ import annotations

import numpy as np

from .kernels.adversarial import fgsm_some_rows
from .kernels.augment import add_noise, mixup, shift_flip


class Practice:
    """Growable buffers for the altered copy of a batch; the caller's X and Y are read,
    never written.  A steady stream of equal batches allocates once.
    """

    def __init__(self, dtype):
        self.dtype = dtype
        self._x = {}                              # X's dtype -> flat buffer of two (m, n0) slots
        self._y = np.empty(0, dtype=dtype)
        self._dx = np.empty(0, dtype=dtype)

    def _slots(self, dtype, m, n):
        buf = self._x.get(dtype)
        if buf is None or buf.size < 2 * m * n:
            buf = self._x[dtype] = np.empty(max(2 * m * n, 0 if buf is None else 2 * buf.size), dtype=dtype)
        return buf[:m * n].reshape(m, n), buf[m * n:2 * m * n].reshape(m, n)

    def _grown(self, name, size):
        buf = getattr(self, name)
        if buf.size < size:
            buf = np.empty(max(size, 2 * buf.size), dtype=self.dtype)
            setattr(self, name, buf)
        return buf[:size]

    def input_gradient_buffer(self, m, n):
        """(m, n) scratch in the model's dtype for dJ/dX."""
        return self._grown("_dx", m * n).reshape(m, n)

    def prepare(self, spec, network, X, Y, w, shift, inv_scale, rng_state):
        """(X', Y'): the rows this step learns from.  X (m, n0) raw, Y (m, K) targets,
        w (m,) or (0,) weights, shift/inv_scale the normalizer's for this step,
        rng_state the model's generator (advanced).  X' and Y' are this object's buffers
        (valid until the next call), or X and Y themselves when nothing applies.

        Order: shifts and flips, then mixup, then noise, each on the previous stage's
        output; then, with adversarial training, FGSM rows from the network as it stands
        (inference mode), so the attack targets the rows the step actually sees.
        """
        m, n = X.shape
        first, second = self._slots(X.dtype, m, n)
        cur = X
        if spec.augment_shift or spec.augment_flip:
            shape = spec.input_shape
            shift_flip(X, shape[0], shape[1], shape[2] if len(shape) == 3 else 1, spec.augment_shift,
                       spec.augment_flip, rng_state, first)
            cur = first
        if spec.augment_mixup_alpha > 0:
            out = second if cur is first else first
            Y_out = self._grown("_y", Y.size).reshape(Y.shape)
            mixup(cur, Y, spec.augment_mixup_alpha, rng_state, out, Y_out)
            cur, Y = out, Y_out
        # Noise and FGSM may write in place, but never into the caller's X.
        if spec.augment_noise_std > 0:
            out = first if cur is X else cur
            add_noise(cur, inv_scale, spec.augment_noise_std, rng_state, out)
            cur = out
        if spec.adversarial_epsilon > 0 and spec.adversarial_fraction > 0:
            dX = self.input_gradient_buffer(m, n)
            network.input_loss_and_grad(cur, Y, w, shift, inv_scale, dX)
            out = first if cur is X else cur
            fgsm_some_rows(cur, dX, spec.adversarial_epsilon, spec.adversarial_fraction, rng_state, out)
            cur = out
        return cur, Y
