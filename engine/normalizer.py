"""Running z-score of the training stream's inputs."""
from __future__ import annotations

import numpy as np

from .collective import pooled_moments
from .kernels.moments import column_moments
from .kernels.normalize import normalizer_scale, welford_merge


class InputNormalizer:
    """All-time Welford mean and biased variance of the training inputs.

    Each training batch is staged before its step (the step sees statistics that
    include it) and committed only if the step succeeds, so a rejected or non-finite
    step leaves the statistics as they were.  When disabled, inputs pass unchanged.

    count: float  mean, m2: (n0,) float64  shift, inv_scale: (n0,) model dtype.
    """

    def __init__(self, n_features, dtype, enabled=True):
        self.enabled = enabled
        self.count = 0.0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)
        self.shift = np.zeros(n_features, dtype=dtype)
        self.inv_scale = np.ones(n_features, dtype=dtype)
        self.generation = 0      # grows whenever shift or inv_scale change (serving weights refold)
        # Staging buffers, swapped with the live ones on commit.
        self._count = 0.0
        self._mean = np.zeros(n_features)
        self._m2 = np.zeros(n_features)
        self._shift = self.shift.copy()
        self._inv_scale = self.inv_scale.copy()

    def stage(self, X, collective=None):
        """Statistics including X (m, n0); returns the (shift, inv_scale) to train with.

        With a collective (engine.collective), the statistics include every rank's
        batch of this step (X may then have 0 rows), so every rank scales alike.
        """
        if not self.enabled:
            return self.shift, self.inv_scale
        if collective is None:
            self._count = welford_merge(X, self.count, self.mean, self.m2, self._mean, self._m2)
        else:
            self._count = self._merge_group(X, collective)
        normalizer_scale(self._count, self._mean, self._m2, self._shift, self._inv_scale)
        return self._shift, self._inv_scale

    def _merge_group(self, X, collective):
        m = X.shape[0]
        if m:
            column_moments(X, self._mean, self._m2)
        else:
            self._mean[...] = 0.0
            self._m2[...] = 0.0
        count, mean, m2 = pooled_moments(collective, float(m), self._mean, self._m2)
        if count == 0:
            self._mean[...] = self.mean
            self._m2[...] = self.m2
            return self.count
        # welford_merge's combination of the running statistics with the group's batch.
        total = self.count + count
        delta = mean - self.mean
        self._m2[...] = self.m2 + m2 + delta * delta * (self.count * count / total)
        self._mean[...] = self.mean + delta * (count / total)
        return total

    def commit(self):
        if not self.enabled:
            return
        self.count = self._count
        self.mean, self._mean = self._mean, self.mean
        self.m2, self._m2 = self._m2, self.m2
        self.shift, self._shift = self._shift, self.shift
        self.inv_scale, self._inv_scale = self._inv_scale, self.inv_scale
        self.generation += 1

    def get_state(self):
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy()}

    def set_state(self, state):
        self.count = float(state["count"])
        self.mean[...] = state["mean"]
        self.m2[...] = state["m2"]
        normalizer_scale(self.count, self.mean, self.m2, self.shift, self.inv_scale)
        self.generation += 1
