"""Standardized regression targets that keep the network's outputs where they were.

A regression network whose targets lie far from 0 (prices around 400, say) must first
move its output by hundreds of units, which at a learning rate tuned for z-scored data
takes tens of thousands of steps.  With `normalize_targets` the network learns
(y - mean) / std instead, with the all-time (Welford) mean and standard deviation of
the training targets, and its outputs are mapped back (o * std + mean) wherever they
leave the model: predictions, snapshots, the last batch's outputs.

The statistics move with every batch, so the head is rescaled as they do (van Hasselt
et al. 2016, "Learning values across many orders of magnitude", Pop-Art): with old
(mean, std) = (mu, s) and new (mu', s'), the output layer becomes
W' = W s / s' and b' = (s b + mu - mu') / s', which leaves every prediction in target
units exactly as it was, so the only change to what the model says comes from learning.
"""
from __future__ import annotations

import numpy as np

from .normalizer import InputNormalizer


class TargetScaler:
    """The targets' running statistics, and the head's rescaling as they move.

    Like the input normalizer, a training batch is staged before its step (its targets
    are standardized with statistics that include it) and committed only if the step
    succeeds; `rollback` puts the head back if it does not.

    W: (K, n_{L-1}) and b: (K,) are views of the output layer's live parameters.
    out_scale, out_shift: (K,) in the model's dtype, what maps an output back to target
    units (ones and zeros when disabled, or before any training target).
    """

    def __init__(self, n_outputs, dtype, W, b, enabled):
        self.enabled = enabled
        self.stats = InputNormalizer(n_outputs, dtype, enabled)
        self.W, self.b = W, b
        self.out_scale = np.ones(n_outputs, dtype=dtype)
        self.out_shift = np.zeros(n_outputs, dtype=dtype)
        self.generation = 0      # grows whenever the head's W and b are rescaled or restored
        self._saved_W = np.empty_like(W)
        self._saved_b = np.empty_like(b)
        self._scaled = np.empty((0, n_outputs), dtype=dtype)
        self._outputs = np.empty((0, n_outputs), dtype=dtype)
        self._ratio = np.empty(n_outputs, dtype=np.float64)
        # The map of the last step's outputs to target units (the statistics it used).
        self._used_scale = np.ones(n_outputs, dtype=dtype)
        self._used_shift = np.zeros(n_outputs, dtype=dtype)

    @staticmethod
    def _rows(buf, m):
        if buf.shape[0] < m:
            buf = np.empty((max(m, 2 * buf.shape[0]), buf.shape[1]), dtype=buf.dtype)
        return buf

    def _standardized(self, Y, shift, inv_scale):
        self._scaled = self._rows(self._scaled, Y.shape[0])
        out = self._scaled[:Y.shape[0]]
        np.subtract(Y, shift, out=out)
        out *= inv_scale
        np.divide(1.0, inv_scale, out=self._used_scale)
        self._used_shift[...] = shift
        return out

    def stage(self, Y, preserve, collective=None):
        """Targets Y (m, K) standardized with statistics that include them, the head
        rescaled to those statistics when `preserve` (the model has learned something
        to keep).  Returns Y itself when disabled, else a buffer valid until the next call.
        With a collective, the statistics include every rank's targets of this step."""
        if not self.enabled:
            return Y
        shift, inv_scale = self.stats.stage(Y, collective)
        self._saved_W[...] = self.W
        self._saved_b[...] = self.b
        if preserve:
            # s / s' per output, and b' = (s b + mu - mu') / s' = b s / s' + (mu - mu') / s'.
            np.multiply(self.out_scale, inv_scale, out=self._ratio)
            self.W *= self._ratio[:, None].astype(self.W.dtype)
            self.b[...] = (self.b * self._ratio + (self.out_shift - shift) * inv_scale).astype(self.b.dtype)
            self.generation += 1
        return self._standardized(Y, shift, inv_scale)

    def commit(self):
        if not self.enabled:
            return
        self.stats.commit()
        self._refresh()

    def rollback(self):
        """Undo a stage whose step was not taken: the head as it was."""
        if self.enabled:
            self.W[...] = self._saved_W
            self.b[...] = self._saved_b
            self.generation += 1

    def standardize(self, Y):
        """Y (m, K) standardized with the committed statistics (rows already learned)."""
        if not self.enabled:
            return Y
        return self._standardized(Y, self.stats.shift, self.stats.inv_scale)

    def in_target_units(self, outputs):
        """The last step's head outputs (m, K) in target units, mapped with the
        statistics that step used; `outputs` itself when disabled, else a buffer valid
        until the next call."""
        if not self.enabled:
            return outputs
        self._outputs = self._rows(self._outputs, outputs.shape[0])
        out = self._outputs[:outputs.shape[0]]
        np.multiply(outputs, self._used_scale, out=out)
        out += self._used_shift
        return out

    def _refresh(self):
        self.out_scale[...] = 1.0 / self.stats.inv_scale
        self.out_shift[...] = self.stats.shift
        self.generation += 1

    # -- state -----------------------------------------------------------------------
    def get_state(self):
        return self.stats.get_state()

    def set_state(self, state):
        self.stats.set_state(state)
        if self.enabled:
            self._refresh()
