"""Drift: ADWIN on the progressive (test-then-train) error stream, and what the trainer
does when it finds a change (`on_drift`).

Every training row is scored before the model learns from it, so its error is an honest
sample of how the model does on the stream as it is now; when that error's mean shifts,
the stream changed under the model.  The detector sees each row's error (0/1, or the
share of a row's labelled outputs that are wrong), a batch per call.  Only a rise of the
error is drift: ADWIN also finds falls (a model learning, a stream getting easier), which
are counted apart and call for nothing.

Actions: `none` (count, log, report); `reset_optimizer` (moments and step count start
afresh: averages of the old stream's gradients would steer the first steps on the new
one); `boost_lr` (the learning rate is multiplied by `drift_boost` and returns linearly to
its value over the next `drift_boost_rows` trained rows).  With a population every
member takes the action, each from its own learning rate.
"""
from __future__ import annotations

import logging
import time

from learnd.engine.drift import ADWIN

log = logging.getLogger("learnd.trainer")


class DriftWatch:
    """The detector, its counts, the last drift, and a learning-rate boost in progress."""

    def __init__(self, config):
        self.config = config
        self.detector = ADWIN(delta=config.drift_delta) if config.drift_detector == "adwin" else None
        self.rows = 0               # rows of the error stream the detector has seen
        self.falls = 0              # changes where the error fell: not drift
        self.last = None            # the last drift: where, when, the error around it, the action
        self.boost = None           # {"bases": {member: lr}, "start": samples_trained, "rows", "factor"}

    def observe(self, errors):
        """Feed one batch's row errors; returns the stream positions (rows, counted from 1)
        at which the error rose."""
        if self.detector is None or errors is None or errors.shape[0] == 0:
            return []
        self.detector.delta = self.config.drift_delta     # live
        found = self.detector.update(errors)
        rises = self.detector.rises
        self.falls += int((~rises).sum())
        positions = (self.rows + found[rises] + 1).tolist()
        self.rows += errors.shape[0]
        return positions

    def record(self, position, samples_trained, model_version, window_error, action):
        self.last = {"row": position, "samples_trained": samples_trained, "model_version": model_version,
                     "time": time.time(), "window_error": window_error, "action": action}

    # -- boost_lr ---------------------------------------------------------------------------
    def start_boost(self, models, samples_trained):
        """models: {member id (0 for one model): Model}.  A boost already running restarts
        from its bases, so repeated drifts never compound the rate."""
        bases = dict(self.boost["bases"]) if self.boost is not None else {}
        for key, model in models.items():
            bases.setdefault(str(key), model.spec.lr)
        self.boost = {"bases": bases, "start": samples_trained, "rows": self.config.drift_boost_rows,
                      "factor": self.config.drift_boost}
        self.apply_boost(models, samples_trained)

    def apply_boost(self, models, samples_trained):
        """Set each model's rate for this point of the boost; the boost ends at its base."""
        b = self.boost
        if b is None:
            return
        left = max(0.0, 1.0 - (samples_trained - b["start"]) / max(b["rows"], 1))
        scale = 1.0 + (b["factor"] - 1.0) * left
        for key, model in models.items():
            base = b["bases"].get(str(key))
            if base is not None:
                model.set(lr=base * scale)
        if left == 0.0:
            self.boost = None

    def cancel_boost(self):
        """An operator set the learning rate: theirs stands."""
        self.boost = None

    def status(self):
        d = self.detector
        return {"detector": self.config.drift_detector, "delta": self.config.drift_delta,
                "on_drift": self.config.on_drift, "detections": d.detections - self.falls if d is not None else 0,
                "falls": self.falls,
                "rows_watched": self.rows, "window_rows": d.width if d is not None else 0,
                "window_error": d.estimation if d is not None else None, "last": self.last,
                "boost": self.boost}

    def to_state(self):
        return {"rows": self.rows, "falls": self.falls, "last": self.last, "boost": self.boost,
                "detector": None if self.detector is None else self.detector.plain_state()}

    def load_state(self, state):
        self.rows, self.last, self.boost = int(state["rows"]), state["last"], state["boost"]
        self.falls = int(state.get("falls", 0))
        saved = state.get("detector")
        if self.detector is not None and saved is not None and saved["max_buckets"] == self.detector.max_buckets:
            self.detector.set_state(saved)
