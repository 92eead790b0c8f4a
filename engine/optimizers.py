"""Optimizers: each a small class whose `step` updates the flat parameter buffer.

State (moments) is created lazily on the first step, sized like the parameters.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .kernels import optim


class Optimizer(ABC):
    """θ ← θ − update(g).  Subclasses name their moment buffers in `moments`."""

    name = ""
    moments: tuple = ()

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8):
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.t = 0                      # steps applied so far
        self.state: dict[str, np.ndarray] = {}
        self._constants_key = None

    def _moment(self, name, like):
        buf = self.state.get(name)
        if buf is None:
            buf = self.state[name] = np.zeros_like(like)
        return buf

    def _constants(self, theta, *values):
        """The scalars `values` in theta's dtype, converted once and reused while they and
        the dtype stay the same (a conversion costs about half a microsecond, which shows
        in small networks' steps; the learning rate and g_scale change rarely too)."""
        key = (theta.dtype, values)
        if self._constants_key != key:
            self._constants_key = key
            self._constants_typed = _typed(theta, *values)
        return self._constants_typed

    def step(self, theta, g, lr, g_scale=1.0):
        """One update of theta (flat) from gradient g (flat), g scaled by g_scale."""
        self.t += 1
        self._apply(theta, g, lr, g_scale)

    @abstractmethod
    def _apply(self, theta, g, lr, g_scale):
        """The update itself, by the subclass's kernel."""

    def reset(self):
        """Forget the moments and the step count: the next step is taken as a first one
        (bias correction included).  After a change in the stream, averages of the old
        stream's gradients only steer the steps wrong.  Buffers are zeroed in place."""
        self.t = 0
        for buf in self.state.values():
            buf.fill(0)

    def get_state(self):
        return {"t": self.t, "moments": {k: v.copy() for k, v in self.state.items()}}

    def set_state(self, state, like):
        self.t = int(state["t"])
        self.state = {}
        for k, v in state["moments"].items():
            self._moment(k, like)[...] = v


# The smallest normal number of each dtype: moments below it are stored as 0
# (kernels.optim says why).
_TINY = {np.dtype(t): float(np.finfo(t).tiny) for t in (np.float32, np.float64)}


def _tiny(theta):
    return _TINY[theta.dtype]


def _typed(theta, *values):
    """The scalars in theta's dtype, so the kernels compute in it throughout."""
    return tuple(map(theta.dtype.type, values))


class SGD(Optimizer):
    """θ -= α g."""

    name = "sgd"

    def _apply(self, theta, g, lr, g_scale):
        optim.sgd_step(theta, g, *self._constants(theta, g_scale, lr))


class Momentum(Optimizer):
    """v = β1 v + (1-β1) g;  θ -= α v."""

    name = "momentum"
    moments = ("v",)

    def _apply(self, theta, g, lr, g_scale):
        optim.momentum_step(theta, g, self._moment("v", theta),
                            *self._constants(theta, g_scale, lr, self.beta1, 1.0 - self.beta1, _tiny(theta)))


class RMSprop(Optimizer):
    """s = β2 s + (1-β2) g²;  θ -= α g / (√s + ε)."""

    name = "rmsprop"
    moments = ("s",)

    def _apply(self, theta, g, lr, g_scale):
        optim.rmsprop_step(theta, g, self._moment("s", theta),
                           *self._constants(theta, g_scale, lr, self.beta2, 1.0 - self.beta2, self.eps,
                                            _tiny(theta)))


class Adam(Optimizer):
    """Momentum and RMSprop moments with bias correction: θ -= α v̂ / (√ŝ + ε)."""

    name = "adam"
    moments = ("v", "s")

    def _apply(self, theta, g, lr, g_scale):
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        b1, one_minus_b1, b2, one_minus_b2, eps, tiny = self._constants(
            theta, self.beta1, 1.0 - self.beta1, self.beta2, 1.0 - self.beta2, self.eps, _tiny(theta))
        g_scale, lr_over_c1, inv_c2 = _typed(theta, g_scale, lr / c1, 1.0 / c2)
        optim.adam_step(theta, g, self._moment("v", theta), self._moment("s", theta), g_scale,
                        lr_over_c1, b1, one_minus_b1, b2, one_minus_b2, inv_c2, eps, tiny)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, RMSprop, Adam)}
