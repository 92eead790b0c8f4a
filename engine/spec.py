"""The model's settings: stored typed, validated in one place."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import EngineError
from .kernels.activations import ACTIVATIONS

TASKS = ("binary", "multiclass", "multilabel", "regression")
INITS = ("he", "xavier", "glorot", "random", "zeros")
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")
SCHEDULES = ("constant", "inverse_time", "exponential", "inverse_sqrt", "staircase")
DTYPES = ("float32", "float64")
SERVING_PRECISIONS = ("exact", "half")

# Multiclass without n_outputs takes the DESIGN default of 10 classes; the single-output
# tasks take 1; multilabel has no sensible default and must say how many labels.
_DEFAULT_OUTPUTS = {"multiclass": 10, "binary": 1, "regression": 1}


@dataclass
class ModelSpec:
    """Every setting of a Model; see `engine.Model` for their meaning."""

    hidden: tuple = (256, 128)
    activation: object = "relu"
    task: str = "multiclass"
    n_outputs: int | None = None
    input_dim: int | None = None
    normalize_inputs: bool = True
    # Regression only: learn standardized targets (engine.targets).  Off by default so
    # that J stays DESIGN's squared error in target units; the daemon turns it on.
    normalize_targets: bool = False
    # Defaults chosen by measurement (benchmarks/learning_results.md): on streams seen
    # once, glorot without batch norm at Adam 5e-3 learns at least as well as
    # scikit-learn's MLP on every shipped data set; batch norm stays one flag away.
    init: str = "glorot"
    batch_norm: bool = False
    bn_beta: float = 0.9
    bn_eps: float = 1e-5
    keep_prob: object = 1.0
    l2: float = 0.0
    l1: float = 0.0
    clip_norm: float | None = None
    optimizer: str = "adam"
    lr: float = 5e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "constant"
    decay_rate: float = 0.0
    epoch_size: int = 10_000
    step_epochs: int = 1
    dtype: str = "float32"
    # "half": predictions of up to SMALL_BATCH rows read a half-precision copy of the
    # serving weights (kernels.gemv); batches read the same values in dtype.  Training is
    # exact either way (docs/performance.md bounds the change in predictions).
    serving_precision: str = "exact"
    seed: int = 0
    # Practice (docs/practice.md).  Transfer: layers (numbered from 1) whose parameters,
    # and batch-norm statistics, do not train; after unfreeze_after_rows training rows
    # (0: never) every layer trains.
    freeze_layers: tuple = ()
    unfreeze_after_rows: int = 0
    # Augmentation of training rows: the image shape of an input row ((H, W) or
    # (H, W, C), C order), for shifts of up to augment_shift pixels and left-right
    # flips; mixup's Beta(alpha, alpha) (0: off); Gaussian noise in normalized units.
    input_shape: tuple | None = None
    augment_shift: int = 0
    augment_flip: bool = False
    augment_mixup_alpha: float = 0.0
    augment_noise_std: float = 0.0
    # Adversarial training: each training row is replaced, with probability
    # adversarial_fraction, by its FGSM example at adversarial_epsilon (input units).
    adversarial_epsilon: float = 0.0
    adversarial_fraction: float = 0.5
    activations: tuple = field(init=False, default=())
    keep_probs: tuple = field(init=False, default=())

    def __post_init__(self):
        self.validate()

    # -- validation ---------------------------------------------------------------
    def validate(self):
        """Check every setting and resolve the per-layer lists; raise EngineError."""
        _one_of("task", self.task, TASKS)
        _one_of("init", self.init, INITS)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("serving_precision", self.serving_precision, SERVING_PRECISIONS)
        try:
            self.hidden = tuple(int(h) for h in self.hidden)
        except (TypeError, ValueError):
            raise EngineError(f"hidden must be a sequence of layer sizes, got {self.hidden!r}") from None
        for h in self.hidden:
            if h < 1:
                raise EngineError(f"hidden layer sizes must be >= 1, got {self.hidden}")
        if self.n_outputs is None:
            if self.task not in _DEFAULT_OUTPUTS:
                raise EngineError(f"task {self.task!r} needs n_outputs (the number of labels)")
            self.n_outputs = _DEFAULT_OUTPUTS[self.task]
        self.n_outputs = _positive_int("n_outputs", self.n_outputs)
        if self.task == "binary" and self.n_outputs != 1:
            raise EngineError(f"task 'binary' has 1 output, got n_outputs={self.n_outputs}; "
                              "use task 'multilabel' for several 0/1 outputs")
        if self.task == "multiclass" and self.n_outputs < 2:
            raise EngineError(f"task 'multiclass' needs n_outputs >= 2 classes, got {self.n_outputs}")
        if self.input_dim is not None:
            self.input_dim = _positive_int("input_dim", self.input_dim)
        self.activations = self._per_hidden("activation", self.activation, str)
        for a in self.activations:
            _one_of("activation", a, tuple(ACTIVATIONS))
        self.keep_probs = self._per_hidden("keep_prob", self.keep_prob, float)
        for k in self.keep_probs:
            if not 0.0 < k <= 1.0:
                raise EngineError(f"keep_prob must be in (0, 1], got {k}")
        _in_range("bn_beta", self.bn_beta, 0.0, 1.0, hi_open=True)
        _positive("bn_eps", self.bn_eps)
        _non_negative("l2", self.l2)
        _non_negative("l1", self.l1)
        if self.clip_norm is not None:
            _positive("clip_norm", self.clip_norm)
        _positive("lr", self.lr)
        _in_range("beta1", self.beta1, 0.0, 1.0, hi_open=True)
        _in_range("beta2", self.beta2, 0.0, 1.0, hi_open=True)
        _positive("eps", self.eps)
        _non_negative("decay_rate", self.decay_rate)
        if self.schedule in ("exponential", "staircase") and not 0.0 < self.decay_rate <= 1.0:
            raise EngineError(f"schedule {self.schedule!r} multiplies the rate by decay_rate each "
                              f"epoch: it needs 0 < decay_rate <= 1, got {self.decay_rate}")
        if self.schedule == "inverse_sqrt" and self.decay_rate <= 0.0:
            raise EngineError("schedule 'inverse_sqrt' uses decay_rate as its constant k "
                              f"(lr0 * k / sqrt(epoch + 1)): it needs decay_rate > 0, got {self.decay_rate}")
        self.epoch_size = _positive_int("epoch_size", self.epoch_size)
        self.step_epochs = _positive_int("step_epochs", self.step_epochs)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise EngineError(f"seed must be a non-negative int, got {self.seed!r}")
        self._validate_practice()
        self.normalize_inputs = bool(self.normalize_inputs)
        self.normalize_targets = bool(self.normalize_targets)
        self.batch_norm = bool(self.batch_norm)

    def _validate_practice(self):
        n_layers = len(self.hidden) + 1
        try:
            frozen = tuple(sorted({int(l) for l in self.freeze_layers}))
        except (TypeError, ValueError):
            raise EngineError(f"freeze_layers must be a list of layer numbers, got {self.freeze_layers!r}") from None
        if any(isinstance(l, bool) for l in self.freeze_layers) or any(not 1 <= l <= n_layers for l in frozen):
            raise EngineError(f"freeze_layers must name layers 1..{n_layers} (the output layer is "
                              f"{n_layers}), got {list(self.freeze_layers)}")
        self.freeze_layers = frozen
        if isinstance(self.unfreeze_after_rows, bool) or not isinstance(self.unfreeze_after_rows, int) \
                or self.unfreeze_after_rows < 0:
            raise EngineError(f"unfreeze_after_rows must be an int >= 0 (0: never), got {self.unfreeze_after_rows!r}")
        if self.input_shape is not None:
            try:
                shape = tuple(_positive_int("input_shape", v) for v in self.input_shape)
            except TypeError:
                raise EngineError(f"input_shape must be [height, width] or [height, width, channels], "
                                  f"got {self.input_shape!r}") from None
            if len(shape) not in (2, 3):
                raise EngineError(f"input_shape must be [height, width] or [height, width, channels], "
                                  f"got {list(shape)}")
            size = math.prod(shape)
            if self.input_dim is not None and size != self.input_dim:
                raise EngineError(f"input_shape {list(shape)} holds {size} values, but input_dim is {self.input_dim}")
            self.input_shape = shape
        if isinstance(self.augment_shift, bool) or not isinstance(self.augment_shift, int) or self.augment_shift < 0:
            raise EngineError(f"augment_shift must be an int >= 0 (pixels), got {self.augment_shift!r}")
        if not isinstance(self.augment_flip, bool):
            raise EngineError(f"augment_flip must be true or false, got {self.augment_flip!r}")
        if (self.augment_shift or self.augment_flip) and self.input_shape is None:
            raise EngineError("augment_shift and augment_flip move pixels: they need input_shape "
                              "([height, width] or [height, width, channels])")
        if self.input_shape is not None and self.augment_shift >= min(self.input_shape[:2]):
            raise EngineError(f"augment_shift {self.augment_shift} must be smaller than the image "
                              f"({self.input_shape[0]} x {self.input_shape[1]})")
        _non_negative("augment_mixup_alpha", self.augment_mixup_alpha)
        _non_negative("augment_noise_std", self.augment_noise_std)
        _non_negative("adversarial_epsilon", self.adversarial_epsilon)
        _in_range("adversarial_fraction", self.adversarial_fraction, 0.0, 1.0)

    @property
    def augments(self):
        """True when training rows are altered before the step (augmentation or FGSM)."""
        return bool(self.augment_shift or self.augment_flip or self.augment_mixup_alpha
                    or self.augment_noise_std or (self.adversarial_epsilon and self.adversarial_fraction))

    def _per_hidden(self, name, value, kind):
        n = len(self.hidden)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:
                return (kind(value),) * n
            except ValueError:
                raise EngineError(f"{name} must be a {kind.__name__}, got {value!r}") from None
        try:
            values = tuple(kind(v) for v in value)
        except (TypeError, ValueError):
            raise EngineError(f"{name} must be one {kind.__name__} or one per hidden layer, "
                              f"got {value!r}") from None
        if len(values) != n:
            raise EngineError(f"{name} gives {len(values)} values for {n} hidden layers")
        return values

    # -- conversions --------------------------------------------------------------
    def to_dict(self):
        """The constructor arguments as plain Python values (for state files)."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, values):
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(values) - names
        if unknown:
            raise EngineError(f"unknown model settings: {sorted(unknown)}")
        return cls(**values)

    @property
    def layer_sizes(self):
        """(n0, n1, ..., nL) once input_dim is known."""
        return (self.input_dim, *self.hidden, self.n_outputs)


def _one_of(name, value, allowed):
    if value not in allowed:
        raise EngineError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngineError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive(name, value):
    if _number(name, value) <= 0:
        raise EngineError(f"{name} must be > 0, got {value!r}")


def _non_negative(name, value):
    if _number(name, value) < 0:
        raise EngineError(f"{name} must be >= 0, got {value!r}")


def _in_range(name, value, lo, hi, hi_open=False):
    v = _number(name, value)
    if v < lo or v > hi or (hi_open and v == hi):
        raise EngineError(f"{name} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value!r}")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
            hasattr(value, "__index__")):
        raise EngineError(f"{name} must be a positive int, got {value!r}")
    value = int(value)
    if value < 1:
        raise EngineError(f"{name} must be a positive int, got {value}")
    return value
