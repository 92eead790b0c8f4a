"""The trainer thread: owns the model, re-batches accepted rows into steps, publishes
immutable snapshots for serving, evaluates held-out rows and writes checkpoints.

Everything that touches the model runs on this thread: other threads hand it train
items through `queue` and commands (set, checkpoint, gradcheck) through `commands`,
and read only the published `snapshot` and plain counters.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np
from threadpoolctl import threadpool_limits

from engine import EngineError, Model
from engine.model import LIVE_SETTINGS
from engine.state import state_from_bytes, state_to_bytes

from .checkpoints import decode, pack_array, unpack_array
from .dedupe import Dedupe
from .evaluation import RecentWindow, Reservoir
from .rebatch import Rebatcher

log = logging.getLogger("learnd.trainer")

LOSS_EWMA_BETA = 0.98
NORM_INTERVAL_S = 1.0
GRADCHECK_ROWS = 32
GRADCHECK_ENTRIES = 20       # entries checked per parameter array: bounded time on big layers
# Daemon settings the control socket may change while running.
LIVE_DAEMON_SETTINGS = ("batch_size", "batch_linger_ms", "publish_interval_ms",
                        "checkpoint_interval_s", "eval_interval_s")


@dataclass
class TrainItem:
    """One accepted train message: rows ready for the model."""

    lsn: int            # write-ahead-log number (0 without a log)
    producer: str
    seq: int
    split: str          # "train", "dev" or "test" ("auto" is resolved before)
    x: np.ndarray       # (m, input_dim), model dtype
    Y: np.ndarray       # (m, n_outputs) float targets
    w: np.ndarray | None


class Trainer(threading.Thread):
    def __init__(self, config, schema, metrics, checkpoints, wal=None):
        super().__init__(name="learnd-trainer", daemon=True)
        self.config = config
        self.schema = schema
        self.metrics = metrics
        self.checkpoints = checkpoints
        self.wal = wal
        self.queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self.commands: queue.Queue = queue.Queue()
        self.model: Model | None = None
        self.snapshot = None              # the published engine.Snapshot, replaced whole
        self.ready = threading.Event()    # kernels compiled (and model present)
        self.stop_requested = threading.Event()
        self.stopped = threading.Event()
        self.failure: BaseException | None = None
        # Counters (ints and floats: read from other threads without locks).
        self.samples_trained = 0
        self.batches_trained = 0
        self.nonfinite_steps = 0
        self.loss_ewma = 0.0
        self.loss_steps = 0
        self.last_lsn = 0                 # newest log record consumed into the model or buffer
        self.last_checkpoint_time = time.monotonic()
        self.last_checkpoint_path = None
        self.dedupe = Dedupe(config.dedupe_window)   # what is consumed (saved in checkpoints)
        self.rebatcher = None
        self.reservoirs = {}
        self.recent = None
        self.last_eval = {}
        self._last_publish = 0.0
        self._last_norms = 0.0
        self._last_eval_time = time.monotonic()
        self._dirty_since_checkpoint = False

    # -- model -----------------------------------------------------------------------------
    @property
    def train_loss(self):
        """EWMA of the step loss, divided by 1 - beta^t so early values are not biased to 0."""
        if self.loss_steps == 0:
            return float("nan")
        return self.loss_ewma / (1.0 - LOSS_EWMA_BETA ** self.loss_steps)

    def _create_model(self):
        s = self.schema
        kwargs = {**self.config.model, "task": s.task, "n_outputs": s.n_outputs, "input_dim": s.input_dim}
        self.model = Model(**kwargs)
        self._make_buffers()
        log.info("model created: %r", self.model)

    def _make_buffers(self):
        s, dtype = self.schema, self.model.dtype
        self.rebatcher = Rebatcher(s.input_dim, s.n_outputs, dtype)
        size = self.config.reservoir_size
        self.reservoirs = {split: Reservoir(size, s.input_dim, s.n_outputs, dtype, seed=i)
                           for i, split in enumerate(("dev", "test"))}
        self.recent = RecentWindow(size, s.input_dim, s.n_outputs, dtype)

    def publish(self, now=None):
        """Make the model as it is now the one that serves (a new immutable snapshot)."""
        now = time.monotonic() if now is None else now
        self.snapshot = self.model.snapshot(version=self.batches_trained)
        self._last_publish = now

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint_payload(self):
        daemon = {
            "schema": self.schema.to_dict(),
            "counters": {"samples_trained": self.samples_trained, "batches_trained": self.batches_trained,
                         "nonfinite_steps": self.nonfinite_steps, "loss_ewma": self.loss_ewma,
                         "loss_steps": self.loss_steps},
            "last_lsn": self.last_lsn,
            "dedupe": self.dedupe.to_state(),
        }
        if self.model is None:
            return {"model": None, "daemon": daemon}
        daemon["buffer"] = {k: pack_array(v) for k, v in self.rebatcher.to_state().items()}
        daemon["reservoirs"] = {k: r.to_state() for k, r in self.reservoirs.items()}
        return {"model": state_to_bytes(self.model.get_state()), "daemon": daemon}

    def restore(self, payload):
        """Take the state of a checkpoint payload (called before the thread starts)."""
        d = payload["daemon"]
        for key, value in d["schema"].items():
            setattr(self.schema, key, value)
        c = d["counters"]
        self.samples_trained, self.batches_trained = c["samples_trained"], c["batches_trained"]
        self.nonfinite_steps = c["nonfinite_steps"]
        self.loss_ewma, self.loss_steps = c["loss_ewma"], c["loss_steps"]
        self.last_lsn = d["last_lsn"]
        self.dedupe = Dedupe.from_state(d["dedupe"], self.config.dedupe_window)
        if payload["model"] is not None:
            self.model = Model.from_state(state_from_bytes(payload["model"]))
            self._make_buffers()
            self.rebatcher.load_state({k: unpack_array(v) for k, v in d["buffer"].items()},
                                      time.monotonic())
            for k, r in self.reservoirs.items():
                r.load_state(d["reservoirs"][k])
            self.publish(time.monotonic())

    def apply_configured_settings(self):
        """After a restore, take the live settings the configuration names (an operator
        who changed lr in the config and restarted means it); the architecture stays the
        checkpoint's, and a configuration that disagrees with it is logged."""
        if self.model is None:
            return
        spec = self.model.spec.to_dict()
        live = {k: v for k, v in self.config.model.items() if k in LIVE_SETTINGS and spec.get(k) != v}
        if live:
            self.model.set(**live)
            log.info("configured settings applied to the resumed model: %s", live)
        fixed = {k: v for k, v in self.config.model.items()
                 if k not in LIVE_SETTINGS and k in spec and spec[k] != (list(v) if isinstance(v, tuple) else v)}
        if fixed:
            log.warning("the checkpoint's model keeps its own %s; the configuration's %s apply only "
                        "to a new state dir", sorted(fixed), fixed)

    def write_checkpoint(self, reason):
        t0 = time.perf_counter()
        try:
            path = self.checkpoints.write(self.checkpoint_payload())
        except OSError as exc:
            self.metrics.checkpoints.labels("error").inc()
            # The next periodic attempt waits a whole interval: a full disk must not turn
            # into a checkpoint (and an error line) on every pass of the loop.
            self.last_checkpoint_time = time.monotonic()
            log.error("checkpoint (%s) failed: %s; training goes on, the previous one is intact",
                      reason, exc)
            return None
        elapsed = time.perf_counter() - t0
        self.metrics.checkpoints.labels("ok").inc()
        self.metrics.checkpoint_seconds.observe(elapsed)
        self.last_checkpoint_time = time.monotonic()
        self.last_checkpoint_path = path
        self._dirty_since_checkpoint = False
        log.info("checkpoint written (%s): %s, %d batches, %.1f ms", reason, path,
                 self.batches_trained, elapsed * 1e3)
        if self.wal is not None:
            self._trim_wal()
        return path

    def _trim_wal(self):
        """Drop log segments that even the oldest kept checkpoint no longer needs."""
        files = self.checkpoints.files()
        if not files:
            return
        try:
            with open(files[0][1], "rb") as f:
                oldest_lsn = decode(f.read())["daemon"]["last_lsn"]
        except (OSError, ValueError, KeyError):
            return
        self.wal.trim(oldest_lsn)

    # -- consuming ---------------------------------------------------------------------------
    def consume(self, item: TrainItem, now):
        """Move an accepted message's rows into the model's buffers (no step yet)."""
        if self.model is None:
            self._create_model()
        if item.split in self.reservoirs:
            self.reservoirs[item.split].offer(item.x, item.Y)
        else:
            self.rebatcher.append(item.x, item.Y, item.w, now)
        self.dedupe.add(item.producer, item.seq)
        self.last_lsn = max(self.last_lsn, item.lsn)
        self._dirty_since_checkpoint = True

    def _train_ready_batches(self, now):
        bs = self.config.batch_size
        rb = self.rebatcher
        if rb is None:
            return
        while len(rb) >= bs:
            self._step(*rb.take(bs, now))
        linger = self.config.batch_linger_ms / 1e3
        if len(rb) >= 2 and now - rb.oldest_time >= linger:
            self._step(*rb.take(len(rb), now))

    def _step(self, x, Y, w):
        t0 = time.perf_counter()
        try:
            loss = self.model.partial_fit(x, Y, sample_weight=w)
        except EngineError as exc:   # rows were checked at ingest; this would be a bug
            log.error("training step refused its batch: %s", exc)
            return
        elapsed = time.perf_counter() - t0
        if self.model.nonfinite_steps > self.nonfinite_steps:
            self.nonfinite_steps = self.model.nonfinite_steps
            self.metrics.nonfinite_steps.inc()
            log.warning("step skipped: loss or gradient not finite (%d so far)", self.nonfinite_steps)
            return
        m = x.shape[0]
        self.samples_trained += m
        self.batches_trained += 1
        self.loss_steps += 1
        self.loss_ewma = LOSS_EWMA_BETA * self.loss_ewma + (1 - LOSS_EWMA_BETA) * loss
        self.recent.offer(x, Y)
        met = self.metrics
        met.samples_trained.inc(m)
        met.batches_trained.inc()
        met.step_seconds.observe(elapsed)
        if self.batches_trained == 1:
            log.info("first batch trained: %d rows, loss %.4f", m, loss)

    # -- housekeeping ----------------------------------------------------------------------
    def _housekeeping(self, now):
        cfg = self.config
        if self.model is None:
            return
        if self.snapshot is None or (self.snapshot.version != self.batches_trained
                                     and now - self._last_publish >= cfg.publish_interval_ms / 1e3):
            self.publish(now)
        if math.isfinite(self.train_loss):
            self.metrics.train_loss.set(self.train_loss)
        if now - self._last_norms >= NORM_INTERVAL_S:
            self._update_norms(now)
        if now - self._last_eval_time >= cfg.eval_interval_s:
            self.evaluate(now)
        if (cfg.checkpoint_interval_s > 0 and self._dirty_since_checkpoint
                and now - self.last_checkpoint_time >= cfg.checkpoint_interval_s):
            self.write_checkpoint("period")

    def _update_norms(self, now):
        net = self.model.network
        for name, view in net.params.items():
            self.metrics.weight_norm.labels(name).set(float(np.linalg.norm(view)))
            self.metrics.grad_norm.labels(name).set(float(np.linalg.norm(net.grads[name])))
        self._last_norms = now

    def evaluate(self, now):
        """Score the recent training window and the dev / test reservoirs."""
        results = {}
        sources = {"train": self.recent, **self.reservoirs}
        for split, source in sources.items():
            x, Y = source.rows()
            if x.shape[0] == 0:
                continue
            figures = self.model.evaluate(x, Y)
            figures["rows"] = int(x.shape[0])
            results[split] = figures
            if "error" in figures:
                self.metrics.eval_error.labels(split).set(figures["error"])
            self.metrics.eval_loss.labels(split).set(figures["loss"])
            self.metrics.eval_rows.labels(split).set(x.shape[0])
        self.last_eval = results
        self._last_eval_time = now
        return results

    # -- commands -------------------------------------------------------------------------
    def submit(self, fn):
        """Run fn(self) on the trainer thread between steps; returns a Future."""
        fut = Future()
        self.commands.put((fn, fut))
        return fut

    def _run_commands(self):
        while True:
            try:
                fn, fut = self.commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(self))
            except Exception as exc:  # the caller turns it into an error reply
                fut.set_exception(exc)

    def apply_settings(self, settings):
        """Change live settings (model LIVE_SETTINGS and LIVE_DAEMON_SETTINGS); all or none."""
        unknown = set(settings) - set(LIVE_SETTINGS) - set(LIVE_DAEMON_SETTINGS)
        if unknown:
            raise KeyError(f"unknown or not live settings {sorted(unknown)}; live: "
                           f"{', '.join(LIVE_SETTINGS + LIVE_DAEMON_SETTINGS)}")
        model_part = {k: v for k, v in settings.items() if k in LIVE_SETTINGS}
        daemon_part = {k: v for k, v in settings.items() if k in LIVE_DAEMON_SETTINGS}
        candidate = replace(self.config, **daemon_part).validate() if daemon_part else self.config
        if model_part:
            if self.model is not None:
                self.model.set(**model_part)
            else:
                replace(self.config, model={**self.config.model, **model_part}).validate()
            self.config.model.update(model_part)
        for k, v in daemon_part.items():
            setattr(self.config, k, getattr(candidate, k))
        log.info("settings changed: %s", settings)
        return {k: getattr(self.config, k) if k in LIVE_DAEMON_SETTINGS else self.config.model[k]
                for k in settings}

    def gradient_check(self):
        if self.recent is None or self.recent.filled < 2:
            raise LookupError("no trained rows yet to check the gradient on")
        x, Y = self.recent.latest(GRADCHECK_ROWS)
        return self.model.gradient_check(x, Y, max_entries=GRADCHECK_ENTRIES).to_dict()

    # -- the thread ---------------------------------------------------------------------------
    def warm_up(self):
        """Compile (or load from Numba's cache) every kernel the model's dtype needs."""
        dtype = self.config.model.get("dtype", "float32")
        rng = np.random.default_rng(0)
        for task, y in (("multiclass", rng.integers(0, 3, 8)), ("binary", rng.integers(0, 2, 8)),
                        ("regression", rng.standard_normal(8))):
            m = Model(hidden=(3,), task=task, n_outputs=3 if task == "multiclass" else 1,
                      keep_prob=0.9, dtype=dtype, input_dim=4)
            x = rng.standard_normal((8, 4)).astype(dtype)
            m.partial_fit(x, y)
            m.predict_proba(x)
            m.snapshot().predict_into(x, np.empty((8, m.spec.n_outputs), dtype=m.dtype),
                                      m.snapshot().new_workspace())

    def run(self):
        try:
            # Numba's np.dot calls SciPy's OpenBLAS: load it before limiting its threads,
            # or the limit would miss the library that does all of training's GEMMs.
            import scipy.linalg.cython_blas  # noqa: F401
            with threadpool_limits(limits=self.config.blas_threads, user_api="blas"):
                self.warm_up()
                if self.model is not None:
                    self.ready.set()
                self._loop()
        except BaseException as exc:  # recorded for the server, which shuts down
            self.failure = exc
            log.exception("trainer thread failed")
        finally:
            self.stopped.set()

    def _loop(self):
        while True:
            self._run_commands()
            stopping = self.stop_requested.is_set()
            try:
                item = self.queue.get(timeout=0 if stopping else 0.005)
            except queue.Empty:
                item = None
            now = time.monotonic()
            if item is not None:
                self.consume(item, now)
                # Take whatever else is waiting before stepping, so steps are full.
                while self.rebatcher is not None and len(self.rebatcher) < self.config.batch_size:
                    try:
                        self.consume(self.queue.get_nowait(), now)
                    except queue.Empty:
                        break
                if not self.ready.is_set():
                    self.ready.set()
            self._train_ready_batches(now)
            self._housekeeping(now)
            if stopping and item is None:
                break
        self._run_commands()
        if self.model is not None:
            self.publish(time.monotonic())
        self.write_checkpoint("shutdown")
