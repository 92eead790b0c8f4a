"""Numerical gradient checking by two-sided differences."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RIGHT = 1e-7       # below this the gradient is right
BUG = 1e-3         # above this it is a bug


@dataclass
class GradCheckReport:
    """‖approx − grad‖₂ / (‖approx‖₂ + ‖grad‖₂), overall and per parameter array.

    `checked` gives how many entries of each array were perturbed (all of them unless
    the array was larger than the sample limit).
    """

    overall: float
    per_param: dict = field(default_factory=dict)
    checked: dict = field(default_factory=dict)
    eps: float = 1e-7

    @property
    def ok(self):
        return self.overall < RIGHT

    def worst(self):
        """The name of the parameter array with the largest relative difference."""
        return max(self.per_param, key=self.per_param.get)

    def verdict(self, value=None):
        v = self.overall if value is None else value
        return "right" if v < RIGHT else ("BUG" if v > BUG else "doubtful")

    def to_dict(self):
        return {"overall": self.overall, "per_param": dict(self.per_param),
                "checked": dict(self.checked), "eps": self.eps, "verdict": self.verdict()}

    def __str__(self):
        lines = [f"gradient check (eps={self.eps:g}): overall {self.overall:.3e} {self.verdict()}"]
        for name, v in self.per_param.items():
            lines.append(f"  {name:<16} {v:.3e}  {self.verdict(v):<8} ({self.checked[name]} entries)")
        return "\n".join(lines)


def _relative_difference(approx, grad):
    denom = np.linalg.norm(approx) + np.linalg.norm(grad)
    return 0.0 if denom == 0 else float(np.linalg.norm(approx - grad) / denom)


def check_gradients(loss, theta, grad, slices, eps=1e-7, max_entries=None, seed=0):
    """Compare grad with two-sided differences of loss() around theta.

    loss: () -> float, reading theta (flat float64, perturbed in place and restored).
    grad: flat analytic gradient at theta.  slices: {name: (offset, shape)}.
    max_entries: check at most this many randomly chosen entries per array.
    """
    rng = np.random.default_rng(seed)
    approx_all, grad_all = [], []
    per_param, checked = {}, {}
    for name, (offset, shape) in slices.items():
        size = int(np.prod(shape))
        idx = np.arange(size)
        if max_entries is not None and size > max_entries:
            idx = np.sort(rng.choice(size, max_entries, replace=False))
        approx = np.empty(len(idx))
        for k, i in enumerate(idx):
            j = offset + i
            keep = theta[j]
            theta[j] = keep + eps
            plus = loss()
            theta[j] = keep - eps
            minus = loss()
            theta[j] = keep
            approx[k] = (plus - minus) / (2 * eps)
        analytic = grad[offset + idx]
        per_param[name] = _relative_difference(approx, analytic)
        checked[name] = len(idx)
        approx_all.append(approx)
        grad_all.append(analytic)
    overall = _relative_difference(np.concatenate(approx_all), np.concatenate(grad_all))
    return GradCheckReport(overall=overall, per_param=per_param, checked=checked, eps=eps)
