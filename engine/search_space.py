"""Where a population draws its members' settings from: one distribution per setting.

Hyperparameters are best drawn at random, on the scale where they matter: log scale
for the learning rate and L2 (1e-4 and 1e-3 are as far apart as 1e-3 and 1e-2), and
for a beta, log scale of 1 - beta (0.9 -> 0.99 -> 0.999 each average ten times more
steps).  Then the search zooms in on the region of the good draws (coarse to fine).

    space = SearchSpace.parse({"lr": {"log_uniform": [1e-4, 1e-1]},
                               "width": {"int_log_uniform": [16, 512]},
                               "optimizer": {"choice": ["adam", "rmsprop"]}})
    rng = np.random.default_rng(0)
    draw = space.sample(rng)                     # {"lr": 0.0031..., "width": 87, ...}
    settings = space.apply(base, draw)           # Model keyword arguments, hidden = (87,) * depth
    finer = space.narrowed([best_a, best_b])     # the box around the best draws

Distributions (DESIGN): ``{log_uniform = [lo, hi]}``, ``{uniform = [lo, hi]}``,
``{int_log_uniform = [lo, hi]}`` (whole numbers, log scale), ``{choice = [...]}``,
and ``{one_minus_log_uniform = [lo, hi]}`` for settings like beta1 whose distance to
1 is what matters (lo and hi are the betas; log10(1 - beta) is uniform).

Settings are a Model's (engine.spec.ModelSpec), plus ``width`` and ``depth``, which
make ``hidden = (width,) * depth``; a space gives ``hidden`` as a choice of layer
lists, or width and depth, not both.  ``replay_recency`` is a member's replay
(engine.Replay's recency, rows > 0), not its model's: `apply` leaves it out and
`replay_settings` gives it.  Settings a space does not list keep the base values they
are merged into.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import EngineError
from .spec import ModelSpec

KINDS = ("log_uniform", "uniform", "int_log_uniform", "choice", "one_minus_log_uniform")
# Settings of the stream, not of the learner: every member must agree on them.
FIXED = ("task", "n_outputs", "input_dim", "dtype", "seed")
SHAPE = ("width", "depth")
# Settings of a member's replay, not of its model (name in the space: Replay keyword).
REPLAY = {"replay_recency": "recency"}

# The default space: what matters most first (the learning rate), then the betas,
# the size of the network, the regularizers; batch norm on or off.  The bounds bracket
# what works on the shipped data sets by a wide margin on both sides.
DEFAULT_SPACE = {
    "lr": {"log_uniform": [3e-4, 3e-2]},
    "width": {"int_log_uniform": [32, 512]},
    "depth": {"choice": [0, 1, 2, 3]},     # 0: a linear model (logistic or linear regression)
    "l2": {"log_uniform": [1e-7, 1e-3]},
    "keep_prob": {"uniform": [0.7, 1.0]},
    "batch_norm": {"choice": [False, True]},
    "beta1": {"one_minus_log_uniform": [0.8, 0.99]},
    "beta2": {"one_minus_log_uniform": [0.99, 0.9999]},
    # How far back a member's replay reaches: short for a drifting stream, long for a
    # stationary one (docs/learning.md).
    "replay_recency": {"log_uniform": [128, 4096]},
}

# How far a narrowed box reaches past the best draws, as a share of the original
# range on its own scale: without it, two draws that happen to agree would pin a
# setting for good.
NARROW_MARGIN = 0.1


@dataclass(frozen=True)
class Dimension:
    """One setting's distribution.  lo/hi are on the value scale; `choices` for choice."""

    name: str
    kind: str
    lo: float = 0.0
    hi: float = 0.0
    choices: tuple = ()

    # -- the scale draws are uniform on ----------------------------------------------
    def to_unit(self, value):
        """The value on the scale it is drawn uniformly on (log10, log10(1 - v), or v)."""
        if self.kind in ("log_uniform", "int_log_uniform"):
            return math.log10(value)
        if self.kind == "one_minus_log_uniform":
            return math.log10(1.0 - value)
        return float(value)

    def from_unit(self, u):
        if self.kind == "log_uniform":
            return float(10.0 ** u)
        if self.kind == "int_log_uniform":
            return int(min(max(round(10.0 ** u), self.lo), self.hi))
        if self.kind == "one_minus_log_uniform":
            return float(1.0 - 10.0 ** u)
        return float(u)

    def unit_or_low(self, value, low):
        """to_unit, or `low` for a value the scale cannot hold (log of 0, 1 - beta <= 0)."""
        try:
            return self.to_unit(value)
        except (ValueError, TypeError):
            return low

    @property
    def unit_bounds(self):
        a, b = self.to_unit(self.lo), self.to_unit(self.hi)
        return (a, b) if a <= b else (b, a)

    def sample(self, rng):
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        a, b = self.unit_bounds
        return self.from_unit(a + (b - a) * rng.random())

    def narrowed(self, values, outer):
        """The part of this dimension around `values` (draws that did well), within
        `outer` (the original dimension): their hull, widened by NARROW_MARGIN of the
        original range; a choice keeps the choices they use."""
        if self.kind == "choice":
            kept = tuple(c for c in self.choices if any(_same(c, v) for v in values))
            return Dimension(self.name, "choice", choices=kept or self.choices)
        a, b = outer.unit_bounds
        # A base setting may lie outside the space (l2 = 0 has no log): it counts as
        # the nearest bound.
        units = [min(max(self.unit_or_low(v, a), a), b) for v in values]
        pad = NARROW_MARGIN * (b - a)
        lo, hi = max(a, min(units) - pad), min(b, max(units) + pad)
        lo_v, hi_v = self.from_unit(lo), self.from_unit(hi)
        if self.kind == "one_minus_log_uniform":     # the scale runs backwards
            lo_v, hi_v = hi_v, lo_v
        return Dimension(self.name, self.kind, lo=lo_v, hi=hi_v)

    def to_dict(self):
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        return {self.kind: [self.lo, self.hi]}


