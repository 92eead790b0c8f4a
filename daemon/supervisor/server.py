"""`learnd serve`: startup, the ingest/control loop, and an orderly shutdown.

Threads: this one runs the ingest and control sockets; the trainer thread owns the
model; the predict thread serves snapshots; the metrics HTTP server has its own; a
handshake watcher counts refused connections (and, with CURVE, a ZAP thread checks
client keys).  Signal handlers only set flags (`should_exit`, `reload_requested`).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time

import zmq

from learnd.clients import protocol
from learnd.clients.protocol import Limits, ProtocolError
from learnd.daemon.blas import limit_blas_threads
from learnd.daemon.errors import StartupError
from learnd.daemon.ingest.budget import IngestBudget, queued_values
from learnd.daemon.ingest.checks import IngestChecker, train_fields
from learnd.daemon.ingest.idstore import IdStore
from learnd.daemon.ingest.schema import Schema
from learnd.daemon.ingest.splits import SplitAssigner
from learnd.daemon.ingest.stage import IngestStage
from learnd.daemon.log.wal import WriteAheadLog
from learnd.daemon.metrics import Metrics
from learnd.daemon.serving.broadcast import SnapshotBroadcast
from learnd.daemon.serving.latency import satisficing, satisficing_values
from learnd.daemon.serving.predictor import PredictServer
from learnd.daemon.supervisor import control as control_ops
from learnd.daemon.supervisor import sockets, statedir
from learnd.daemon.supervisor.curve import CurveServer, HandshakeWatcher
from learnd.daemon.supervisor.endpoint import ControlEndpoint
from learnd.daemon.stopping import stop_http, stop_threads
from learnd.daemon.supervisor.httpd import bind_metrics, serve_in_thread
from learnd.daemon.training.checkpoints import CheckpointStore, decode
from learnd.daemon.training.trainer import Trainer
from learnd.engine.state import write_atomic

log = logging.getLogger("learnd.server")

ENDPOINTS_FILE = "endpoints.json"
EXIT_PORT_IN_USE = sockets.EXIT_PORT_IN_USE
EXIT_STATE_DIR = statedir.EXIT_STATE_DIR
EXIT_TRAINER_FAILED = 5


class Server:
    IDLE_POLL_MS = 100
    BUSY_POLL_MS = 2
    DRAIN_TIMEOUT_S = 60.0
    REJECT_LOG_INTERVAL_S = 10.0

    def __init__(self, config, registry=None, install_signals=True, group=None):
        self.config = config
        self.group = group           # training.parallel.Group: this process is one rank of it
        self.metrics = Metrics(registry)
        self.install_signals = install_signals
        self.should_exit = False
        self.reload_requested = False
        self.started = time.monotonic()
        self.limits = Limits(max_header_bytes=config.max_header_bytes,
                             max_array_bytes=config.max_array_bytes,
                             max_message_bytes=config.max_message_bytes,
                             max_rows=config.max_rows)
        self.schema = Schema(config.model.get("input_dim"), config.model.get("task"),
                             config.model.get("n_outputs"))
        self.id_store = IdStore(config.id_store_size, config.id_ttl_s)
        self.ctx = None
        self.trainer = None
        self.predictor = None
        self.wal = None
        self.http = None
        self.curve = None
        self.state_lock = None       # the state dir's lock (statedir), from start to stop
        self.handshakes = None
        self._loop_tick = time.monotonic()
        self._rejects_since_log = 0
        self._last_reject_log = 0.0
        self.bound = {}
        self.control_ops = control_ops.Control(self)

    # -- startup ---------------------------------------------------------------------------
    def startup(self):
        cfg = self.config
        if cfg.curve_server_secret:
            # Before anything slow (a log replay): a bad key file is an operator's typo.
            self.curve = CurveServer(cfg)
        self._prepare_state_dir()
        self.checkpoints = CheckpointStore(cfg.state_dir, keep=cfg.checkpoint_keep)
        if cfg.wal:
            self.wal = WriteAheadLog(os.path.join(cfg.state_dir, "wal")).open()
        self.trainer = Trainer(cfg, self.schema, self.metrics, self.checkpoints, self.wal)
        self.trainer.group = self.group
        self._restore()
        self.metrics.add_live_collector(self._live_values)
        self.ctx = zmq.Context()
        if self.curve is not None:
            self.curve.start(self.ctx)
        self.budget = IngestBudget.from_config(cfg)
        self.ingest = self._bind(zmq.ROUTER, cfg.ingest, "ingest", self.budget.configure, self.budget.max_message)
        self.control = self._bind(zmq.ROUTER, cfg.control, "control")
        self.ingest_stage = IngestStage(self.ingest, self.checker, self.accepted, self.wal, self.metrics,
                                        self.limits, cfg.wal_fsync_ms, self.trainer.enqueue, self._reject)
        self.control_endpoint = ControlEndpoint(self.control, self.control_ops.handle, self.limits,
                                                self.metrics.rejected, self._reject)
        if cfg.predict_workers > 1:
            log.warning("predict_workers = %d is a setting of the process tree; the single process "
                        "answers predictions from one thread", cfg.predict_workers)
        predict = self._bind(zmq.ROUTER, cfg.predict, "predict")
        watched = {"ingest": self.ingest, "predict": predict, "control": self.control}
        # In a data-parallel group every rank holds the same model; rank 0 alone publishes
        # it, so followers see one stream of versions.
        if self.group is None or self.group.rank == 0:
            watched["snapshots"] = self._bind(zmq.XPUB, cfg.snapshots, "snapshots", SnapshotBroadcast.configure)
            self.trainer.broadcast = SnapshotBroadcast(watched["snapshots"])
        self.handshakes = HandshakeWatcher(self.ctx, watched, self.metrics.auth_failures, self.curve)
        self._show_allowed_keys()
        self.http, self.bound["metrics"] = bind_metrics(cfg, self.metrics.registry, self.healthy, self.ready)
        self.predictor = PredictServer(predict, self.trainer, self.metrics, self.limits, self.id_store,
                                       cfg.predict_batch_window_us, cfg.predict_batch_max_rows,
                                       cfg.predict_spin_us, max_tags=cfg.max_tags)
        self.trainer.start()
        self.predictor.start()
        self.handshakes.start()
        serve_in_thread(self.http)
        log.info("metrics on %s", self.bound["metrics"])
        # Where everything listens, for operators and tools (ports may have been chosen by
        # the OS); written last, so whoever reads it finds every part running.
        write_atomic(os.path.join(cfg.state_dir, ENDPOINTS_FILE),
                     json.dumps({**self.bound, "pid": os.getpid()}, indent=1).encode())
        if self.install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_reload_signal)
        log.info("learnd started (pid %d), state in %s", os.getpid(), os.path.abspath(cfg.state_dir))

    def _prepare_state_dir(self):
        self.state_lock = statedir.prepare(self.config.state_dir)

    def _restore(self):
        def failed(path, exc):
            self.metrics.checkpoint_load_failures.inc()

        if self.group is None:
            payload, path = self.checkpoints.load_newest(lambda p: (self.trainer.restore(p), p)[1], failed)
        else:
            path = self._restore_group_checkpoint()
        if path is not None:
            log.info("resumed from %s: %d batches, %d samples trained", path,
                     self.trainer.batches_trained, self.trainer.samples_trained)
            self.trainer.apply_configured_settings()
        model = self.trainer.model
        dtype = model.dtype if model is not None else self.config.model.get("dtype", "float32")
        cfg = self.config
        splitter = SplitAssigner((1.0 - cfg.dev_fraction - cfg.test_fraction, cfg.dev_fraction,
                                  cfg.test_fraction), cfg.train_dev_fraction)
        self.checker = IngestChecker(self.schema, dtype, self.id_store, self.limits, cfg.model,
                                     splitter, self.metrics.delayed_labels, cfg.max_abs_value, cfg.max_tags)
        self.accepted = self.trainer.dedupe.copy()
        if self.wal is not None:
            # Numbers must keep rising past what the checkpoint consumed, even if the log
            # segments holding those records are gone.
            self.wal.last_lsn = max(self.wal.last_lsn, self.trainer.last_lsn)
            self._replay_wal()

    def _restore_group_checkpoint(self):
        """A rank resumes from the step every rank holds (parallel.Group), and has its
        model before the first round even without a checkpoint."""
        path = self.group.agree_on_checkpoint(self.checkpoints)
        if path is not None:
            with open(path, "rb") as f:
                # A checkpoint that read a moment ago and fails now is a disk fault, not a
                # choice to make behind the other ranks' backs: the rank stops.
                try:
                    self.trainer.restore(decode(f.read()))
                except (ValueError, KeyError, TypeError) as exc:
                    raise StartupError(f"checkpoint {path} cannot be restored: {exc}", 1) from None
        if self.trainer.model is None:
            self.trainer._create_model()
        return path

    def _replay_wal(self):
        """Train again what the log holds past the checkpoint: every acknowledged row once.

        The steps run under the trainer's BLAS thread limit: OpenBLAS may round a GEMM
        differently with another thread count, and a replayed step must equal the live one.
        """
        with limit_blas_threads(self.config.blas_threads):
            replayed = self._replay_wal_records()
        if replayed:
            self.metrics.wal_replayed.inc(replayed)
            log.info("replayed %d logged messages newer than the checkpoint", replayed)
            self.trainer.publish()
            if self.group is None:   # a rank's checkpoints are the group's, written together
                self.trainer.write_checkpoint("after log replay")

    def _replay_wal_records(self):
        replayed = 0
        for record in self.wal.replay(self.trainer.last_lsn):
            try:
                message = protocol.decode([b"", *record.frames], self.limits)
                producer, seq, _ = train_fields(message.header)
                if self.accepted.seen(producer, seq):
                    continue
                item = self.checker.logged_item(message, record)
            except Exception as exc:  # it passed these checks when it was logged
                log.error("write-ahead log record %d no longer passes its checks: %s", record.lsn, exc)
                continue
            self.accepted.add(producer, seq)
            now = time.monotonic()
            self.trainer.consume(item, now)
            if self.group is None:   # a rank's rows wait for the group's rounds
                self.trainer._train_ready_batches(now)
            replayed += 1
        return replayed

    def _bind(self, kind, address, name, configure=None, max_message_bytes=None):
        sock, self.bound[name] = sockets.bind(self.ctx, kind, address, name,
                                              max_message_bytes or self.config.max_message_bytes,
                                              self.curve, configure)
        return sock

    def _on_signal(self, signum, frame):
        self.should_exit = True

    def _on_reload_signal(self, signum, frame):
        self.reload_requested = True

    def _reload(self):
        """SIGHUP: read the CURVE allowlists again; nothing else is reloaded."""
        self.reload_requested = False
        if self.curve is None:
            log.info("SIGHUP: CURVE is off, nothing to reload")
            return
        self.curve.reload()
        self._show_allowed_keys()

    def _show_allowed_keys(self):
        if self.curve is not None:
            for name, n in self.curve.allowed_keys().items():
                self.metrics.auth_allowed_keys.labels(name).set(n)

    # -- health ---------------------------------------------------------------------------------
    def healthy(self):
        return (not self.trainer.stopped.is_set() and self.predictor.is_alive()
                and time.monotonic() - self._loop_tick < 10.0)

    def ready(self):
        return self.healthy() and self.trainer.ready.is_set() and self.trainer.snapshot is not None

    def status(self):
        return control_ops.clean({
            **self.trainer.status_part(),
            "uptime_seconds": time.monotonic() - self.started,
            "ready": self.ready(),
            "wal": self.wal is not None,
            "curve": self.curve is not None,
            "satisficing": satisficing(self.predictor.latencies, self.config.predict_p99_bound_ms / 1e3)
            if self.predictor is not None else None,
            "bound": dict(self.bound),
            "ingest": {"queued_bytes": self.queued_bytes(), **self.budget.status()},
        })

    def queued_bytes(self):
        """Bytes of the messages read by ingest and not yet taken into training: those
        waiting for the log's fsync and those in the trainer's queue."""
        return self.ingest_stage.pending_bytes + self.trainer.queued_bytes

    def _live_values(self):
        return {
            **self.trainer.live_values(),
            "learnd_uptime_seconds": ("Seconds since the daemon started.", time.monotonic() - self.started),
            "learnd_ready": ("1 when the model exists and its kernels are compiled.", float(self.ready())),
            "learnd_delayed_label_store_rows": ("Inputs kept for delayed labels.", len(self.id_store)),
            **(queued_values(self.queued_bytes(), self.budget) if hasattr(self, "ingest_stage") else {}),
            **self._satisficing_values(),
        }

    def _satisficing_values(self):
        if self.predictor is None:
            return {}
        return satisficing_values(self.predictor.latencies, self.config.predict_p99_bound_ms / 1e3)

    # -- the loop -------------------------------------------------------------------------------
    def main_loop(self):
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.ingest, zmq.POLLIN)
        reading_ingest = True
        while not self.should_exit:
            self._loop_tick = time.monotonic()
            if self.reload_requested:
                self._reload()
            if self.trainer.stopped.is_set():
                if self.group is not None and self.trainer.failure is None:
                    log.info("the data-parallel group stopped; shutting down")
                else:
                    log.error("the trainer thread stopped; shutting down")
                break
            stage = self.ingest_stage
            room = self.trainer.queue.maxsize - self.trainer.queue.qsize() - len(stage.pending)
            if self.queued_bytes() >= self.budget.limit:    # the memory bound (ingest.budget)
                room = 0
            room = max(room, 0)
            if (room > 0) != reading_ingest:
                # A full queue stops reads; ZeroMQ's high-water mark then pushes back on producers.
                reading_ingest = room > 0
                if not reading_ingest:
                    self.metrics.ingest_paused.inc()
                poller.modify(self.ingest, zmq.POLLIN if reading_ingest else 0)
            busy = stage.pending or self.control_endpoint.waiting or not reading_ingest
            events = dict(poller.poll(self.BUSY_POLL_MS if busy else self.IDLE_POLL_MS))
            if self.control in events:
                self._drain(self.control, self.control_endpoint.on_message, 100)
            if self.ingest in events and reading_ingest:
                self._drain(self.ingest, stage.handle, max(room, 0),
                            lambda: self.queued_bytes() >= self.budget.limit)
            stage.flush()
            self.control_endpoint.answer_ready()
            self._log_rejects()

    def _drain(self, sock, handler, limit, full=None):
        """Handle up to `limit` waiting messages, stopping early once full() says so."""
        for _ in range(limit):
            if full is not None and full():
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                handler(frames)
            except Exception as exc:  # a bug or a full disk must not stop the daemon: answer, count, log
                log.exception("failed to handle a message")
                self._reject(sock, frames[0], ProtocolError("internal", f"{type(exc).__name__}: {exc}"), {})

    def _reply(self, sock, identity, header, arrays=None):
        sock.send_multipart([identity, *protocol.encode(header, arrays)], copy=False)

    def _reject(self, sock, identity, exc, echo):
        self.metrics.rejected.labels(exc.code).inc()
        self._rejects_since_log += 1
        self._reply(sock, identity, protocol.error(exc.code, exc.message, **echo))

    def _log_rejects(self):
        now = time.monotonic()
        if self._rejects_since_log and now - self._last_reject_log >= self.REJECT_LOG_INTERVAL_S:
            log.warning("%d messages rejected in the last %.0f s (learnd_rejected_total has the reasons)",
                        self._rejects_since_log, now - self._last_reject_log if self._last_reject_log else 0)
            self._rejects_since_log = 0
            self._last_reject_log = now

    # -- shutdown ----------------------------------------------------------------------------------
    def shutdown(self):
        log.info("shutting down: draining the training queue")
        stage = getattr(self, "ingest_stage", None)
        if stage is not None and stage.pending:
            stage.flush(force=True)
        if self.trainer is not None and self.trainer.is_alive():
            self.trainer.stop_requested.set()
            self.trainer.stopped.wait(self.DRAIN_TIMEOUT_S)
            if getattr(self, "control_endpoint", None) is not None:
                self.control_endpoint.answer_ready()
        stop_threads(self.predictor, self.handshakes)
        stop_http(self.http)
        if self.trainer is not None and self.trainer.broadcast is not None:
            self.trainer.broadcast.socket.close(linger=0)
        for name in ("ingest", "control"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        if self.wal is not None:
            self.wal.close()
        if self.curve is not None:
            self.curve.stop()
        if self.ctx is not None:
            self.ctx.term()
        if self.state_lock is not None:
            os.close(self.state_lock)
            self.state_lock = None
        log.info("learnd stopped")

    def run(self):
        """startup, main loop, shutdown; returns the process exit code."""
        self.startup()
        try:
            self.main_loop()
        finally:
            self.shutdown()
        return EXIT_TRAINER_FAILED if self.trainer.failure is not None else 0
