"""Running z-score of the training stream's inputs."""
from __future__ import annotations

import numpy as np

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
        # Staging buffers, swapped with the live ones on commit.
        self._count = 0.0
        self._mean = np.zeros(n_features)
        self._m2 = np.zeros(n_features)
        self._shift = self.shift.copy()
        self._inv_scale = self.inv_scale.copy()

    def stage(self, X):
        """Statistics including X (m, n0); returns the (shift, inv_scale) to train with."""
        if not self.enabled:
            return self.shift, self.inv_scale
        self._count = welford_merge(X, self.count, self.mean, self.m2, self._mean, self._m2)
        normalizer_scale(self._count, self._mean, self._m2, self._shift, self._inv_scale)
        return self._shift, self._inv_scale

    def commit(self):
        if not self.enabled:
            return
        self.count = self._count
        self.mean, self._mean = self._mean, self.mean
        self.m2, self._m2 = self._m2, self.m2
        self.shift, self._shift = self._shift, self.shift
        self.inv_scale, self._inv_scale = self._inv_scale, self.inv_scale

    def get_state(self):
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy()}

    def set_state(self, state):
        self.count = float(state["count"])
        self.mean[...] = state["mean"]
        self.m2[...] = state["m2"]
        normalizer_scale(self.count, self.mean, self.m2, self.shift, self.inv_scale)