def _same(a, b):
    """Equal as settings: lists and tuples alike, but True is not the choice 1."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


class SearchSpace:
    """A distribution per setting; see the module docstring."""

    def __init__(self, dims, origin=None):
        self.dims = dict(dims)                     # name -> Dimension
        self.origin = origin or self               # the space this one was narrowed from

    # -- parsing -----------------------------------------------------------------------
    @classmethod
    def parse(cls, spec=None):
        """A SearchSpace from a mapping {setting: {kind: args}} (TOML table or JSON);
        None gives DEFAULT_SPACE.  Raises EngineError naming the setting at fault."""
        if spec is None:
            spec = DEFAULT_SPACE
        if isinstance(spec, SearchSpace):
            return spec
        if not isinstance(spec, dict) or not spec:
            raise EngineError(f"search_space must be a non-empty table of setting = distribution, got {spec!r}")
        allowed = {f for f in ModelSpec.__dataclass_fields__ if ModelSpec.__dataclass_fields__[f].init}
        allowed = (allowed - set(FIXED)) | set(SHAPE) | set(REPLAY)
        if "hidden" in spec and set(SHAPE) & set(spec):
            raise EngineError("search_space gives hidden and width/depth: give the layer lists "
                              "(hidden = {choice = [[64], [128, 64]]}) or width and depth, not both")
        dims = {}
        for name, dist in spec.items():
            if name in FIXED:
                raise EngineError(f"search_space cannot vary {name!r}: every member learns the same "
                                  f"stream with the same {name}")
            if name not in allowed:
                raise EngineError(f"search_space names {name!r}, which is not a model setting "
                                  f"(settings: {', '.join(sorted(allowed))})")
            dims[name] = _parse_dimension(name, dist)
        space = cls(dims)
        for name, dim in dims.items():        # every value the space can give must be a valid setting
            for value in ((dim.lo, dim.hi) if dim.kind != "choice" else dim.choices):
                try:
                    space.apply({}, {name: value})
                except EngineError as exc:
                    raise EngineError(f"search_space {name}: {value!r} is not a valid value: {exc}") from None
        return space

    # -- draws -----------------------------------------------------------------------------
    def sample(self, rng):
        """One draw: {setting: value} in the space's own names (width and depth stay
        apart; `apply` turns them into hidden)."""
        return {name: dim.sample(rng) for name, dim in self.dims.items()}

    def narrowed(self, drawn):
        """The space around `drawn` (draws as `sample` gives them, the ones that did
        well): each dimension cut to the region they occupy, on its own scale, widened
        by NARROW_MARGIN of the original range."""
        if not drawn:
            return self
        dims = {name: dim.narrowed([d[name] for d in drawn if name in d], self.origin.dims[name])
                if any(name in d for d in drawn) else dim
                for name, dim in self.dims.items()}
        return SearchSpace(dims, origin=self.origin)

    def apply(self, base, draw):
        """Model keyword arguments: `base` with `draw` laid over it, width and depth
        made into hidden = (width,) * depth (the base's hidden gives the one not drawn),
        validated as a ModelSpec.  Raises EngineError if they do not fit."""
        settings = {**base, **{k: v for k, v in draw.items() if k not in SHAPE and k not in REPLAY}}
        self.replay_settings(draw)            # checks them
        if "width" in draw or "depth" in draw:
            base_hidden = tuple(base.get("hidden", ModelSpec.hidden))
            width = int(draw.get("width", base_hidden[0] if base_hidden else 64))
            depth = int(draw.get("depth", len(base_hidden)))
            settings["hidden"] = (width,) * depth
        if "hidden" in settings:
            settings["hidden"] = tuple(int(h) for h in settings["hidden"])
        ModelSpec.from_dict(settings)
        return settings

    @staticmethod
    def replay_settings(draw):
        """engine.Replay keyword arguments a draw gives (empty when it draws none).
        Raises EngineError on a value Replay refuses."""
        out = {REPLAY[k]: v for k, v in draw.items() if k in REPLAY}
        if "recency" in out:            # a very long recency is what draws near-uniformly
            recency = out["recency"]
            if not (isinstance(recency, (int, float)) and not isinstance(recency, bool)
                    and math.isfinite(recency) and recency > 0):
                raise EngineError(f"replay_recency must be a number of rows > 0, got {recency!r}")
        return out

    # -- description ---------------------------------------------------------------------
    def to_dict(self):
        return {name: dim.to_dict() for name, dim in self.dims.items()}

    def __repr__(self):
        return f"SearchSpace({self.to_dict()})"


def _parse_dimension(name, dist):
    if not isinstance(dist, dict) or len(dist) != 1:
        raise EngineError(f"search_space {name} must be one distribution such as "
                          f"{{log_uniform = [1e-4, 1e-1]}}, got {dist!r}")
    (kind, args), = dist.items()
    if kind not in KINDS:
        raise EngineError(f"search_space {name}: unknown distribution {kind!r} "
                          f"(one of {', '.join(KINDS)})")
    if kind == "choice":
        if not isinstance(args, (list, tuple)) or not args:
            raise EngineError(f"search_space {name}: choice needs a non-empty list, got {args!r}")
        if name == "depth" and not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in args):
            raise EngineError(f"search_space depth: choices must be whole numbers of layers, got {args!r}")
        return Dimension(name, kind, choices=tuple(tuple(a) if isinstance(a, list) else a for a in args))
    if (not isinstance(args, (list, tuple)) or len(args) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)):
        raise EngineError(f"search_space {name}: {kind} needs [lo, hi], two finite numbers, got {args!r}")
    lo, hi = float(args[0]), float(args[1])
    if not lo <= hi:
        raise EngineError(f"search_space {name}: {kind} needs lo <= hi, got [{args[0]}, {args[1]}]")
    if kind in ("log_uniform", "int_log_uniform") and lo <= 0:
        raise EngineError(f"search_space {name}: {kind} needs lo > 0 (a log scale never reaches 0), "
                          f"got {args[0]}")
    if kind == "one_minus_log_uniform" and not (lo < 1.0 and hi < 1.0):
        raise EngineError(f"search_space {name}: one_minus_log_uniform takes values below 1 "
                          f"(such as betas [0.9, 0.999]), got [{args[0]}, {args[1]}]")
    if kind == "int_log_uniform":
        if lo != int(lo) or hi != int(hi):
            raise EngineError(f"search_space {name}: int_log_uniform needs whole-number bounds, got {list(args)}")
        return Dimension(name, kind, lo=int(lo), hi=int(hi))
    if name in SHAPE and kind != "int_log_uniform":
        raise EngineError(f"search_space {name}: draw it with choice or int_log_uniform (it is a count)")
    return Dimension(name, kind, lo=lo, hi=hi)
