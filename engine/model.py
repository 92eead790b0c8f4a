"""The embedded API: `Model` trains and predicts in-process."""
from __future__ import annotations

import math

import numpy as np

from . import state as state_io
from .collective import GroupStep
from .errors import EngineError
from .gradcheck import check_gradients
from .kernels.serving import fold_weights, served_forward, serving_layout
from .kernels.normalize import count_nonfinite
from .kernels.optim import global_norm
from .kernels.rng import seed_state
from .labels import labels_from_outputs, write_targets, write_weights
from .metrics import evaluate_outputs
from .network import Network, Snapshot
from .normalizer import InputNormalizer
from .kernels.adversarial import fgsm
from .kernels.optim import zero_ranges
from .optimizers import OPTIMIZERS
from .practice import Practice
from .schedules import SCHEDULES
from .spec import ModelSpec
from .targets import TargetScaler

# Settings that can change between steps without rebuilding buffers or losing state.
LIVE_SETTINGS = ("lr", "l2", "l1", "clip_norm", "bn_beta", "beta1", "beta2", "eps",
                 "schedule", "decay_rate", "epoch_size", "step_epochs",
                 "freeze_layers", "unfreeze_after_rows", "augment_shift", "augment_flip",
                 "augment_mixup_alpha", "augment_noise_std", "adversarial_epsilon",
                 "adversarial_fraction")

# What from_pretrained keeps of the source: the trunk's shape and numerics.
_TRUNK_SETTINGS = ("hidden", "activation", "input_dim", "batch_norm", "bn_eps", "dtype",
                   "normalize_inputs")


