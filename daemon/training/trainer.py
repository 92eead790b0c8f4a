"""The trainer thread: owns the model, re-batches accepted rows into steps, publishes
immutable snapshots for serving, evaluates held-out rows and writes checkpoints.

Everything that touches the model runs on this thread: other threads hand it train
items through `queue` and commands (set, checkpoint, gradcheck) through `commands`,
and read only the published `snapshot` and plain counters.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np

from learnd.clients.protocol import TRAIN_SPLITS
from learnd.engine import EngineError, Model, Population, Replay
from learnd.engine import population_state
from learnd.engine.drift import row_errors
from learnd.engine.metrics import evaluate_outputs
from learnd.engine.model import LIVE_SETTINGS
from learnd.engine.search_space import SearchSpace
from learnd.engine.spec import ModelSpec
from learnd.engine.state import state_from_bytes, state_to_bytes, write_atomic
from learnd.engine.warm import warm_up

from learnd.daemon.blas import limit_blas_threads
from learnd.daemon.errors import StartupError, UnsupportedOperation
from learnd.daemon.ingest import splits
from learnd.daemon.ingest.dedupe import Dedupe
from learnd.daemon.training.checkpoints import decode, pack_array, unpack_array
from learnd.daemon.training.diagnosis import GAPS, diagnose, why_no_figure
from learnd.daemon.training.drift import DriftWatch
from learnd.daemon.training.early_stopping import EarlyStopping
from learnd.daemon.training.error_analysis import analyse
from learnd.daemon.training.evaluation import RecentWindow, Reservoir
from learnd.daemon.training.history import EvalHistory
from learnd.daemon.training.progressive import ProgressiveScore
from learnd.daemon.training.rebatch import Rebatcher
from learnd.daemon.training.transfer import load_source, transferred
from learnd.daemon.training.tags import TagVocabulary

log = logging.getLogger("learnd.trainer")

LOSS_EWMA_BETA = 0.98
NORM_INTERVAL_S = 1.0
PUBLISH_SHARE_INVERSE = 50   # while a backlog waits, publishing takes at most 1/50 of the trainer's time
PUBLISH_COST_BETA = 0.8      # smoothing of what a publication takes
STATUS_WAIT_S = 1.0          # longest a status waits for the trainer thread's fresh leaderboard
# Replay waits this long after the last new training data before its first step.  While
# producers stream at full speed the queue empties for moments between messages; a replay
# step in such a gap takes the CPU the ingest process needs to bring the next one (on a
# 2-core machine, benchmarks.replay: 3,000-9,500 replay steps per 5 s flood without the
# wait, 400-1,600 with it).  At a realistic pace a batch arrives every few tens of
# milliseconds and replay gives up 5 ms of each gap.  (The loop waits for new data 5 ms at a
# time, so a shorter quiet would mostly come out as 5 ms anyway.)
REPLAY_QUIET_S = 0.005
GRADCHECK_ROWS = 32
GRADCHECK_ENTRIES = 20       # entries checked per parameter array: bounded time on big layers
# Daemon settings the control socket may change while running.
LIVE_DAEMON_SETTINGS = ("batch_size", "batch_linger_ms", "replay_ratio", "replay_recency", "publish_interval_ms",
                        "checkpoint_interval_s", "eval_interval_s", "eval_interval_samples",
                        "bayes_error", "diagnosis_tolerance", "early_stopping_patience",
                        "early_stopping_min_delta", "early_stopping_min_dev_rows", "early_stopping_action",
                        "predict_p99_bound_ms", "serve", "ensemble_k", "search_interval",
                        "adversarial_eval_epsilon", "max_suspects", "drift_delta", "on_drift", "drift_boost",
                        "drift_boost_rows")
# Settings a population is made with: they are in its checkpoint and cannot change under it.
FIXED_SEARCH_SETTINGS = ("search_members", "search_space", "search_strategy", "search_metric", "search_seed",
                         "search_min_rows")
# Settings that shape every rank's steps alike under --data-parallel: not live there.
GROUP_SETTINGS = ("batch_size", "batch_linger_ms", "replay_ratio", "replay_recency", "early_stopping_action")
BEST_MODEL_FILE = "best-model.npz"
HELD_OUT = ("train_dev", "dev", "test")    # splits kept in reservoirs, never trained on


@dataclass
class TrainItem:
    """One accepted train message: rows ready for the model."""

    lsn: int            # write-ahead-log number (0 without a log)
    producer: str
    seq: int
    split: str          # as sent: "auto", "train", "dev" or "test"
    x: np.ndarray       # (m, input_dim), model dtype
    Y: np.ndarray       # (m, n_outputs) float targets
    w: np.ndarray | None
    codes: np.ndarray   # (m,) int8: the split of each row (daemon.splits codes)
    tags: np.ndarray | None = None    # (m, T) bool multi-hot over tag_names (ingest.tags), or None
    tag_names: tuple = ()
    ids: np.ndarray | None = None     # (m,) int64 row ids as sent, or None

    @property
    def nbytes(self):
        """The bytes this message holds in memory: what ingest's bound counts."""
        return (self.x.nbytes + self.Y.nbytes + self.codes.nbytes
                + sum(0 if a is None else a.nbytes for a in (self.w, self.tags, self.ids)))

    def parts(self):
        """(split name, x, Y, w, tags, ids) for each split that has rows in this message."""
        counts = np.bincount(self.codes, minlength=len(splits.NAMES))
        for code, name in enumerate(splits.NAMES):
            if counts[code] == len(self.codes):       # all rows in one split: no copies
                yield name, self.x, self.Y, self.w, self.tags, self.ids
                return
            if counts[code]:
                mask = self.codes == code
                yield name, *(None if a is None else a[mask] for a in (self.x, self.Y, self.w, self.tags, self.ids))


EXIT_CONFIG = 2     # the command line's exit code for a configuration that cannot be used


