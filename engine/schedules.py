"""Learning-rate schedules: `get(epoch)` gives the rate, epoch = samples_seen // epoch_size.

`base` is α0; setting it by hand (Model.set_learning_rate) moves the whole schedule.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod


class Schedule(ABC):
    name = ""

    def __init__(self, base, decay_rate=0.0, step_epochs=1):
        self.base = base
        self.decay_rate = decay_rate
        self.step_epochs = step_epochs

    @abstractmethod
    def get(self, epoch):
        """The learning rate at this epoch."""


class Constant(Schedule):
    """α0."""

    name = "constant"

    def get(self, epoch):
        return self.base


class InverseTime(Schedule):
    """α0 / (1 + decay_rate · epoch)."""

    name = "inverse_time"

    def get(self, epoch):
        return self.base / (1.0 + self.decay_rate * epoch)


class Exponential(Schedule):
    """α0 · decay_rate^epoch."""

    name = "exponential"

    def get(self, epoch):
        return self.base * self.decay_rate ** epoch


class InverseSqrt(Schedule):
    """α0 · k / √(epoch + 1), with k = decay_rate."""

    name = "inverse_sqrt"

    def get(self, epoch):
        return self.base * self.decay_rate / math.sqrt(epoch + 1)


class Staircase(Schedule):
    """α0 · decay_rate^(epoch // step_epochs)."""

    name = "staircase"

    def get(self, epoch):
        return self.base * self.decay_rate ** (epoch // self.step_epochs)


SCHEDULES = {cls.name: cls for cls in (Constant, InverseTime, Exponential, InverseSqrt, Staircase)}