class Model:
    """A fully connected network trained online, one optimizer step per batch.

    Parameters are DESIGN's: ``hidden`` sizes, ``activation`` (one or one per hidden
    layer: relu, leaky_relu, tanh, sigmoid, linear), ``task`` (binary, multiclass,
    multilabel, regression) and ``n_outputs`` (None: 10 classes for multiclass, 1 for
    binary and regression), ``input_dim`` (None: from the first batch),
    ``normalize_inputs``, ``normalize_targets`` (regression: learn standardized targets,
    outputs mapped back; J is then in standardized units), ``init`` (he, xavier,
    glorot, random, zeros),
    ``batch_norm``/``bn_beta``/``bn_eps``, ``keep_prob`` (inverted dropout, one or one
    per hidden layer), ``l2``, ``l1``, ``clip_norm``, ``optimizer`` (sgd, momentum,
    rmsprop, adam) with ``lr``, ``beta1``, ``beta2``, ``eps``, ``schedule`` (constant,
    inverse_time, exponential, inverse_sqrt, staircase) with ``decay_rate``,
    ``epoch_size`` (samples per epoch) and ``step_epochs`` (staircase step),
    ``dtype`` (float32, float64) and ``seed``.

    Practice (docs/practice.md): ``freeze_layers`` (layer numbers from 1 that do not
    train) and ``unfreeze_after_rows`` (0: never), see `from_pretrained`;
    augmentation of training rows only: ``input_shape`` ((H, W) or (H, W, C) of a
    row) with ``augment_shift`` (pixels) and ``augment_flip``, ``augment_mixup_alpha``
    and ``augment_noise_std`` (normalized units); adversarial training:
    ``adversarial_epsilon`` (input units) and ``adversarial_fraction`` (share of rows
    replaced by their FGSM examples in each step).

    Serving: ``serving_precision`` "exact" (default) or "half": predictions of up to four
    rows read a half-precision copy of the serving weights, and larger batches the same
    rounded values in dtype (docs/performance.md measures the speed and bounds the change
    in outputs).  Training is exact either way.

    Samples are rows: X has shape (m, n_features).
    """

    def __init__(self, hidden=(256, 128), activation="relu", task="multiclass", n_outputs=None,
                 input_dim=None, normalize_inputs=True, normalize_targets=False, init="glorot", batch_norm=False, bn_beta=0.9,
                 bn_eps=1e-5, keep_prob=1.0, l2=0.0, l1=0.0, clip_norm=None, optimizer="adam",
                 lr=5e-3, beta1=0.9, beta2=0.999, eps=1e-8, schedule="constant", decay_rate=0.0,
                 epoch_size=10_000, step_epochs=1, dtype="float32", seed=0, freeze_layers=(),
                 unfreeze_after_rows=0, input_shape=None, augment_shift=0, augment_flip=False,
                 augment_mixup_alpha=0.0, augment_noise_std=0.0, adversarial_epsilon=0.0,
                 adversarial_fraction=0.5, serving_precision="exact"):
        self.spec = ModelSpec(
            hidden=hidden, activation=activation, task=task, n_outputs=n_outputs,
            input_dim=input_dim, normalize_inputs=normalize_inputs,
            normalize_targets=normalize_targets, init=init,
            batch_norm=batch_norm, bn_beta=bn_beta, bn_eps=bn_eps, keep_prob=keep_prob, l2=l2,
            l1=l1, clip_norm=clip_norm, optimizer=optimizer, lr=lr, beta1=beta1, beta2=beta2,
            eps=eps, schedule=schedule, decay_rate=decay_rate, epoch_size=epoch_size,
            step_epochs=step_epochs, dtype=dtype, seed=seed, freeze_layers=freeze_layers,
            unfreeze_after_rows=unfreeze_after_rows, input_shape=input_shape,
            augment_shift=augment_shift, augment_flip=augment_flip,
            augment_mixup_alpha=augment_mixup_alpha, augment_noise_std=augment_noise_std,
            adversarial_epsilon=adversarial_epsilon, adversarial_fraction=adversarial_fraction,
            serving_precision=serving_precision)
        self.dtype = np.dtype(self.spec.dtype)
        self.rng_state = seed_state(self.spec.seed)
        self._rng_backup = self.rng_state.copy()
        self.samples_seen = 0
        self.nonfinite_steps = 0
        self.network = None
        self.normalizer = None
        self.targets = None
        self.collective = None      # engine.collective: set by join() for data-parallel steps
        self._group = None
        self.optimizer = OPTIMIZERS[self.spec.optimizer](self.spec.beta1, self.spec.beta2, self.spec.eps)
        self.schedule = SCHEDULES[self.spec.schedule](self.spec.lr, self.spec.decay_rate,
                                                       self.spec.step_epochs)
        self._targets = np.empty(0, dtype=self.dtype)
        self._weights = np.empty(0, dtype=self.dtype)
        self.practice = Practice(self.dtype)
        self._clean_outputs = np.empty(0, dtype=self.dtype)
        self._practiced = False
        # Predictions come from serving weights (kernels.serving: batch norm and the
        # normalizer's scale folded into W and b), folded again on the first prediction after
        # anything moves the parameters, the running statistics or the normalizer: an
        # optimizer step (_param_generation), the normalizer's or the head's target
        # rescale (their own generation counters).
        self._param_generation = 0
        self._fold_key = None
        if self.spec.input_dim is not None:
            self._build(self.spec.input_dim)

    def _build(self, input_dim):
        shape = self.spec.input_shape
        if shape is not None and math.prod(shape) != input_dim:
            raise EngineError(f"input_shape {list(shape)} holds {math.prod(shape)} values, "
                              f"but rows have {input_dim} features")
        self.spec.input_dim = input_dim
        init_rng = np.random.default_rng(self.spec.seed)
        self.network = Network(self.spec, init_rng)
        self.normalizer = InputNormalizer(input_dim, self.dtype, self.spec.normalize_inputs)
        head = len(self.spec.hidden) + 1
        self.targets = TargetScaler(
            self.spec.n_outputs, self.dtype, self.network.params[f"W{head}"], self.network.params[f"b{head}"],
            enabled=self.spec.normalize_targets and self.spec.task == "regression")
        if self.collective is not None:
            self._group = GroupStep(self.collective, self.network)
        self._serving_table, n_folded = serving_layout(self.network.layout.infer_table)
        self._folded = np.empty(n_folded, dtype=self.dtype)
        self._fold_key = None

    # -- data parallel -------------------------------------------------------------------
    def join(self, collective):
        """Train as one rank of a data-parallel group (engine.collective): from now on
        every step sums the group's gradients, batch moments and rows, so every rank that
        starts from the same state keeps the same model.  Every rank must step together:
        `learn_checked` with its rows, or `step_without_rows` when it has none.

        A model that has not stepped yet takes a dropout stream of its own rank (rank 0
        keeps the model's), so the ranks do not drop the same units of their i-th rows;
        a resumed model keeps the stream its state holds.
        """
        self.collective = collective
        if collective.rank and self.optimizer.t == 0 and self.nonfinite_steps == 0:
            self.rng_state[:] = seed_state((self.spec.seed, collective.rank))
        if self.network is not None:
            self._group = GroupStep(collective, self.network)

    def step_without_rows(self):
        """This rank's part of a group step in which it has no rows: it contributes
        weight 0 and applies the group's update.  Returns the group's rows."""
        if self.collective is None:
            raise EngineError("a step without rows is a data-parallel group's; join() one first")
        if self.network is None:
            raise EngineError("the model's input size is unknown; give input_dim to every rank")
        n, K = self.spec.input_dim, self.spec.n_outputs
        rows = self.samples_seen
        self.learn_checked(np.empty((0, n), dtype=self.dtype), np.empty((0, K), dtype=self.dtype),
                           np.empty(0, dtype=np.float64))
        return self.samples_seen - rows

    # -- properties ------------------------------------------------------------------
    @property
    def params(self):
        """The live arrays by DESIGN's names: W1, b1 / gamma1, beta1, running_mean1, ..."""
        if self.network is None:
            return {}
        return {**self.network.params, **self.network.stats}

    @property
    def steps(self):
        """Optimizer steps applied (non-finite steps are not counted here)."""
        return self.optimizer.t

    @property
    def epoch(self):
        return self.samples_seen // self.spec.epoch_size

    @property
    def learning_rate(self):
        """The rate the next step will use."""
        return float(self.schedule.get(self.epoch))

    def set_learning_rate(self, lr):
        """Set α0 by hand; the schedule goes on from the new base."""
        self.set(lr=lr)

    def reset_optimizer(self):
        """Start the optimizer afresh (moments and step count), keeping the weights."""
        self.optimizer.reset()

    def set(self, **settings):
        """Change settings that are safe between steps (LIVE_SETTINGS); others raise."""
        unknown = set(settings) - set(LIVE_SETTINGS)
        if unknown:
            raise EngineError(f"cannot change {sorted(unknown)} on a live model; "
                              f"live settings are {', '.join(LIVE_SETTINGS)}")
        candidate = ModelSpec.from_dict({**self.spec.to_dict(), **settings})
        if candidate.input_dim is not None and candidate.input_shape is not None \
                and math.prod(candidate.input_shape) != candidate.input_dim:
            raise EngineError(f"input_shape {list(candidate.input_shape)} does not hold "
                              f"{candidate.input_dim} features")
        newly_frozen = set(candidate.freeze_layers) - set(self.spec.freeze_layers)
        self.spec = candidate
        if self.network is not None:
            self.network.spec = candidate
            self.network.set_frozen(candidate.freeze_layers)
            if newly_frozen:
                # Moments left from training would keep moving a layer whose gradient
                # is now zero; cleared, every optimizer's update of it is exactly 0.
                for moment in self.optimizer.state.values():
                    zero_ranges(moment, self.network.frozen_ranges)
        self.optimizer.beta1, self.optimizer.beta2, self.optimizer.eps = (
            candidate.beta1, candidate.beta2, candidate.eps)
        self.schedule = SCHEDULES[candidate.schedule](candidate.lr, candidate.decay_rate,
                                                      candidate.step_epochs)

    # -- input checks --------------------------------------------------------------------
    def _check_X(self, X, training, check_finite=True):
        try:
            X = np.asarray(X)
        except Exception as exc:  # ragged lists and the like
            raise EngineError(f"X must be a 2-D array of numbers: {exc}") from None
        if X.ndim != 2:
            raise EngineError(f"X must be 2-D (m, n_features), got shape {X.shape}")
        if X.dtype.kind not in "biuf":
            raise EngineError(f"X must hold numbers, got dtype {X.dtype}")
        if X.dtype not in (np.float32, np.float64):
            # ints, bools, float16, big-endian floats: the kernels take native float32/64.
            X = X.astype(self.dtype)
        m, n = X.shape
        if m == 0:
            raise EngineError("X is an empty batch (0 rows)")
        expected = self.spec.input_dim
        if expected is not None and n != expected:
            raise EngineError(f"X must have {expected} features per row, got {n}")
        if expected is None and not training:
            raise EngineError("the model has not seen data yet, so its input size is unknown; "
                              "train it first or give input_dim")
        if training and self.spec.batch_norm and self.spec.hidden and m < 2:
            raise EngineError(f"with batch norm a training batch needs at least 2 rows, got {m}")
        X = np.ascontiguousarray(X)
        if check_finite and count_nonfinite(X):
            raise EngineError(f"X must be finite; got {count_nonfinite(X)} NaN or Inf values")
        return X

    def _target_buffer(self, m):
        K = self.spec.n_outputs
        if self._targets.size < m * K:
            self._targets = np.empty(max(m, 2 * self._targets.size // K) * K, dtype=self.dtype)
            self._weights = np.empty(self._targets.size // K, dtype=self.dtype)
        return self._targets[:m * K].reshape(m, K)

    def _batch(self, X, y, sample_weight, training):
        X = self._check_X(X, training)
        m = X.shape[0]
        Y = self._target_buffer(m)
        write_targets(self.spec.task, self.spec.n_outputs, y, m, Y)
        w = write_weights(sample_weight, m, self._weights)
        if self.network is None:
            self._build(X.shape[1])
        return X, Y, w

    # -- training ----------------------------------------------------------------------------
    def partial_fit(self, X, y, sample_weight=None):
        """One optimizer step on the batch (X, y).

        X: (m, n_features)  y: labels per DESIGN's conventions  sample_weight: (m,) or None.
        Returns J on this batch at the parameters before the update, in training mode.
        A step whose loss or gradient is not finite changes nothing and is counted in
        `nonfinite_steps`.
        """
        X, Y, w = self._batch(X, y, sample_weight, training=True)
        return self.learn_checked(X, Y, w)

    def learn_checked(self, X, Y, w):
        """`partial_fit` on a batch already checked and encoded (a population checks a
        batch once for all its members): X (m, n_features) and Y (m, n_outputs)
        C-contiguous in the model's dtype, w (m,) float64 weights with mean 1."""
        if self.network is None:
            self._build(X.shape[1])
        # A frozen first layer learned its weights on the normalizer's scaling as it
        # stands; moving the scaling would change what the frozen trunk computes.
        scaling_frozen = 1 in self.spec.freeze_layers
        if scaling_frozen:
            shift, inv_scale = self.normalizer.shift, self.normalizer.inv_scale
        else:
            shift, inv_scale = self.normalizer.stage(X, self.collective)
        # The head is rescaled to the new target statistics only once it has learned
        # something worth keeping: a fresh network's outputs are noise.
        Y = self.targets.stage(Y, preserve=self.samples_seen > 0, collective=self.collective)
        loss, ok, rows = self._step(X, Y, w, shift, inv_scale)
        if ok:
            if not scaling_frozen:
                self.normalizer.commit()
            self.targets.commit()
            self.samples_seen += rows
            after = self.spec.unfreeze_after_rows
            if self.spec.freeze_layers and after and self.samples_seen >= after:
                self.set(freeze_layers=())
        else:
            self.targets.rollback()
        return loss

    def rehearse(self, X, y, sample_weight=None):
        """One optimizer step on rows the model has already learned from (replay).

        The same step as partial_fit, except that the inputs are scaled with the
        normalizer's statistics as they are (those rows are already in them) and
        `samples_seen`, which drives the learning-rate schedule, does not grow: only
        new rows advance an epoch.  Shapes as in partial_fit; returns J before the step.
        """
        if self.network is None:
            raise EngineError("the model has not learned from any row yet; there is nothing to rehearse")
        X, Y, w = self._batch(X, y, sample_weight, training=True)
        return self.rehearse_checked(X, Y, w)

    def rehearse_checked(self, X, Y, w):
        """`rehearse` on rows already checked and encoded when they were first learned:
        X (m, n_features) and Y (m, n_outputs) C-contiguous in the model's dtype, w (m,)
        float64 weights with mean 1.  No check runs again (engine.Replay's steps)."""
        Y = self.targets.standardize(Y)
        loss, _, _ = self._step(X, Y, w, self.normalizer.shift, self.normalizer.inv_scale)
        return loss

    def _step(self, X, Y, w, shift, inv_scale):
        """Forward, backward and update on a checked batch; (J, whether the step was
        taken, rows it learned from: this batch's, or in a group every rank's).
        In a group, X may have 0 rows (J is then NaN: there is nothing to average)."""
        net = self.network
        m = X.shape[0]
        self._rng_backup[:] = self.rng_state
        self._practiced = bool(m) and self.spec.augments
        if self._practiced:
            # Progressive validation scores the rows as they came (last_batch_outputs),
            # not their altered copies, so the clean rows' outputs are kept first.
            self._predict_into(X, self._clean_output_buffer(m))
            X, Y = self.practice.prepare(self.spec, net, X, Y, w, shift, inv_scale, self.rng_state)
        if m:
            loss = net.loss_and_grad(X, Y, w, shift, inv_scale, self.rng_state)
            square_sum = net.grad_square_sum    # summed by the kernel as it finished the gradient
            if net.frozen_ranges.size:
                zero_ranges(net.flat_grads, net.frozen_ranges)
                square_sum = None
        else:
            loss = math.nan
            net.flat_grads[...] = 0.0
            square_sum = 0.0
        self._last_batch_rows = m
        # Batch statistics can overflow (float32 variance of a large but finite input)
        # while J and the gradient stay finite; folding them in would poison the running
        # statistics for good, so such a step counts as non-finite too.
        ok = m == 0 or (math.isfinite(loss)
                        and (net.feat.size == 0 or count_nonfinite(net.feat.reshape(1, -1)) == 0))
        rows = m
        if self._group is not None:
            # Between backward and update: every rank leaves with the group's gradient
            # and batch statistics, or, if any rank's step is not finite, a NaN gradient.
            rows = self._group.reduce(m, ok)
            ok = True
            square_sum = None
        # The kernel's sum holds only while the gradient is the one it computed.
        norm = global_norm(net.flat_grads) if square_sum is None else math.sqrt(square_sum)
        if not (ok and math.isfinite(norm)):
            self.rng_state[:] = self._rng_backup
            self.nonfinite_steps += 1
            return float(loss), False, 0
        clip = self.spec.clip_norm
        g_scale = clip / norm if clip is not None and norm > clip else 1.0
        self.optimizer.step(net.flat_params, net.flat_grads, self.learning_rate, g_scale)
        if net.flat_stats.size:   # only batch-norm layers keep running statistics
            net.update_running_stats(rows)
        self._param_generation += 1
        return float(loss), True, rows

    def last_batch_outputs(self):
        """Head outputs (m, n_outputs) for the batch of the last partial_fit, from that
        step's own forward pass: at the parameters before its update, in training mode
        (dropout as applied, batch-norm batch statistics).  With neither dropout nor
        batch norm they equal predict_proba before the step.  In target units (engine.targets).
        A buffer valid until the next call that trains or checks gradients."""
        if self.network is None or not getattr(self, "_last_batch_rows", 0):
            raise EngineError("no training step yet")
        if self._practiced:
            # With augmentation or adversarial training the step learned from altered
            # rows; these are the inference-mode outputs of the rows as given, before it.
            return self._clean_output_buffer(self._last_batch_rows)
        return self.targets.in_target_units(self.network.head_outputs(self._last_batch_rows))

    # -- inference ---------------------------------------------------------------------------
    def predict_proba(self, X, out=None):
        """Head outputs for X (m, n_features) -> (m, n_outputs): softmax rows for
        multiclass, sigmoid P(y=1) per output for binary/multilabel, values for
        regression.  `out`, if given, receives them and is returned."""
        # The common case, a C-contiguous batch in the model's dtype, passes in a few
        # attribute reads (a one-row predict is a few microseconds in all); the serving
        # kernel counts NaN and Inf itself, in the pass that shifts the inputs.
        if not (type(X) is np.ndarray and X.dtype is self.dtype and X.ndim == 2 and X.shape[0] > 0
                and X.shape[1] == self.spec.input_dim and X.flags.c_contiguous):
            X = self._check_X(X, training=False, check_finite=False)
        m, K = X.shape[0], self.spec.n_outputs
        if out is None:
            out = np.empty((m, K), dtype=self.dtype)
        elif out.shape != (m, K) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise EngineError(f"out must be a C-contiguous {self.dtype} array of shape {(m, K)}")
        return self._predict_into(X, out)

    def _predict_into(self, X, out):
        if self._fold_key != self._current_fold_key():
            self.refold()
        work = self.network.infer_work
        if X.shape[0] > work.cap:
            work.ensure(X.shape[0])
        nonfinite = served_forward(X, *self._serving_args, work.buf, work.cap, out)
        if nonfinite:
            raise EngineError(f"X must be finite; got {nonfinite} NaN or Inf values")
        return out

    def refold(self):
        """Fold the parameters, running statistics and normalizer's scale into the
        serving weights now.  Training marks them stale itself; call this after writing into
        `network.params`, `network.stats` or the normalizer directly."""
        net = self.network
        half = fold_weights(net.flat_params, net.flat_stats, net.layout.infer_table, self.normalizer.inv_scale,
                            self.spec.bn_eps, self._folded, self._serving_table, self.spec.serving_precision)
        # served_forward's arguments up to the workspace, gathered once per fold: the
        # normalizer's and the target scaler's arrays are swapped, not written, when they
        # move, and either move bumps the fold key.
        self._serving_args = (self.normalizer.shift, self._folded, half, self._serving_table,
                              net.layout.head, self.targets.out_scale, self.targets.out_shift)
        self._fold_key = self._current_fold_key()

    @property
    def serving_half(self):
        """True when predictions come from half-precision weights: serving_precision is
        "half" and every folded weight lies within half's range (else they are exact)."""
        if self.network is None:
            return False
        if self._fold_key != self._current_fold_key():
            self.refold()
        return self._serving_args[2].shape[0] > 0     # served_forward's `half`

    def _current_fold_key(self):
        return self._param_generation, self.normalizer.generation, self.targets.generation

    def _clean_output_buffer(self, m):
        K = self.spec.n_outputs
        if self._clean_outputs.size < m * K:
            self._clean_outputs = np.empty(max(m * K, 2 * self._clean_outputs.size), dtype=self.dtype)
        return self._clean_outputs[:m * K].reshape(m, K)

    def predict(self, X):
        """Class ids (m,) for multiclass, 0/1 labels (m, n_outputs) for binary and
        multilabel, values (m, n_outputs) for regression."""
        return labels_from_outputs(self.spec.task, self.predict_proba(X))

    def evaluate(self, X, y, sample_weight=None):
        """Inference-mode figures on (X, y): loss (without regularization) and accuracy /
        error, or mse / mae for regression."""
        X, Y, w = self._batch(X, y, sample_weight, training=False)
        w = None if sample_weight is None else w.copy()
        P = self.predict_proba(X)
        return evaluate_outputs(self.spec.task, P, Y.copy(), w)

    def snapshot(self, version=0, meta=None):
        """An immutable, self-contained copy of what inference needs (see Snapshot)."""
        if self.network is None:
            raise EngineError("the model has not seen data yet; there is nothing to snapshot")
        return Snapshot(self.network, self.normalizer.shift, self.normalizer.inv_scale, version, meta,
                        self.targets.out_scale, self.targets.out_shift)

    # -- adversarial examples -----------------------------------------------------------------
    def input_gradient(self, X, y, sample_weight=None):
        """dJ/dX (m, n_features) in input units: the gradient of the inference-mode cost
        (running statistics, no dropout, no weight penalty) with respect to the raw
        inputs, through the input normalizer.  Row i's gradient is (w_i / m) dL_i/dx_i."""
        X, Y, w = self._batch(X, y, sample_weight, training=False)
        Y = self.targets.standardize(Y)
        dX = np.empty(X.shape, dtype=self.dtype)
        self.network.input_loss_and_grad(X, Y, w, self.normalizer.shift, self.normalizer.inv_scale, dX)
        return dX

    def adversarial(self, X, y, epsilon, sample_weight=None):
        """FGSM examples X + epsilon * sign(dJ/dX) (m, n_features), epsilon in input units:
        each feature moved by epsilon in the direction that raises the loss of the labels
        y most to first order.  A new array in X's float dtype; the model is unchanged."""
        epsilon = float(epsilon)
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise EngineError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        X = self._check_X(X, training=False)
        dX = self.input_gradient(X, y, sample_weight)
        out = np.empty_like(X)
        fgsm(X, dX, epsilon, out)
        return out

    def input_gradient_check(self, X, y, sample_weight=None, eps=1e-7, max_entries=None):
        """Compare dJ/dX with two-sided differences of the inference-mode J in float64,
        as gradient_check does for the parameters.  Returns a GradCheckReport with one
        entry, "x"."""
        X, Y, w = self._batch(X, y, sample_weight, training=False)
        net = self.network.copy_as(np.float64)
        X64 = np.array(X, dtype=np.float64)
        Y64 = self.targets.standardize(Y).astype(np.float64)
        w64 = w.astype(np.float64)
        shift = self.normalizer.shift.astype(np.float64)
        inv_scale = self.normalizer.inv_scale.astype(np.float64)
        dX = np.empty_like(X64)
        net.input_loss_and_grad(X64, Y64, w64, shift, inv_scale, dX)
        flat = X64.reshape(-1)

        def loss():
            return net.input_loss_and_grad(X64, Y64, w64, shift, inv_scale, dX, grad=False)

        grad = dX.reshape(-1).copy()
        return check_gradients(loss, flat, grad, {"x": (0, X64.shape)}, eps=eps,
                               max_entries=max_entries, seed=self.spec.seed)

    # -- transfer ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_or_path, task=None, n_outputs=None, reinit_layers=1,
                        freeze_layers=(), **settings):
        """A new Model for another task on a trained one's trunk (transfer learning).

        Keeps the source's layers 1..L-reinit_layers (weights, biases, gamma, beta and
        batch-norm running statistics) and its input normalizer; the last reinit_layers
        layers start afresh (the head for the new task, by this model's `init` and
        `seed`).  freeze_layers (numbers from 1) do not train: their parameters stay
        bit-identical, and with layer 1 frozen so does the input scaling;
        `unfreeze_after_rows` (a setting) fine-tunes everything after that many rows.
        Counters, optimizer moments and target statistics start from zero.

        model_or_path: a Model, or the path of a model file (Model.save).
        task, n_outputs: the new task (default: the source's).  settings: any other
        Model setting but the trunk's shape and numerics (hidden, activation,
        input_dim, batch_norm, bn_eps, dtype, normalize_inputs).
        """
        source = model_or_path if isinstance(model_or_path, Model) else cls.load(model_or_path)
        if source.network is None:
            raise EngineError("the source model has not learned anything yet: nothing to transfer")
        trunk = sorted(set(settings) & set(_TRUNK_SETTINGS))
        if trunk:
            raise EngineError(f"from_pretrained keeps the source's {', '.join(trunk)}; "
                              "build a new Model to change them")
        n_layers = len(source.spec.hidden) + 1
        if isinstance(reinit_layers, bool) or not isinstance(reinit_layers, int) \
                or not 0 <= reinit_layers <= n_layers:
            raise EngineError(f"reinit_layers must be an int in 0..{n_layers}, got {reinit_layers!r}")
        values = source.spec.to_dict()
        if task is not None:
            values["task"] = task
            values["n_outputs"] = n_outputs
        elif n_outputs is not None:
            values["n_outputs"] = n_outputs
        values.update(settings, freeze_layers=list(freeze_layers))
        model = cls(**values)
        spec = model.spec
        if reinit_layers == 0 and (spec.task, spec.n_outputs) != (source.spec.task, source.spec.n_outputs):
            raise EngineError(f"a new task ({spec.task}, {spec.n_outputs} outputs) needs a new head: "
                              "reinit_layers must be >= 1")
        kept = n_layers - reinit_layers
        fresh = sorted(l for l in spec.freeze_layers if l > kept)
        if fresh:
            raise EngineError(f"freeze_layers {fresh} are reinitialized (the last {reinit_layers}): "
                              "frozen, they would stay random")
        net, src = model.network, source.network
        for l in range(1, kept + 1):
            for name in ("W", "b", "gamma", "beta"):
                if f"{name}{l}" in net.params:
                    net.params[f"{name}{l}"][...] = src.params[f"{name}{l}"]
            for name in ("running_mean", "running_var"):
                if f"{name}{l}" in net.stats:
                    net.stats[f"{name}{l}"][...] = src.stats[f"{name}{l}"]
        model.normalizer.set_state(source.normalizer.get_state())
        return model

    # -- checking ------------------------------------------------------------------------
    def gradient_check(self, X, y, sample_weight=None, eps=1e-7, max_entries=None):
        """Compare the backward pass with two-sided differences of J, in float64, dropout
        off, regularization on, batch statistics as in training.  Changes nothing.

        max_entries: perturb at most this many random entries per parameter array.
        Returns a GradCheckReport (overall and per-parameter relative difference).
        """
        X, Y, w = self._batch(X, y, sample_weight, training=True)
        net = self.network.copy_as(np.float64)
        X64 = X.astype(np.float64)
        Y64 = self.targets.standardize(Y).astype(np.float64)    # the targets the model learns
        w64 = w.astype(np.float64)
        shift = self.normalizer.shift.astype(np.float64)
        inv_scale = self.normalizer.inv_scale.astype(np.float64)
        rng = self.rng_state.copy()

        net.loss_and_grad(X64, Y64, w64, shift, inv_scale, rng, dropout=False)
        grad = net.flat_grads.copy()

        def loss():
            return net.loss_and_grad(X64, Y64, w64, shift, inv_scale, rng, dropout=False, grad=False)

        # Frozen layers' entries of the gradient are never used; the check covers the rest.
        return check_gradients(loss, net.flat_params, grad, net.trainable_slices(),
                               eps=eps, max_entries=max_entries, seed=self.spec.seed)

    # -- state ---------------------------------------------------------------------------
    def get_state(self):
        """Everything needed to resume exactly: settings, parameters, running statistics,
        optimizer moments and step count, normalizer, counters and RNG state (copies)."""
        net = self.network
        opt = self.optimizer.get_state()
        meta = {
            "format": state_io.FORMAT, "version": state_io.VERSION, "spec": self.spec.to_dict(),
            "counters": {"samples_seen": self.samples_seen, "nonfinite_steps": self.nonfinite_steps},
            "optimizer_t": opt["t"],
            "normalizer_count": self.normalizer.count if net is not None else 0.0,
            "target_count": self.targets.stats.count if net is not None else 0.0,
        }
        state = {"meta": meta, "param": {}, "stat": {}, "opt": opt["moments"], "norm": {}, "target": {},
                 "rng": self.rng_state.copy()}
        if net is not None:
            state["param"] = {k: v.copy() for k, v in net.params.items()}
            state["stat"] = {k: v.copy() for k, v in net.stats.items()}
            norm = self.normalizer.get_state()
            state["norm"] = {"mean": norm["mean"], "m2": norm["m2"]}
            target = self.targets.get_state()
            state["target"] = {"mean": target["mean"], "m2": target["m2"]}
        return state

    @classmethod
    def from_state(cls, state):
        """A Model that continues exactly where the one that gave `state` stood.

        Raises EngineError if the state is incomplete or its arrays do not fit.
        """
        try:
            return cls._from_state(state)
        except EngineError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # a damaged or foreign state: missing keys, wrong shapes, unconvertible values
            raise EngineError(f"not a usable learnd model state: {type(exc).__name__}: {exc}") from None

    @classmethod
    def _from_state(cls, state):
        meta = state["meta"]
        if meta.get("format") != state_io.FORMAT or meta.get("version") != state_io.VERSION:
            raise EngineError(f"not a learnd model state of version {state_io.VERSION}")
        model = cls(**ModelSpec.from_dict(meta["spec"]).to_dict())
        model.samples_seen = int(meta["counters"]["samples_seen"])
        model.nonfinite_steps = int(meta["counters"]["nonfinite_steps"])
        model.rng_state[:] = state["rng"]
        net = model.network
        if net is not None:
            for group, views in (("param", net.params), ("stat", net.stats)):
                if set(state[group]) != set(views):
                    raise EngineError(f"state {group} arrays {sorted(state[group])} do not match "
                                      f"the model's {sorted(views)}")
                for name, view in views.items():
                    if state[group][name].shape != view.shape:
                        raise EngineError(f"state array {name} has shape {state[group][name].shape}, "
                                          f"the model needs {view.shape}")
                    view[...] = state[group][name]
            model.normalizer.set_state({"count": meta["normalizer_count"], **state["norm"]})
            if state.get("target"):   # states written before targets could be standardized have none
                model.targets.set_state({"count": meta["target_count"], **state["target"]})
            expected = set(model.optimizer.moments) if int(meta["optimizer_t"]) > 0 else set()
            if set(state["opt"]) != expected:
                raise EngineError(f"state optimizer moments {sorted(state['opt'])} do not match "
                                  f"{model.spec.optimizer}'s {sorted(expected)}")
            model.optimizer.set_state({"t": meta["optimizer_t"], "moments": state["opt"]},
                                      net.flat_params)
        return model

    def save(self, path):
        """Write the state to `path` atomically (a versioned .npz; see learnd.engine.state)."""
        state_io.write_atomic(path, state_io.state_to_bytes(self.get_state()))

    @classmethod
    def load(cls, path):
        with open(path, "rb") as f:
            return cls.from_state(state_io.state_from_bytes(f.read()))

    def __repr__(self):
        s = self.spec
        sizes = "-".join(str(n) for n in (s.input_dim or "?", *s.hidden, s.n_outputs))
        return f"Model({sizes} {s.task}, {s.optimizer}, samples_seen={self.samples_seen})"
