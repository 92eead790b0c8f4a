"""`learnd follow --from ADDR`: a stateless serving replica of a trainer.

A follower subscribes to a trainer's snapshots socket and answers the predict protocol
from the newest snapshot it has received, with the daemon's own predict thread
(serving.predictor), so replies, version numbers and error codes are the daemon's.  It
holds no state on disk: start as many as the predict load needs, behind any TCP load
balancer.

Threads: this one reads the snapshots and the control socket; the predict thread
answers requests; the metrics HTTP server has its own; a handshake watcher counts
refused connections (and, with CURVE, a ZAP thread checks client keys).  ZeroMQ
reconnects the SUB socket by itself when the trainer restarts, and the restarted
trainer sends its current version to the new subscription; meanwhile the follower
serves the version it holds and reports the lag (serving.subscription).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time

import zmq

from learnd.clients import handshake
from learnd.clients.keys import KeyFileError, load_public, load_secret
from learnd.clients.protocol import Limits, ProtocolError
from learnd.engine.state import write_atomic
from learnd.engine.warm import warm_up

from learnd.daemon.blas import limit_blas_threads
from learnd.daemon.errors import StartupError
from learnd.daemon.metrics import FollowerMetrics
from learnd.daemon.serving.latency import satisficing, satisficing_values
from learnd.daemon.serving.predictor import PredictServer
from learnd.daemon.serving.subscription import SnapshotSubscription
from learnd.daemon.supervisor import control as control_ops
from learnd.daemon.supervisor import sockets
from learnd.daemon.supervisor.curve import EXIT_KEYS, CurveServer, HandshakeWatcher
from learnd.daemon.supervisor.endpoint import ControlEndpoint
from learnd.daemon.stopping import stop_http, stop_threads
from learnd.daemon.supervisor.httpd import bind_metrics, serve_in_thread

log = logging.getLogger("learnd.follower")

EXIT_PORT_IN_USE = sockets.EXIT_PORT_IN_USE
SNAPSHOT_RCVHWM = 4       # snapshots buffered here before the trainer's own limit drops newer ones
LOOP_STALL_S = 10.0       # /healthz fails when this loop stops turning
REFUSED_RETRY_S = 5.0     # a trainer that refused this follower's key is tried again after this
REFUSED_LOG_S = 60.0


class NoIdStore:
    """Delayed labels need the trainer's ingest process, which keeps the inputs of predict
    requests that carry ids: a follower answers such requests and keeps nothing."""

    def __init__(self):
        self.dropped = 0

    def put(self, ids, x, tags=None):
        if self.dropped == 0:
            log.warning("predict requests with ids reach a follower: their inputs are not kept for "
                        "delayed labels (send those to the trainer's predict socket)")
        self.dropped += len(ids)


class Follower:
    POLL_MS = 50

    def __init__(self, config, source, registry=None, install_signals=True, endpoints_file=None):
        self.config = config
        self.source = source
        self.endpoints_file = endpoints_file
        self.install_signals = install_signals
        self.metrics = FollowerMetrics(registry)
        self.should_exit = False
        self.reload_requested = False
        self.started = time.monotonic()
        self.limits = Limits(max_header_bytes=config.max_header_bytes, max_array_bytes=config.max_array_bytes,
                             max_message_bytes=config.max_message_bytes, max_rows=config.max_rows)
        # A snapshot is one array as large as the whole model: its only bound is the message's.
        self.subscription = SnapshotSubscription(Limits(max_header_bytes=config.max_header_bytes,
                                                        max_array_bytes=config.max_message_bytes,
                                                        max_message_bytes=config.max_message_bytes,
                                                        max_rows=config.max_message_bytes))
        self.ctx = None
        self.curve = None
        self.sub = None
        self.sub_events = None
        self.refused_at = None       # monotonic time the trainer last refused our key
        self._last_refused_log = float("-inf")
        self.predictor = None
        self.http = None
        self.handshakes = None
        self.bound = {}
        self._loop_tick = time.monotonic()
        self._trainer_keys = None

    # -- startup ---------------------------------------------------------------------------
    def startup(self):
        cfg = self.config
        if cfg.follower_server_key:
            try:
                self._trainer_keys = (load_public(cfg.follower_server_key), *load_secret(cfg.follower_client_key))
            except KeyFileError as exc:
                raise StartupError(f"follower CURVE keys: {exc}", EXIT_KEYS) from None
        if cfg.curve_server_secret:
            self.curve = CurveServer(cfg)
        # One BLAS thread, as a predict worker has: the same GEMMs round the same way, so
        # a follower's answers equal the trainer's bit for bit.
        limit_blas_threads(1)
        # Before the first request: the dtype of the configuration (float32 unless set);
        # a snapshot of another dtype warms its kernels as it arrives.
        self._warmed = {cfg.model.get("dtype", "float32")}
        warm_up(*self._warmed, training=False)
        self.ctx = zmq.Context()
        if self.curve is not None:
            self.curve.start(self.ctx)
        predict = self._bind(zmq.ROUTER, cfg.predict, "predict")
        self.control = self._bind(zmq.ROUTER, cfg.control, "control")
        self.control_endpoint = ControlEndpoint(self.control, self._handle, self.limits, self.metrics.rejected)
        self._subscribe()
        self.handshakes = HandshakeWatcher(self.ctx, {"predict": predict, "control": self.control},
                                           self.metrics.auth_failures, self.curve)
        if self.curve is not None:
            for name, n in self.curve.allowed_keys().items():
                if name in ("predict", "control"):
                    self.metrics.auth_allowed_keys.labels(name).set(n)
        self.http, self.bound["metrics"] = bind_metrics(cfg, self.metrics.registry, self.healthy, self.ready)
        self.bound["from"] = self.source
        self.metrics.add_live_collector(self._live_values)
        self.predictor = PredictServer(predict, self.subscription, self.metrics, self.limits, NoIdStore(),
                                       cfg.predict_batch_window_us, cfg.predict_batch_max_rows,
                                       cfg.predict_spin_us, max_tags=cfg.max_tags)
        self.predictor.start()
        self.handshakes.start()
        serve_in_thread(self.http)
        if self.endpoints_file:
            write_atomic(self.endpoints_file, json.dumps({**self.bound, "pid": os.getpid()}, indent=1).encode())
        if self.install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_reload_signal)
        log.info("learnd follower started (pid %d): following %s, serving %s", os.getpid(), self.source,
                 {k: v for k, v in self.bound.items() if k != "from"})

    def _bind(self, kind, address, name):
        sock, self.bound[name] = sockets.bind(self.ctx, kind, address, name, self.config.max_message_bytes,
                                              self.curve)
        return sock

    def _subscribe(self):
        """A SUB socket to the trainer's snapshots (a fresh one after a refused key)."""
        self._close_subscription()
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, SNAPSHOT_RCVHWM)
        sub.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        if self._trainer_keys is not None:
            sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = self._trainer_keys
        self.sub_events = handshake.monitor(sub, self.ctx)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.source)
        self.sub = sub
        self.refused_at = None
        self.poller = zmq.Poller()
        for sock in (self.sub, self.sub_events, self.control):
            self.poller.register(sock, zmq.POLLIN)

    def _close_subscription(self):
        if self.sub is not None:
            self.sub.disable_monitor()
            self.sub.close(linger=0)
            self.sub_events.close(linger=0)
            self.sub = self.sub_events = None

    def _on_signal(self, signum, frame):
        self.should_exit = True

    def _on_reload_signal(self, signum, frame):
        self.reload_requested = True

    # -- the loop --------------------------------------------------------------------------
    def main_loop(self):
        while not self.should_exit:
            self._loop_tick = now = time.monotonic()
            if self.reload_requested:
                self.reload_requested = False
                if self.curve is not None:
                    self.curve.reload()
            if not self.predictor.is_alive():
                log.error("the predict thread stopped; the follower exits")
                break
            events = dict(self.poller.poll(self.POLL_MS))
            if self.sub in events:
                self._read_snapshots()
            if self.sub_events in events:
                self._read_handshakes(now)
            if self.control in events:
                self._drain_control()
            self.control_endpoint.answer_ready()
            if self.refused_at is not None and now - self.refused_at >= REFUSED_RETRY_S:
                self._subscribe()
            elif self.subscription.wants_current(now):
                # Subscribing again makes the trainer send its current snapshot (it
                # answers every subscription so): one we missed on the way.
                self.sub.setsockopt(zmq.SUBSCRIBE, b"")

    def _read_snapshots(self):
        for _ in range(16):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            held = self.subscription.held
            try:
                op, delay = self.subscription.on_message(frames)
            except ProtocolError as exc:
                self.metrics.follower_messages.labels("refused").inc()
                log.error("a message from the trainer was refused: %s: %s", exc.code, exc.message)
                continue
            if op == "heartbeat":
                self.metrics.follower_messages.labels("heartbeat").inc()
            elif delay is None:
                self.metrics.follower_messages.labels("duplicate").inc()
            else:
                self.metrics.follower_messages.labels("applied").inc()
                self.metrics.follower_snapshot_bytes.inc(len(frames[-1].buffer))
                self.metrics.follower_delay.observe(delay)
                dtype = self.subscription.snapshot.dtype.name
                if dtype not in self._warmed:
                    self._warmed.add(dtype)
                    warm_up(dtype, training=False)
                if held is None or held.publisher != self.subscription.held.publisher:
                    log.info("serving version %d from %s", self.subscription.held.version, self.source)

    def _read_handshakes(self, now):
        failure = handshake.read_event(self.sub_events)
        if failure in (handshake.KEY_REFUSED, handshake.MECHANISM_MISMATCH):
            self.refused_at = now
            if now - self._last_refused_log >= REFUSED_LOG_S:
                self._last_refused_log = now
                log.error("the trainer at %s refused this follower's handshake (%s): check "
                          "follower_server_key / follower_client_key and the trainer's curve_clients_dir; "
                          "trying again every %.0f s", self.source, failure, REFUSED_RETRY_S)

    def _drain_control(self):
        for _ in range(100):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self.control_endpoint.on_message(frames)
            except Exception as exc:  # answer, count, log: a bug must not stop serving
                log.exception("control op failed")
                self.control_endpoint.reject(frames[0], ProtocolError("internal", f"{type(exc).__name__}: {exc}"),
                                             {})

    # -- status, health --------------------------------------------------------------------
    def _handle(self, message):
        if message.op != "status":
            raise ProtocolError("unknown_op", f"a follower's control socket answers 'status', not {message.op!r}")
        if message.arrays:
            raise ProtocolError("bad_array", "control messages carry no arrays")
        return self.status()

    def state(self, now=None):
        """waiting (no snapshot yet), current, or stale (further behind than follower_max_lag_s)."""
        if self.subscription.held is None:
            return "waiting"
        _, seconds = self.subscription.lag(now)
        return "stale" if seconds > self.config.follower_max_lag_s else "current"

    def healthy(self):
        return self.predictor.is_alive() and time.monotonic() - self._loop_tick < LOOP_STALL_S

    def ready(self):
        return self.healthy() and self.state() == "current"

    def status(self):
        now = time.monotonic()
        sub = self.subscription
        versions, seconds = sub.lag(now)
        snap = sub.snapshot
        return control_ops.clean({
            "role": "follower", "from": self.source, "state": self.state(now), "ready": self.ready(),
            "model_version": sub.held.version if sub.held else None,
            "trainer_version": sub.newest.version if sub.newest else None,
            "lag_versions": versions, "lag_seconds": seconds,
            "follower_max_lag_s": self.config.follower_max_lag_s,
            "seconds_since_trainer": now - sub.heard_at if sub.heard_at is not None else None,
            "trainer_refused": self.refused_at is not None,
            "task": snap.task if snap else None, "input_dim": snap.input_dim if snap else None,
            "n_outputs": snap.n_outputs if snap else None,
            "uptime_seconds": now - self.started, "requests_answered": self.predictor.latencies.count,
            "satisficing": satisficing(self.predictor.latencies, self.config.predict_p99_bound_ms / 1e3),
            "curve": self.curve is not None, "bound": dict(self.bound),
        })

    def _live_values(self):
        sub = self.subscription
        versions, seconds = sub.lag()
        return {
            "learnd_follower_lag_versions": ("Versions the follower is behind its trainer's newest (NaN "
                                             "before its first snapshot).", versions),
            "learnd_follower_lag_seconds": ("Seconds the follower is behind its trainer (NaN before its "
                                            "first snapshot).", seconds),
            "learnd_model_version": ("Version of the snapshot serving predictions.",
                                     sub.held.version if sub.held else float("nan")),
            "learnd_uptime_seconds": ("Seconds since the process started.", time.monotonic() - self.started),
            "learnd_ready": ("1 when the follower holds a snapshot no older than follower_max_lag_s.",
                             float(self.ready())),
            **satisficing_values(self.predictor.latencies, self.config.predict_p99_bound_ms / 1e3),
        }

    # -- shutdown ------------------------------------------------------------------------------
    def shutdown(self):
        stop_threads(self.predictor, self.handshakes)
        stop_http(self.http)
        if self.ctx is not None:
            self._close_subscription()
            if getattr(self, "control", None) is not None:
                self.control.close(linger=0)
        if self.curve is not None:
            self.curve.stop()
        if self.ctx is not None:
            self.ctx.term()
        log.info("learnd follower stopped")

    def run(self):
        """startup, main loop, shutdown; returns the process exit code."""
        try:
            self.startup()
            self.main_loop()
        finally:
            self.shutdown()
        return 0
