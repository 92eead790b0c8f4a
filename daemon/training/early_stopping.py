"""Early stopping on the dev split: the best figure so far, and patience counted in
evaluations.

This class only keeps the score; the trainer keeps the best model and carries out the
configured action when patience runs out:

- "none": report it and keep serving the latest model;
- "serve_best": serve the best snapshot (training goes on, and the latest model is
  served again once it beats the best);
- "freeze": stop training until an operator unfreezes it (rows are still scored by
  progressive validation, and held-out splits keep being evaluated).
"""
from __future__ import annotations

import math


class EarlyStopping:
    def __init__(self, patience, min_delta=0.0):
        self.patience = patience            # evaluations without improvement; 0 = off
        self.min_delta = min_delta
        self.best = math.inf
        self.best_version = None            # model version (batches trained) of the best
        self.best_samples = None
        self.since_best = 0                 # evaluations since the best
        self.stopped = False                # patience ran out (until the next improvement)

    @property
    def enabled(self):
        return self.patience > 0

    def observe(self, value, version, samples):
        """Take one dev evaluation; returns "improved", "waiting", "stopped" (patience
        ran out at this evaluation) or "stopped_already"."""
        if value is None or not math.isfinite(value):
            return "waiting"
        if value < self.best - self.min_delta:
            self.best, self.best_version, self.best_samples = value, version, samples
            self.since_best = 0
            self.stopped = False
            return "improved"
        self.since_best += 1
        if self.stopped:
            return "stopped_already"
        if self.enabled and self.since_best >= self.patience:
            self.stopped = True
            return "stopped"
        return "waiting"

    def restart(self):
        """Patience starts again (after a rollback or an unfreeze); the best is kept."""
        self.since_best = 0
        self.stopped = False

    def figures(self):
        return {"patience": self.patience, "best_dev": self.best if math.isfinite(self.best) else None,
                "best_version": self.best_version, "best_samples": self.best_samples,
                "evaluations_since_best": self.since_best, "stopped": self.stopped}

    def to_state(self):
        return {"best": self.best if math.isfinite(self.best) else None, "best_version": self.best_version,
                "best_samples": self.best_samples, "since_best": self.since_best, "stopped": self.stopped}

    def load_state(self, state):
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.best_version, self.best_samples = state["best_version"], state["best_samples"]
        self.since_best, self.stopped = int(state["since_best"]), bool(state["stopped"])