class Trainer(threading.Thread):
    def __init__(self, config, schema, metrics, checkpoints, wal=None):
        super().__init__(name="learnd-trainer", daemon=True)
        self.config = config
        self.schema = schema
        self.metrics = metrics
        self.checkpoints = checkpoints
        self.wal = wal
        self.queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        # Bytes put into and taken from `queue`, each written by one thread, so that their
        # difference (queued_bytes) is read without a lock: ingest's memory bound counts it.
        self.enqueued_bytes = 0
        self.dequeued_bytes = 0
        self.commands: queue.Queue = queue.Queue()
        self._model: Model | None = None
        self.population: Population | None = None   # with search_members >= 2, in place of one model
        self.evaluations = 0              # evaluations run: the population decides every search_interval
        self._board = []                  # the population's leaderboard as last computed
        self._search_summary = {}
        self.snapshot = None              # the published engine.Snapshot, replaced whole
        self.broadcast = None             # serving.broadcast.SnapshotBroadcast, or None
        self.publisher = None             # serving.snapshots.SnapshotPublisher (process tree), or None
        self.group = None                 # training.parallel.Group under --data-parallel, or None
        self._checkpoint_waiters = []     # Futures of checkpoint commands the group has yet to write
        self.ready = threading.Event()    # kernels compiled (and model present)
        self.stop_requested = threading.Event()
        self.stopped = threading.Event()
        self.failure: BaseException | None = None
        # Counters (ints and floats: read from other threads without locks).
        self.samples_trained = 0
        self.batches_trained = 0
        self.replay_steps = 0             # steps on rows already learned (engine.Replay)
        self.nonfinite_steps = 0
        self.loss_ewma = 0.0
        self.loss_steps = 0
        self.last_lsn = 0                 # newest log record consumed into the model or buffer
        self.last_checkpoint_time = time.monotonic()
        self.last_checkpoint_path = None
        self.dedupe = Dedupe(config.dedupe_window)   # what is consumed (saved in checkpoints)
        self.rebatcher = None
        self.replay = None                # engine.Replay: the recent training rows
        self._replay_credit = 0           # replay steps earned by new steps, not yet taken
        self._last_data = 0.0             # time.monotonic() of the newest message dequeued
        self.reservoirs = {}
        self.recent = None
        self.progressive = None
        self.last_eval = {}
        self.tag_vocab = TagVocabulary(config.max_tags)
        self.error_analysis = {}          # held-out split -> training.error_analysis.analyse()
        self.drift = DriftWatch(config)
        self.rows_sent = dict.fromkeys(TRAIN_SPLITS, 0)   # rows consumed, by the split their message named
        self.early = EarlyStopping(config.early_stopping_patience, config.early_stopping_min_delta)
        self.best_state = None            # engine state of the best dev model (early stopping)
        self.serving_best = False         # the best snapshot serves, not the latest model
        self.frozen = False               # no training steps until unfrozen
        self.diagnosis = self._diagnose({})
        self.history = EvalHistory(config.state_dir)
        self._last_publish = 0.0
        self._publish_seconds = 0.0    # what a publication takes (smoothed)
        self._published_batches = 0    # batches_trained when the serving version was made
        self._last_norms = 0.0
        self._last_eval_time = time.monotonic()
        self._last_eval_samples = 0
        self._dirty_since_checkpoint = False
        self._scores = None               # head outputs of a batch before its step
        metrics.bayes_error_proxy.set(config.bayes_error)

    # -- model -----------------------------------------------------------------------------
    @property
    def model(self):
        """The model that answers: the one model, or the population's champion."""
        return self.population.champion.model if self.population is not None else self._model

    @model.setter
    def model(self, model):
        if self.population is not None:
            raise LookupError("the population's champion is chosen by the search, not set by hand")
        self._model = model

    @property
    def model_steps(self):
        """Optimizer steps the model has taken, new and replay: the version it publishes."""
        return self.batches_trained + self.replay_steps

    @property
    def train_loss(self):
        """EWMA of the step loss, divided by 1 - beta^t so early values are not biased to 0."""
        if self.loss_steps == 0:
            return float("nan")
        return self.loss_ewma / (1.0 - LOSS_EWMA_BETA ** self.loss_steps)

    def _create_model(self):
        s = self.schema
        kwargs = {**self.config.model, "task": s.task, "n_outputs": s.n_outputs, "input_dim": s.input_dim}
        if s.task == "regression":
            # The daemon learns standardized targets unless told otherwise: a stream's
            # targets can lie anywhere, and its learning rate is tuned for z-scores.
            kwargs.setdefault("normalize_targets", True)
        if self.config.searching:
            self.population = self._new_population(kwargs)
            self._refresh_board()
            log.info("population created: %d members, strategy %s, champion %r", self.config.search_members,
                     self.config.search_strategy, self.model)
        elif self.config.init_from:
            self.model = transferred(load_source(self.config.init_from), kwargs, self.config.reinit_layers)
            log.info("model created from %s (last %d layers afresh, frozen %s): %r", self.config.init_from,
                     self.config.reinit_layers, list(self.model.spec.freeze_layers), self.model)
        else:
            self.model = Model(**kwargs)
            log.info("model created: %r", self.model)
            self._join_group()
        self._make_buffers()

    def _join_group(self):
        """Under --data-parallel, every step of the model is a step of the whole group."""
        if self.group is not None and self.model is not None:
            self.model.join(self.group.collective)

    def _new_population(self, model_kwargs):
        cfg = self.config
        # search_seed seeds every member's draws and initial weights; [model] seed has no say
        model_kwargs = {k: v for k, v in model_kwargs.items() if k != "seed"}
        return Population(
            members=cfg.search_members, search_space=cfg.search_space or None, strategy=cfg.search_strategy,
            metric=cfg.search_metric, interval=0, seed=cfg.search_seed, serve=cfg.serve,
            ensemble_k=cfg.ensemble_k, min_rows=cfg.search_min_rows,
            window=max(4096, cfg.search_min_rows), threads=os.cpu_count(),
            min_dev_rows=cfg.early_stopping_min_dev_rows,
            # The rings always exist; the trainer takes the steps when it has CPU to spare.
            replay_ratio=0, replay_rows=cfg.replay_rows if cfg.replay_ratio else 0,
            replay_recency=cfg.replay_recency or None,
            progressive="inference" if cfg.progressive_validation == "inference" else "step",
            **model_kwargs)

    def _make_buffers(self):
        s, dtype = self.schema, self.model.dtype
        self.rebatcher = Rebatcher(s.input_dim, s.n_outputs, dtype)
        # A population's members keep their own replay rings (Population.rehearse).
        self.replay = None
        if self.population is None and self.group is None:    # a group takes no replay steps (parallel.py)
            self.replay = Replay(self.model, rows=self.config.replay_rows, ratio=self.config.replay_ratio,
                                 batch_size=self.config.batch_size, seed=self.model.spec.seed,
                                 recency=self.config.replay_recency or None)
        size = self.config.reservoir_size
        self.reservoirs = {split: Reservoir(size, s.input_dim, s.n_outputs, dtype, n_tags=self.tag_vocab.width)
                           for split in HELD_OUT}
        self.recent = RecentWindow(size, s.input_dim, s.n_outputs, dtype)
        self.progressive = ProgressiveScore(s.task, self.config.progressive_window)

    def publish(self, now=None):
        """Make the model as it is now the one that serves (a new immutable snapshot)."""
        now = time.monotonic() if now is None else now
        t0 = time.perf_counter()
        if self.population is not None:     # the champion's, or the top members' ensemble
            self._set_snapshot(self.population.snapshot(version=self.model_steps))
        else:
            self._set_snapshot(self.model.snapshot(version=self.model_steps))
        took = time.perf_counter() - t0
        # Smoothed, so that one slow publication (the first maps a new file) does not
        # hold the next ones back for 50 times as long.
        self._publish_seconds = took if self._publish_seconds == 0.0 else (
            PUBLISH_COST_BETA * self._publish_seconds + (1 - PUBLISH_COST_BETA) * took)
        self._last_publish = now
        self._published_batches = self.batches_trained
        self.serving_best = False

    def _publish_due(self, now, caught_up):
        """A new version waits and either the trainer has caught up with new rows
        (caught_up: nothing new waits, so its time is spare and what it learned serves at
        once) or the interval has passed: publish_interval_ms, or PUBLISH_SHARE_INVERSE
        times what a publication takes, whichever is longer (a large model's snapshot
        takes a millisecond to write; every 10 ms that would be a tenth of the trainer's
        time while a backlog waits).  Replay steps alone wait for the interval."""
        if self.snapshot is None:
            return True
        if self.serving_best or self.snapshot.version == self.model_steps:
            return False
        if caught_up and self.batches_trained > self._published_batches:
            return True
        interval = max(self.config.publish_interval_ms / 1e3, PUBLISH_SHARE_INVERSE * self._publish_seconds)
        return now - self._last_publish >= interval

    def _set_snapshot(self, snapshot):
        """The one place a version is published: to the predict thread and followers."""
        self.snapshot = snapshot
        data = None
        if self.publisher is not None:      # the predict workers map it from shared memory
            _, data = self.publisher.publish(snapshot)
        if self.broadcast is not None:
            self.broadcast.publish(snapshot, data)

    def publish_best(self):
        """Serve the best dev model (early stopping's serve_best) until the latest beats it."""
        best = Model.from_state(self.best_state)
        self._set_snapshot(best.snapshot(version=self.early.best_version))
        self.serving_best = True
        log.info("serving the best model: version %d, dev %s %.4g", self.early.best_version,
                 self._stopping_metric(), self.early.best)

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint_payload(self):
        daemon = {
            "schema": self.schema.to_dict(),
            "counters": {"samples_trained": self.samples_trained, "batches_trained": self.batches_trained,
                         "nonfinite_steps": self.nonfinite_steps, "loss_ewma": self.loss_ewma,
                         "replay_steps": self.replay_steps,
                         "loss_steps": self.loss_steps},
            "last_lsn": self.last_lsn,
            "dedupe": self.dedupe.to_state(),
            "rows_sent": self.rows_sent,
        }
        if self.model is None:
            return {"model": None, "daemon": daemon}
        daemon["buffer"] = {k: pack_array(v) for k, v in self.rebatcher.to_state().items()}
        if self.replay is not None:
            daemon["replay"] = {k: pack_array(v) if isinstance(v, np.ndarray) else v
                                for k, v in self.replay.get_state().items()}
        daemon["evaluations"] = self.evaluations
        daemon["reservoirs"] = {k: r.to_state() for k, r in self.reservoirs.items()}
        daemon["tags"] = self.tag_vocab.to_state()
        daemon["progressive"] = self.progressive.to_state()
        daemon["drift"] = self.drift.to_state()
        daemon["early_stopping"] = {**self.early.to_state(), "frozen": self.frozen,
                                    "serving_best": self.serving_best}
        payload = {"model": state_to_bytes(self.model.get_state()), "daemon": daemon}
        if self.population is not None:     # every member and the search state; "model" is the champion
            payload["population"] = population_state.to_bytes(self.population.get_state())
        return payload

    def restore(self, payload):
        """Take the state of a checkpoint payload (called before the thread starts)."""
        d = payload["daemon"]
        for key, value in d["schema"].items():
            setattr(self.schema, key, value)
        c = d["counters"]
        self.samples_trained, self.batches_trained = c["samples_trained"], c["batches_trained"]
        self.nonfinite_steps = c["nonfinite_steps"]
        self.loss_ewma, self.loss_steps = c["loss_ewma"], c["loss_steps"]
        self.replay_steps = c.get("replay_steps", 0)
        self.last_lsn = d["last_lsn"]
        self.dedupe = Dedupe.from_state(d["dedupe"], self.config.dedupe_window)
        self.rows_sent.update(d.get("rows_sent", {}))
        self.evaluations = d.get("evaluations", 0)
        if "tags" in d:
            self.tag_vocab.load_state(d["tags"])
        # A state dir holds one model or one population: a configuration that asks for the
        # other cannot resume it, and must not quietly start afresh beside its log.
        if payload.get("population") is not None:
            saved = population_state.from_bytes(payload["population"])
            if not self.config.searching:
                raise StartupError(f"the state dir {self.config.state_dir} holds a population; start it with "
                                   f"search_members = {len(saved['meta']['members'])}, or use a new "
                                   "state dir", EXIT_CONFIG)
            self.population = Population.from_state(saved, threads=os.cpu_count())
            self._check_population_settings()
            self._refresh_board()
        elif payload["model"] is not None and self.config.searching:
            raise StartupError(f"the state dir {self.config.state_dir} holds one model, not a population: "
                               f"search_members = {self.config.search_members} needs a new state dir",
                               EXIT_CONFIG)
        elif payload["model"] is not None:
            self.model = Model.from_state(state_from_bytes(payload["model"]))
            self._join_group()
        if payload["model"] is not None:
            self._make_buffers()
            self.rebatcher.load_state({k: unpack_array(v) for k, v in d["buffer"].items()},
                                      time.monotonic())
            if d.get("replay") is not None and self.replay is not None:
                self.replay.set_state({k: unpack_array(v) if isinstance(v, dict) else v
                                       for k, v in d["replay"].items()})
            for k, r in self.reservoirs.items():
                if k in d["reservoirs"]:
                    r.load_state(d["reservoirs"][k])
            if "progressive" in d:
                self.progressive.load_state(d["progressive"])
            if "drift" in d:
                self.drift.load_state(d["drift"])
            self.publish(time.monotonic())
        if "early_stopping" in d:
            es = d["early_stopping"]
            self.early.load_state(es)
            self.frozen = bool(es["frozen"])
            self._load_best_model()
            if es["serving_best"] and self.best_state is not None:
                self.publish_best()

    def _check_population_settings(self):
        """A resumed population keeps the settings it was made with (its draws, its
        rings and its decisions depend on them); a configuration that disagrees is logged."""
        made = self.population.settings
        resumed = {"search_members": made["members"], "search_strategy": made["strategy"],
                   "search_metric": made["metric"], "search_seed": made["seed"],
                   "search_min_rows": made["min_rows"]}
        differ = {k: (v, getattr(self.config, k)) for k, v in resumed.items() if getattr(self.config, k) != v}
        if differ:
            log.warning("the checkpoint's population keeps its own %s (checkpoint, configuration: %s); "
                        "a new population needs a new state dir", sorted(differ), differ)
        # serve and ensemble_k are live: the configuration's apply
        self.population.set_serving(self.config.serve, self.config.ensemble_k)

    def apply_configured_settings(self):
        """After a restore, take the live settings the configuration names (an operator
        who changed lr in the config and restarted means it); the architecture stays the
        checkpoint's, and a configuration that disagrees with it is logged."""
        if self.model is None:
            return
        if self.population is not None:     # members' settings are the search's (see _check_population_settings)
            return
        spec = self.model.spec.to_dict()
        live = {k: v for k, v in self.config.model.items() if k in LIVE_SETTINGS and spec.get(k) != v}
        after = self.model.spec.unfreeze_after_rows
        if after and self.model.samples_seen >= after:
            # The configured freeze has run its course (unfreeze_after_rows): a restart
            # must not freeze the fine-tuned trunk again.
            live.pop("freeze_layers", None)
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
        # A rank of a group may have to resume from its checkpoint before the newest
        # (parallel.Group.agree_on_checkpoint), or from the start while it has only one.
        if not files or (self.group is not None and len(files) < 2):
            return
        try:
            with open(files[0][1], "rb") as f:
                oldest_lsn = decode(f.read())["daemon"]["last_lsn"]
        except (OSError, ValueError, KeyError):
            return
        self.wal.trim(oldest_lsn)

    # -- consuming ---------------------------------------------------------------------------
    def enqueue(self, item: TrainItem):
        """Queue an accepted message for the training thread (the ingest side)."""
        self.enqueued_bytes += item.nbytes
        self.queue.put(item)

    @property
    def queued_bytes(self):
        """Bytes of the messages in `queue` that came through enqueue."""
        return self.enqueued_bytes - self.dequeued_bytes

    def _dequeue(self, timeout=None):
        """The next queued message (queue.Empty when none comes within timeout; 0: none waiting)."""
        item = self.queue.get(timeout=timeout) if timeout else self.queue.get_nowait()
        self.dequeued_bytes += item.nbytes
        self._last_data = time.monotonic()
        return item

    @property
    def leaves_backlog_in_log(self):
        """True when a stop may leave queued messages untrained: with the write-ahead log
        they are read again from it at the next start.  Without it (--no-wal) the queue
        is all there is, so a stop trains it first."""
        return self.config.wal

    def consume(self, item: TrainItem, now):
        """Move an accepted message's rows into the model's buffers (no step yet)."""
        if self.model is None:
            self._create_model()
        for split, x, Y, w, tags, ids in item.parts():
            if split == "train":
                self.rebatcher.append(x, Y, w, now)
            else:
                wide = None if tags is None else self.tag_vocab.widen(tags, item.tag_names)
                self.reservoirs[split].offer(x, Y, w, wide, ids)
        self.dedupe.add(item.producer, item.seq)
        self.rows_sent[item.split] += len(item.codes)
        self.last_lsn = max(self.last_lsn, item.lsn)
        self._dirty_since_checkpoint = True

    def _train_ready_batches(self, now):
        bs = self.config.batch_size
        rb = self.rebatcher
        if rb is None:
            return
        while len(rb) >= bs:
            self._step(*rb.take(bs, now))
            self._evaluate_if_due(now)
        linger = self.config.batch_linger_ms / 1e3
        if len(rb) >= 2 and now - rb.oldest_time >= linger:
            self._step(*rb.take(len(rb), now))
            self._evaluate_if_due(now)

    def _score_before_step(self, x, Y):
        """Progressive validation with an inference pass: the model as it is scores the
        batch it is about to learn from, so every training row is scored unseen."""
        m, K = x.shape[0], self.schema.n_outputs
        if self._scores is None or self._scores.shape[0] < m:
            self._scores = np.empty((max(m, self.config.batch_size), K), dtype=self.model.dtype)
        P = self.model.predict_proba(x, out=self._scores[:m])
        self._progressive(P, Y)

    def _progressive(self, P, Y):
        """Score a batch before its step (P: (m, K) outputs of the model as it was) and
        watch the row errors for drift."""
        self.progressive.add(P, Y)
        errors = row_errors(self.schema.task, P, Y)
        found = self.drift.observe(errors)
        if found:
            self._on_drift(found)
        if self.replay is not None:     # its window starts after a change (a member's watches its own)
            self.replay.observe(errors)

    def _on_drift(self, positions):
        """The detector found a change in the progressive error: count, report, act.
        A rank of a data-parallel group only reports: each rank watches its own stream, and
        an action on one rank's model would part it from the others'."""
        action = self.config.on_drift if self.group is None else "none"
        self.metrics.drift_detected.inc(len(positions))
        window_error = self.progressive.figures().get("window_error")
        self.drift.record(positions[-1], self.samples_trained, self.model_steps, window_error, action)
        log.warning("drift: the progressive error changed at row %d of the stream (%d rows trained, "
                    "windowed error %.4g); action: %s", positions[-1], self.samples_trained,
                    window_error if window_error is not None else float("nan"), action)
        if action == "reset_optimizer":
            for model in self._drift_models().values():
                model.reset_optimizer()
        elif action == "boost_lr":
            self.drift.start_boost(self._drift_models(), self.samples_trained)
        elif action == "new_challengers" and self.population is not None:
            for d in self.population.renew(reason="drift"):
                log.info("search: drift: member %s replaces %s", d["member"], d["replaced"])
                self.metrics.search_decisions.labels(d["kind"]).inc()
            self._refresh_board()

    def _drift_models(self):
        """{key: Model} that a drift action applies to: the model, or every member (their
        steps in flight finished first)."""
        if self.population is not None:
            self.population.sync()
            return {mb.id: mb.model for mb in self.population.members}
        return {0: self.model}

    def _step(self, x, Y, w):
        if x is None:
            return self._step_without_rows()
        # Progressive validation (test-then-train).  "step" scores the batch with the
        # outputs of the step's own forward pass, taken before the update: free, and
        # equal to an inference pass when there is no dropout and no batch norm
        # (otherwise it is scored in training mode).  "inference" pays for a separate
        # forward pass, about a third of a step.  Frozen rows take no step, so they are
        # scored by an inference pass.
        mode = self.config.progressive_validation
        if mode == "inference" or (self.frozen and mode != "off"):
            self._score_before_step(x, Y)
        if self.frozen:
            self.metrics.frozen_rows.inc(x.shape[0])
            return
        t0 = time.perf_counter()
        if self.population is not None:
            if not self._population_step(x, Y, w):
                return
            loss = self.population.champion.last_loss
        else:
            try:
                loss = self.model.partial_fit(x, Y, sample_weight=w)
            except EngineError as exc:   # rows were checked at ingest; this would be a bug
                log.error("training step refused its batch: %s", exc)
                return
        elapsed = time.perf_counter() - t0
        if self.population is None and self.model.nonfinite_steps > self.nonfinite_steps:
            self.nonfinite_steps = self.model.nonfinite_steps
            self.metrics.nonfinite_steps.inc()
            log.warning("step skipped: loss or gradient not finite (%d so far)", self.nonfinite_steps)
            return
        if mode == "step":
            self._progressive(self.model.last_batch_outputs(), Y)
        m = x.shape[0]
        self.samples_trained += m
        self.batches_trained += 1
        self.loss_steps += 1
        self.loss_ewma = LOSS_EWMA_BETA * self.loss_ewma + (1 - LOSS_EWMA_BETA) * loss
        self.recent.offer(x, Y, w)
        if self.drift.boost is not None:
            self.drift.apply_boost(self._drift_models(), self.samples_trained)
        if self.replay is not None:          # a population's members remember the rows themselves
            self.replay.add(x, Y, w)
        self._replay_credit = min(self._replay_credit + self.config.replay_ratio, self._replay_credit_cap())
        met = self.metrics
        met.samples_trained.inc(m)
        met.batches_trained.inc()
        met.step_seconds.observe(elapsed)
        if self.batches_trained == 1:
            log.info("first batch trained: %d rows, loss %.4f", m, loss)

    def _step_without_rows(self):
        """A group step to which this rank brings no rows: weight 0, the group's update."""
        t0 = time.perf_counter()
        self.model.step_without_rows()
        if self.model.nonfinite_steps > self.nonfinite_steps:
            self.nonfinite_steps = self.model.nonfinite_steps
            self.metrics.nonfinite_steps.inc()
            log.warning("step skipped: loss or gradient not finite on some rank (%d so far)", self.nonfinite_steps)
            return
        self.batches_trained += 1
        self.metrics.batches_trained.inc()
        self.metrics.empty_steps.inc()
        self.metrics.step_seconds.observe(time.perf_counter() - t0)

    def _population_step(self, x, Y, w):
        """Every member scores the batch and learns from it (in parallel).  A member whose
        step is not finite skips it, as one model would; the others' steps stand."""
        try:
            self.population.partial_fit(x, Y, sample_weight=w)
        except EngineError as exc:   # rows were checked at ingest; this would be a bug
            log.error("training step refused its batch: %s", exc)
            return False
        # Members other than the champion may still be learning earlier batches: what
        # they skip is counted once they have.
        skipped = self.population.take_skipped_steps()
        if skipped:
            self.nonfinite_steps += skipped
            self.metrics.nonfinite_steps.inc(skipped)
            log.warning("%d member steps skipped: loss or gradient not finite (%d so far)", skipped,
                        self.nonfinite_steps)
        return True

    # -- replay ------------------------------------------------------------------------------
    def _replay_credit_cap(self):
        """Credit a burst may bank for the quiet after it: one pass over the ring per
        unit of ratio, so the model does not go on stepping long after the data stopped."""
        return self.config.replay_ratio * max(1, self.config.replay_rows // self.config.batch_size)

    def replay_due(self):
        """A replay step is due when new steps earned one, training is not frozen, and no
        new training data waits: nothing in the queue, no full batch in the rebatcher
        (rows lingering for a batch to fill are waiting for rows, not for the CPU), and
        none has come for REPLAY_QUIET_S."""
        if not (self._replay_credit > 0 and not self.frozen and self.queue.empty()
                and len(self.rebatcher) < self.config.batch_size
                and time.monotonic() - self._last_data >= REPLAY_QUIET_S):
            return False
        return (self.population.replay_ready() if self.population is not None
                else self.replay is not None and self.replay.ready())

    def replay_step(self):
        """One step on a batch of recent training rows (engine.Replay)."""
        self._replay_credit -= 1
        t0 = time.perf_counter()
        if self.population is not None:         # one step for every member, in parallel
            if self.population.rehearse():
                self.replay_steps += 1
                self.metrics.replay_steps.inc()
                self.metrics.replay_step_seconds.observe(time.perf_counter() - t0)
            return
        if self.replay.step() is None:          # drew only rows of weight 0: no step taken
            return
        if self.model.nonfinite_steps > self.nonfinite_steps:
            self.nonfinite_steps = self.model.nonfinite_steps
            self.metrics.nonfinite_steps.inc()
            log.warning("replay step skipped: loss or gradient not finite (%d so far)", self.nonfinite_steps)
            return
        self.replay_steps += 1
        self.metrics.replay_steps.inc()
        self.metrics.replay_step_seconds.observe(time.perf_counter() - t0)

    def replay_status(self):
        r = self.replay
        if r is None and self.population is not None:
            r = self.population.champion.replay
        return {"steps": self.replay_steps, "ratio": self.config.replay_ratio,
                "recency": self.config.replay_recency,
                "rows": r.filled if r is not None else 0, "capacity": self.config.replay_rows,
                "window": r.window if r is not None and r.filled else 0, "cuts": r.cuts if r is not None else 0,
                "pending": self._replay_credit}

    # -- housekeeping ----------------------------------------------------------------------
    def _housekeeping(self, now, caught_up=False, checkpoints=True):
        """Between steps: publish, metrics, evaluation, checkpoints (unless the group
        decides them).  caught_up: no new training data waited this turn."""
        cfg = self.config
        if self.broadcast is not None:
            self.broadcast.tick(now)    # a new subscription gets the current version now; a heartbeat
        if self.model is None:
            return
        if self._publish_due(now, caught_up):
            self.publish(now)
        if math.isfinite(self.train_loss):
            self.metrics.train_loss.set(self.train_loss)
        figures = self.progressive.figures()
        if "window_error" in figures:
            self.metrics.progressive_error.set(figures["window_error"])
        self.metrics.progressive_loss.set(figures["window_loss"])
        if now - self._last_norms >= NORM_INTERVAL_S:
            self._update_norms(now)
            if self.population is not None:
                self._refresh_board()
        if now - self._last_eval_time >= cfg.eval_interval_s:
            self.evaluate(now)
        else:
            self._evaluate_if_due(now)
        if checkpoints and self._checkpoint_due(now):
            self.write_checkpoint("period")

    def _update_norms(self, now):
        net = self.model.network
        for name, view in net.params.items():
            self.metrics.weight_norm.labels(name).set(float(np.linalg.norm(view)))
            self.metrics.grad_norm.labels(name).set(float(np.linalg.norm(net.grads[name])))
        self._last_norms = now

    def _evaluate_if_due(self, now):
        every = self.config.eval_interval_samples
        if every and self.samples_trained - self._last_eval_samples >= every:
            self.evaluate(now)

    def _stopping_metric(self):
        """"error" or "loss"; None while "auto" waits for the task to be known."""
        metric = self.config.early_stopping_metric
        if metric == "auto" and self.schema.task is not None:
            metric = "loss" if self.schema.task == "regression" else "error"
        return None if metric == "auto" else metric

    def _diagnose(self, results):
        """The diagnosis of evaluation results, with why each split missing from them has
        no figure as of now (read from the server thread too: counters and whole objects)."""
        cfg = self.config
        held = {"train": self.recent.filled if self.recent is not None else 0,
                **{split: r.filled for split, r in self.reservoirs.items()}}
        fractions = {"dev_fraction": cfg.dev_fraction, "test_fraction": cfg.test_fraction,
                     "train_dev_fraction": cfg.train_dev_fraction}
        no_figure = {split: why_no_figure(split, held.get(split, 0), self.rows_sent, fractions, self.frozen,
                                          cfg.eval_interval_s)
                     for split in splits.NAMES if split not in results}
        return diagnose(results, cfg.bayes_error, cfg.diagnosis_tolerance, self.schema.task, no_figure)

    def evaluate(self, now):
        """Score the recent training window and the held-out reservoirs (inference
        mode); then the diagnosis, early stopping, metrics and the history file."""
        results = {}
        sources = {"train": self.recent.distinct_rows(), **{k: r.rows() for k, r in self.reservoirs.items()}}
        for split, (x, Y, w) in sources.items():
            if x.shape[0] == 0:
                continue
            weighted = not np.all(w == 1.0)
            figures = self._evaluate_served(x, Y, w if weighted else None)
            figures["rows"] = int(x.shape[0])
            if self.config.adversarial_eval_epsilon > 0:
                figures.update(self._evaluate_attacked(x, Y, w if weighted else None))
            results[split] = figures
            self._set_eval_metrics(split, figures)
        self.last_eval = results
        self._analyse_errors()
        self._last_eval_time = now
        self._last_eval_samples = self.samples_trained
        self.diagnosis = self._diagnose(results)
        self._set_diagnosis_metrics()
        # A best taken on a handful of dev rows (the reservoir is still filling) would be
        # a lucky draw that later, honest evaluations can never beat.
        if "dev" in results and results["dev"]["rows"] >= self.config.early_stopping_min_dev_rows:
            self._early_stopping(results["dev"].get(self._stopping_metric()))
        record = {
            "time": time.time(), "samples": self.samples_trained, "version": self.model_steps,
            "learning_rate": self.model.learning_rate, "train_loss": self.train_loss,
            "splits": results, "progressive": self.progressive.figures(),
            "verdict": self.diagnosis["verdict"],
        }
        self.evaluations += 1
        if self.population is not None:
            record["search"] = self._search(sources["dev"], now)
        self.history.append(record)
        return results

    def _evaluate_attacked(self, x, Y, w):
        """Figures on FGSM examples of the split's rows at adversarial_eval_epsilon (input
        units), made from the model that answers (a population's champion; an ensemble
        is scored on its champion's examples): adversarial_error (classification) and
        adversarial_loss."""
        eps = self.config.adversarial_eval_epsilon
        attacked = self.model.adversarial(x, Y, eps, sample_weight=w)
        figures = self._evaluate_served(attacked, Y, w)
        out = {"adversarial_loss": figures["loss"], "adversarial_epsilon": eps}
        if "error" in figures:
            out["adversarial_error"] = figures["error"]
        return out

    def _analyse_errors(self):
        """Error analysis of each held-out split with rows (classification only): the
        confusion matrix, errors by tag and likely mislabeled rows, for status and metrics."""
        names = self.tag_vocab.column_names()
        analysis = {}
        for split, r in self.reservoirs.items():
            x, Y, _ = r.rows()
            if x.shape[0] == 0:
                continue
            tags, ids, has_id = r.annotations()
            result = analyse(self.schema.task, self._served_proba(x), Y, tags, names, ids, has_id,
                             self.config.max_suspects)
            if result is None:           # a task without classes: nothing to analyse
                break
            analysis[split] = result
            met = self.metrics
            met.eval_suspects.labels(split).set(result["suspects"]["count"])
            for row in result["tags"]:
                met.eval_error_by_tag.labels(split, row["tag"]).set(row["error"])
                met.eval_tag_rows.labels(split, row["tag"]).set(row["rows"])
        self.error_analysis = analysis

    def _served_proba(self, x):
        """(m, n_outputs) probabilities of what predict answers from (as _evaluate_served)."""
        if self.population is not None and self.population.settings["serve"] == "ensemble":
            return self.population.predict_proba(x)
        return self.model.predict_proba(x)

    def _evaluate_served(self, x, Y, w):
        """Inference figures of what predict answers from: the model, or a population's
        champion, or (serve = "ensemble") the ensemble itself."""
        if self.population is None or self.population.settings["serve"] != "ensemble":
            return self.model.evaluate(x, Y, w)
        P = self.population.predict_proba(x)     # one ensemble for every split evaluated
        return evaluate_outputs(self.schema.task, P, np.array(Y, dtype=np.float64), w)

    def _search(self, dev, now):
        """The population's turn after an evaluation: every search_interval evaluations a
        decision (on the dev reservoir's rows where the metric is a dev one).  A change of
        champion, or of the ensemble's members, is published at once.  Returns what the
        evaluation history keeps: the decisions made and every member's figures."""
        pop = self.population
        made = []
        if self.evaluations % self.config.search_interval == 0:
            served = [mb.id for mb in pop.served()]
            x, Y, _ = dev
            made = pop.decide(dev=(x, Y) if x.shape[0] else None)
            for d in made:
                log.info("search: %s member %s%s", d["kind"], d["member"],
                         f" (was {d['previous']})" if "previous" in d else
                         f" (replaces {d['replaced']})" if "replaced" in d else "")
                self.metrics.search_decisions.labels(d["kind"]).inc()
            if [mb.id for mb in pop.served()] != served and not self.serving_best:
                self.publish(now)
        self._refresh_board()
        board = self._board
        return {"champion": pop.champion.id, "decisions": made,
                "members": [{k: row[k] for k in ("member", "slot", "value", "standard_error", "rows_trained", "dev")}
                            for row in board]}

    def _set_member_metrics(self, board):
        met = self.metrics
        for row in board:
            slot = str(row["slot"])
            met.member_metric.labels(slot).set(float("nan") if row["value"] is None else row["value"])
            dev = row["dev"] or {}
            met.member_dev_error.labels(slot).set(dev.get("value", float("nan")))
            met.member_rows.labels(slot).set(row["rows_trained"])
            met.member_id.labels(slot).set(row["member"])
        met.search_champion.set(self.population.champion.slot)

    def _set_eval_metrics(self, split, figures):
        met = self.metrics
        if "error" in figures:
            met.eval_error.labels(split).set(figures["error"])
        if "adversarial_error" in figures:
            met.eval_adversarial_error.labels(split).set(figures["adversarial_error"])
        met.eval_loss.labels(split).set(figures["loss"])
        met.eval_rows.labels(split).set(figures["rows"])
        for name, gauge in met.eval_figures.items():
            if name in figures:
                gauge.labels(split).set(figures[name])

    def _set_diagnosis_metrics(self):
        d = self.diagnosis
        for gap in GAPS:
            for gauge, value in ((self.metrics.diagnosis_gap, d["gaps"][gap]),
                                 (self.metrics.diagnosis_gap_error, d["gap_errors"][gap])):
                gauge.labels(gap).set(float("nan") if value is None else value)
        self.metrics.set_verdict(d["verdict"])

    def _early_stopping(self, value):
        """Track the best dev figure; on patience running out, do the configured action."""
        outcome = self.early.observe(value, self.model_steps, self.samples_trained)
        if outcome == "improved":
            self.best_state = self.model.get_state()
            self._save_best_model()
            if self.serving_best:          # the latest model is the best again: serve it
                self.publish()
            return
        if outcome != "stopped":
            return
        action = self.config.early_stopping_action
        log.warning("early stopping: no dev %s improvement in %d evaluations (best %.4g at version %s); "
                    "action: %s", self._stopping_metric(), self.early.since_best, self.early.best,
                    self.early.best_version, action)
        if action == "serve_best" and self.best_state is not None:
            self.publish_best()
        elif action == "freeze":
            self.frozen = True

    def _save_best_model(self):
        """The best model survives restarts: it is written whole next to the checkpoints."""
        try:
            write_atomic(os.path.join(self.config.state_dir, BEST_MODEL_FILE),
                         state_to_bytes(self.best_state))
        except OSError as exc:
            log.error("best model not saved: %s (it is kept in memory)", exc)

    def _load_best_model(self):
        path = os.path.join(self.config.state_dir, BEST_MODEL_FILE)
        try:
            with open(path, "rb") as f:
                self.best_state = state_from_bytes(f.read())
        except FileNotFoundError:
            return
        except (OSError, EngineError) as exc:
            log.error("best model %s unreadable: %s; rollback is unavailable until a new best", path, exc)

    def rollback(self):
        """Make the best dev model the live one (optimizer state included), and serve it."""
        self._refuse_in_group("rollback")
        if self.best_state is None:
            raise LookupError("no best model yet: it needs a dev evaluation "
                              "(rows sent with split dev, or auto)")
        self.model = Model.from_state(self.best_state)
        self.apply_configured_settings()
        self.early.restart()
        self.publish()
        self.metrics.rollbacks.inc()
        log.warning("rolled back to the best model: version %s, dev %s %.4g",
                    self.early.best_version, self._stopping_metric(), self.early.best)
        return {"model_version": self.snapshot.version, "best_version": self.early.best_version,
                "best_dev": self.early.best, "metric": self._stopping_metric()}

    def _refuse_in_group(self, op):
        if self.group is not None:
            raise UnsupportedOperation(f"{op} changes one rank's model; a data-parallel group's ranks "
                                      "must step together")

    def set_frozen(self, frozen):
        self._refuse_in_group("freeze" if frozen else "unfreeze")
        self.frozen = bool(frozen)
        if not frozen:
            self.early.restart()
        log.warning("training %s", "frozen" if frozen else "unfrozen")
        return {"frozen": self.frozen}

    def status_part(self, queue_depth=None):
        """What `status` reports of training; queue_depth: messages waiting for this
        trainer (default: its in-memory queue)."""
        model, snap, s = self.model, self.snapshot, self.schema
        return {
            "model_version": snap.version if snap is not None else None,
            "samples_trained": self.samples_trained,
            "batches_trained": self.batches_trained,
            "replay": self.replay_status(),
            "nonfinite_steps": self.nonfinite_steps,
            "queue_depth": self.queue.qsize() if queue_depth is None else queue_depth,
            "rows_waiting": len(self.rebatcher) if self.rebatcher is not None else 0,
            "learning_rate": model.learning_rate if model is not None else self.config.model.get("lr", ModelSpec.lr),
            "train_loss": self.train_loss,
            "task": s.task,
            "input_dim": s.input_dim,
            "n_outputs": s.n_outputs,
            "last_checkpoint": self.last_checkpoint_path,
            **self.evaluation_status(),
            "error_analysis": {"tag_names": list(self.tag_vocab.names), "splits": self.error_analysis},
            "drift": self.drift.status(),
            **self.search_status(),
            **self.group_status(),
        }

    def group_status(self):
        """status's `data_parallel` part: this rank, the group's size and the rows the
        group's model has learned (samples_trained counts this rank's)."""
        if self.group is None:
            return {}
        return {"data_parallel": {"rank": self.group.rank, "ranks": self.group.size,
                                  "group_samples_trained": self.model.samples_seen if self.model else 0}}

    def search_status(self):
        """status's `members` (the leaderboard, best first) and `search` (how the
        population is run and what it decided lately); empty without a population.
        The trainer thread computes them between two steps (the population is its
        alone); if it does not get to it within STATUS_WAIT_S, the last ones it computed."""
        if self.population is None:
            return {}
        if threading.current_thread() is not self and self.is_alive():
            try:
                self.submit(lambda t: t._refresh_board()).result(timeout=STATUS_WAIT_S)
            except Exception as exc:   # a busy trainer: the board of a moment ago will do
                log.debug("leaderboard not refreshed for status: %r", exc)
        return {"members": self._board, "search": self._search_summary}

    def _refresh_board(self):
        """Compute the leaderboard on the trainer thread, for status to read whole."""
        pop = self.population
        st = pop.settings
        self._board = pop.leaderboard()
        self._search_summary = {
            "members": st["members"], "strategy": st["strategy"], "metric": st["metric"],
            "interval": self.config.search_interval, "serve": st["serve"], "ensemble_k": st["ensemble_k"],
            "seed": st["seed"], "min_rows": st["min_rows"], "space": st["search_space"],
            "champion": pop.champion.id, "served": [mb.id for mb in pop.served()],
            "decisions": len(pop.decisions), "recent_decisions": pop.decisions[-10:],
            "evaluations": self.evaluations,
        }
        self._set_member_metrics(self._board)

    def live_values(self, queue_depth=None):
        """The trainer's scrape-time gauges: {name: (help, value)}."""
        snap, model = self.snapshot, self.model
        return {
            "learnd_queue_depth": ("Train messages waiting for the trainer.",
                                   self.queue.qsize() if queue_depth is None else queue_depth),
            "learnd_model_version": ("Version of the snapshot serving predictions.",
                                     snap.version if snap is not None else 0),
            "learnd_learning_rate": ("Learning rate of the next step.",
                                     model.learning_rate if model is not None
                                     else self.config.model.get("lr", ModelSpec.lr)),
            "learnd_best_model_version": ("Model version of the best dev figure (NaN before one).",
                                          float("nan") if self.early.best_version is None
                                          else self.early.best_version),
            "learnd_early_stopped": ("1 when early stopping's patience has run out.", float(self.early.stopped)),
            "learnd_training_frozen": ("1 while training is frozen.", float(self.frozen)),
            "learnd_serving_best": ("1 while the best dev model serves instead of the latest.",
                                    float(self.serving_best)),
        }

    def evaluation_status(self):
        """The evaluation part of `status`: figures per split, diagnosis, progressive
        validation and early stopping.  The diagnosis is of the last evaluation's figures,
        with the reasons for the missing ones as they are now (a split may have filled
        since) and the task as now known."""
        return {
            "evaluation": self.last_eval,
            "diagnosis": self._diagnose(self.last_eval),
            "progressive": self.progressive.figures() if self.progressive is not None else None,
            "early_stopping": {**self.early.figures(), "metric": self._stopping_metric(),
                               "action": self.config.early_stopping_action,
                               "serving_best": self.serving_best, "frozen": self.frozen},
        }

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
        fixed = set(settings) & set(FIXED_SEARCH_SETTINGS)
        if fixed:
            raise KeyError(f"{sorted(fixed)} cannot change on a running daemon: a population is made with "
                           "them and its checkpoints, draws and decisions depend on them; change them in the "
                           "configuration of a new state dir")
        unknown = set(settings) - set(LIVE_SETTINGS) - set(LIVE_DAEMON_SETTINGS)
        if unknown:
            raise KeyError(f"unknown or not live settings {sorted(unknown)}; live: "
                           f"{', '.join(LIVE_SETTINGS + LIVE_DAEMON_SETTINGS)}")
        shared = set(settings) & (set(LIVE_SETTINGS) | set(GROUP_SETTINGS))
        if self.group is not None and shared:
            raise KeyError(f"{sorted(shared)} must be equal on every rank of the data-parallel group: set them "
                           "in every rank's configuration and restart the job")
        model_part = {k: v for k, v in settings.items() if k in LIVE_SETTINGS}
        daemon_part = {k: v for k, v in settings.items() if k in LIVE_DAEMON_SETTINGS}
        # init_from was read when the daemon started; a live change does not read it again.
        candidate = replace(self.config, init_from="", **daemon_part).validate() if daemon_part else self.config
        if self.config.searching:      # the population's space, or the one it will be made with
            space = (self.population.space if self.population is not None
                     else SearchSpace.parse(self.config.search_space or None))
            searched = (set(model_part) | (set(daemon_part) & {"replay_recency"})) & set(space.dims)
            if searched:
                raise KeyError(f"{sorted(searched)} are searched: each member of the population draws its own "
                               "from search_space")
        if model_part:
            if self.population is not None:
                # checked once before any member changes: every member, or (on a bad value) none
                ModelSpec.from_dict({**self.model.spec.to_dict(), **model_part})
                for mb in self.population.members:
                    mb.model.set(**model_part)
            elif self.model is not None:
                self.model.set(**model_part)
            else:
                replace(self.config, init_from="", model={**self.config.model, **model_part}).validate()
            self.config.model.update(model_part)
            if "lr" in model_part:
                self.drift.cancel_boost()
        for k, v in daemon_part.items():
            setattr(self.config, k, getattr(candidate, k))
        if self.population is not None and "replay_recency" in daemon_part:
            self.population.sync()
            self.population.set_replay_recency(self.config.replay_recency or None)
        if self.replay is not None:
            self.replay.batch_size = self.config.batch_size
            self.replay.ratio = self.config.replay_ratio
            self.replay.recency = self.config.replay_recency or None
            self._replay_credit = min(self._replay_credit, self._replay_credit_cap())
        self.early.patience = self.config.early_stopping_patience
        self.early.min_delta = self.config.early_stopping_min_delta
        self.metrics.bayes_error_proxy.set(self.config.bayes_error)
        if self.population is not None and {"serve", "ensemble_k"} & set(daemon_part):
            self.population.set_serving(self.config.serve, self.config.ensemble_k)
            if not self.serving_best:
                self.publish()          # the next reply comes from what now serves
            self._refresh_board()
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
        warm_up(self.config.model.get("dtype", "float32"), training=True)

    def run(self):
        try:
            with limit_blas_threads(self.config.blas_threads):
                self.warm_up()
                if self.model is not None:
                    self.ready.set()
                self._loop() if self.group is None else self._loop_group()
        except BaseException as exc:  # recorded for the server, which shuts down
            self.failure = exc
            log.exception("trainer thread failed")
        finally:
            self.stopped.set()

    def _loop(self):
        while True:
            self._run_commands()
            stopping = self.stop_requested.is_set()
            if stopping and self.leaves_backlog_in_log:
                # A bounded stop: the messages not yet consumed stay in the log (the
                # checkpoint's last_lsn is before them) and the rows consumed and not yet
                # stepped on are saved in the checkpoint's buffer; the next start trains
                # both, once.  Training them first would make the stop as long as the backlog.
                break
            try:
                item = self._dequeue(timeout=0 if stopping or self.replay_due() else 0.005)
            except queue.Empty:
                item = None
            now = time.monotonic()
            if item is not None:
                self.consume(item, now)
                # Take whatever else is waiting before stepping, so steps are full.
                while self.rebatcher is not None and len(self.rebatcher) < self.config.batch_size:
                    try:
                        self.consume(self._dequeue(), now)
                    except queue.Empty:
                        break
                if not self.ready.is_set():
                    self.ready.set()
            self._train_ready_batches(now)
            if item is None and not stopping and self.replay_due():
                self.replay_step()        # one at a time: new data is looked for between them
            self._housekeeping(now, caught_up=item is None)
            if stopping and item is None:
                break
        self._run_commands()
        if self.model is not None and not self.serving_best:
            self.publish(time.monotonic())
        self.write_checkpoint("shutdown")

    # -- one rank of a data-parallel group -------------------------------------------------
    def _loop_group(self):
        """The loop of one rank (training.parallel): one round with the other ranks per
        pass, after which every rank steps, checkpoints or stops together.  A rank steps
        on the rows it has, up to batch_size, or with weight 0 when it has fewer than 2.
        Leaving the loop is a round too, so every rank's last checkpoint is of one step."""
        last_row = time.monotonic()          # a rank that gets no rows for a linger is idle
        stepped = False
        while True:
            self._run_commands()
            stopping = self.stop_requested.is_set()
            rb = self.rebatcher
            busy = stopping or stepped or len(rb) >= self.config.batch_size
            took = self._take_waiting(0 if busy else 0.005)
            now = time.monotonic()
            if took:
                last_row = now
            linger = self.config.batch_linger_ms / 1e3
            rows = len(rb)
            ready = (rows >= self.config.batch_size or now - last_row >= linger
                     or (rows >= 2 and now - rb.oldest_time >= linger))
            agreed = self.group.agree(ready or stopping, rows >= 2, stopping,
                                      bool(self._checkpoint_waiters) or self._checkpoint_due(now))
            stepped = agreed.step
            if stepped:
                self._step(*(rb.take(min(rows, self.config.batch_size), now) if rows >= 2 else (None,) * 3))
                self._evaluate_if_due(now)
            if agreed.checkpoint:
                self._write_group_checkpoint()
            self._housekeeping(now, caught_up=not took and not stepped, checkpoints=False)
            if agreed.stop and not stepped:
                break
        self._run_commands()
        if not self.serving_best:
            self.publish(time.monotonic())
        self.write_checkpoint("shutdown")

    def _take_waiting(self, timeout):
        """Move queued messages into the rebatcher until it holds a batch; True if any came."""
        took = False
        while len(self.rebatcher) < self.config.batch_size:
            try:
                item = self._dequeue(timeout if not took else 0)
            except queue.Empty:
                break
            self.consume(item, time.monotonic())
            took = True
        if took and not self.ready.is_set():
            self.ready.set()
        return took

    def _write_group_checkpoint(self):
        """Every rank writes one at the same step; the commands that asked for it get its path."""
        waiters, self._checkpoint_waiters = self._checkpoint_waiters, []
        path = self.write_checkpoint("command" if waiters else "period")
        for fut in waiters:
            if path is None:
                fut.set_exception(OSError("checkpoint could not be written (see the daemon's log)"))
            else:
                fut.set_result({"path": path, "batches_trained": self.batches_trained})

    def request_checkpoint(self):
        """The control op: a Future of {path, batches_trained}.  In a group the checkpoint
        is every rank's, written after the next round."""
        if self.group is None:
            def write(trainer):
                path = trainer.write_checkpoint("command")
                if path is None:
                    raise OSError("checkpoint could not be written (see the daemon's log)")
                return {"path": path, "batches_trained": trainer.batches_trained}
            return self.submit(write)
        fut = Future()
        fut.set_running_or_notify_cancel()
        self.submit(lambda t: t._checkpoint_waiters.append(fut))
        return fut

    def _checkpoint_due(self, now):
        cfg = self.config
        return (cfg.checkpoint_interval_s > 0 and self._dirty_since_checkpoint
                and now - self.last_checkpoint_time >= cfg.checkpoint_interval_s)
