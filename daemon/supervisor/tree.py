"""`learnd serve`: the supervisor of the process tree.

    producer -> ingest -> write-ahead log -> trainer -> snapshot (shared memory)
             -> predict worker(s) -> client;   control -> supervisor -> the child that owns
             the answer;   metrics -> one exposition for all of them

The supervisor binds the control socket and the metrics server, starts one child process
per stage (supervisor/child.py), writes endpoints.json once every child serves, forwards
control ops, and restarts a child that dies (the others keep serving: the log holds every
acknowledged row, and the trainer reads on from its checkpoint's position).  It does no
stage's work itself: it starts, watches, restarts and forwards.

Exit codes beside the single-process daemon's: 7 when a child keeps dying
(`child_restart_limit` deaths within `child_restart_window_s`).
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time

import zmq
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from learnd.clients import protocol
from learnd.clients.protocol import Limits, ProtocolError
from learnd.daemon.errors import StartupError
from learnd.daemon.metrics import Metrics
from learnd.daemon.serving.latency import combined_satisficing
from learnd.daemon.serving.snapshots import SnapshotReader
from learnd.daemon.supervisor import control as control_ops
from learnd.daemon.supervisor import sockets
from learnd.daemon.supervisor.child import SUPERVISOR_PID_ENV
from learnd.daemon.supervisor.collect import TreeCollector
from learnd.daemon.supervisor.curve import CurveServer, HandshakeWatcher
from learnd.daemon.supervisor.endpoint import ControlEndpoint
from learnd.daemon.supervisor.httpd import bind_metrics, serve_in_thread
from learnd.daemon.supervisor.proxy import PredictProxy
from learnd.daemon.stopping import stop_http, stop_threads
from learnd.daemon.supervisor.rundir import RunDir
from learnd.daemon.supervisor import statedir
from learnd.daemon.supervisor.server import ENDPOINTS_FILE
from learnd.engine.state import write_atomic

log = logging.getLogger("learnd.supervisor")

EXIT_CHILD_FAILING = 7       # child_restart_limit deaths of one child within child_restart_window_s
BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
START_TIMEOUT_S = 120.0      # a cold Numba cache compiles every kernel first
STOP_TIMEOUT_S = 60.0
# status's `ingest`: the memory bound (ingest.budget) and what ingest holds against it.
INGEST_STATUS_KEYS = ("queued_bytes", "max_queued_bytes", "limit_bytes", "zmq_rcvhwm", "zmq_max_message_bytes")
# Live settings the predict workers apply (the rest are the trainer's).
PREDICT_SETTINGS = ("predict_p99_bound_ms",)
FORWARD_TIMEOUT_S = 60.0
LOOP_STALL_S = 10.0          # /healthz fails when the supervisor's loop stops turning
# Which child binds which public socket.
PUBLIC = {"ingest": "ingest", "trainer": "snapshots"}


class Child:
    """One child process: how to start it, its process, its deaths."""

    def __init__(self, role, run, binds, state_lock):
        self.role = role
        self.state_lock = state_lock     # the state dir's lock, held by every process of the tree
        self.rundir = run
        self.binds = binds           # {config key: address}; concrete once first bound
        self.proc = None
        self.started = 0.0
        self.deaths = collections.deque()
        self.restarts = 0
        self.restart_at = None       # monotonic time of the next start, after a death
        self.starting = False        # started, not yet serving
        self.down_since = None       # monotonic time it died, until it serves again

    def start(self):
        argv = [sys.executable, "-m", "learnd.daemon.supervisor.child", self.role, self.rundir.path,
                *[f"{k}={v}" for k, v in self.binds.items()]]
        self.proc = subprocess.Popen(argv, env={**os.environ, SUPERVISOR_PID_ENV: str(os.getpid())},
                                     pass_fds=(self.state_lock,))
        self.started = time.monotonic()
        self.restart_at = None
        self.starting = True

    def serving_info(self):
        """The info this process wrote once serving, or None while it starts; raises
        StartupError with the child's own message and exit code if it could not start."""
        info = self.rundir.read_info(self.role)
        if info is None or info.get("pid") != self.proc.pid:
            return None
        if "error" in info:
            self.proc.wait(STOP_TIMEOUT_S)
            raise StartupError(info["error"], info["exit_code"])
        self.starting = False
        self.down_since = None
        return info

    def wait_serving(self, timeout):
        """The child's info once it serves; raises StartupError if it exits or hangs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.serving_info()
            if info is not None:
                return info
            if self.proc.poll() is not None:
                raise StartupError(f"the {self.role} process exited with {self.proc.returncode} "
                                   f"while starting", self.proc.returncode or 1)
            time.sleep(0.02)
        raise StartupError(f"the {self.role} process did not start in {timeout:.0f} s", 1)

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def serving(self):
        """Alive and past its start: its control socket answers."""
        return self.alive and not self.starting

    @property
    def state(self):
        return "serving" if self.serving else "starting" if self.alive else "down"


class Supervisor:
    POLL_MS = 50

    def __init__(self, config, registry=None, install_signals=True):
        self.config = config
        self.install_signals = install_signals
        self.should_exit = False
        self.reload_requested = False
        self.exit_code = 0
        self.started = time.monotonic()
        self.limits = Limits(max_header_bytes=config.max_header_bytes, max_array_bytes=config.max_array_bytes,
                             max_message_bytes=config.max_message_bytes, max_rows=config.max_rows)
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The supervisor's own counters (rejected control messages, refused handshakes on
        # the control socket), merged into the one exposition like a child's.
        self.metrics = Metrics(CollectorRegistry())
        self.child_restarts = Counter("learnd_child_restarts_total",
                                      "Child processes restarted after they died, by role.", ["role"], registry=r)
        self.collect_failures = Counter("learnd_metrics_collect_failures_total",
                                        "Scrapes a child did not answer in time, by role.", ["role"], registry=r)
        self.usage = {}              # role -> (CPU seconds, resident bytes), read at scrape time
        r.register(_UsageCollector(self.usage))
        self.children = {}
        self.bound = {}
        self.pending = {}            # request id -> _Pending
        self._ids = itertools.count(1)
        self.ctx = None
        self.http = None
        self.curve = None
        self.proxy = None            # supervisor/proxy.PredictProxy with several predict workers
        self.public = {}             # {name: socket} of the public sockets the supervisor binds
        self.state_lock = None       # the state dir's lock (statedir), from start to stop
        self.rundir = None
        self.loop_beat = time.monotonic()   # the main loop's last turn, for /healthz

    # -- startup ---------------------------------------------------------------------------
    def startup(self):
        cfg = self.config
        if cfg.curve_server_secret:
            self.curve = CurveServer(cfg)
        # Held until the last child exits: the children inherit it (statedir).
        self.state_lock = statedir.prepare(cfg.state_dir)
        self.rundir = RunDir.for_state_dir(cfg.state_dir).create()
        self.rundir.write_config(cfg)
        self.ctx = zmq.Context()
        if self.curve is not None:
            self.curve.start(self.ctx)
        self.control, self.bound["control"] = sockets.bind(self.ctx, zmq.ROUTER, cfg.control, "control",
                                                           cfg.max_message_bytes, self.curve)
        self.endpoint = ControlEndpoint(self.control, self._handle, self.limits, self.metrics.rejected)
        self.public["control"] = self.control
        roles = ["ingest", "trainer"] + [f"predict-{i}" for i in range(cfg.predict_workers)]
        # One worker binds the predict socket itself; several connect behind the
        # supervisor's proxy, which binds it once (supervisor/proxy.py).
        if cfg.predict_workers > 1:
            self.proxy = PredictProxy(self.ctx, cfg.predict, self.rundir.predict_backend, cfg.max_message_bytes,
                                      self.curve)
            self.bound["predict"] = self.proxy.endpoint
            self.public["predict"] = self.proxy.frontend
        binds = {"ingest": {"ingest": cfg.ingest}, "trainer": {"snapshots": cfg.snapshots},
                 **{r: {} if self.proxy is not None else {"predict": cfg.predict}
                    for r in roles if r.startswith("predict-")}}
        self.links = {}
        # Ingest first: it creates the log and the positions the trainer opens.  Then the
        # trainer and the predict workers side by side (each start is an interpreter, the
        # Numba import and the cache load: about half a second).
        for stage in (roles[:1], roles[1:]):
            for role in stage:
                self.children[role] = Child(role, self.rundir, binds[role], self.state_lock)
                self.children[role].start()
            for role in stage:
                child = self.children[role]
                info = child.wait_serving(START_TIMEOUT_S)
                for name, address in info["bound"].items():
                    child.binds[name] = address       # a restart binds the same port again
                    self.bound[name] = address
                self._link(role)
        self.registry.register(TreeCollector(self.ctx, lambda: {r: self.rundir.control(r) for r, c in
                                                                 self.children.items() if c.serving},
                                             self.collect_failures, self.metrics.registry))
        # The monitors are set before the proxy thread owns its socket.
        self.handshakes = HandshakeWatcher(self.ctx, self.public, self.metrics.auth_failures, self.curve)
        self.handshakes.start()
        if self.proxy is not None:
            self.proxy.start()
        self._show_allowed_keys()
        self.metrics.add_live_collector(lambda: {
            "learnd_uptime_seconds": ("Seconds since the daemon started.", time.monotonic() - self.started),
            "learnd_ready": ("1 when the model exists and its kernels are compiled.", float(self.ready())),
        })
        self._snapshots = SnapshotReader(self.rundir.snapshots)
        self.http, self.bound["metrics"] = bind_metrics(cfg, self.registry, self.healthy, self.ready)
        serve_in_thread(self.http)
        write_atomic(os.path.join(cfg.state_dir, ENDPOINTS_FILE),
                     json.dumps({**self.bound, "pid": os.getpid()}, indent=1).encode())
        if self.install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_reload_signal)
        log.info("learnd started (supervisor pid %d; %s), state in %s", os.getpid(),
                 ", ".join(f"{r} {c.proc.pid}" for r, c in self.children.items()), os.path.abspath(cfg.state_dir))

    def _link(self, role):
        """The supervisor's DEALER to a child's control socket (made again on restart)."""
        old = self.links.get(role)
        if old is not None:
            old.close(linger=0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.rundir.control(role))
        self.links[role] = sock

    def _on_signal(self, signum, frame):
        self.should_exit = True

    def _show_allowed_keys(self):
        if self.curve is not None:
            allowed = self.curve.allowed_keys()
            for name in self.public:
                self.metrics.auth_allowed_keys.labels(name).set(allowed[name])

    def _on_reload_signal(self, signum, frame):
        self.reload_requested = True

    # -- health -------------------------------------------------------------------------------
    def healthy(self):
        """Every child serves, or is on its way back: a restart is the supervisor's job,
        not a reason for an orchestrator to restart the whole tree (it would cost more)."""
        now = time.monotonic()
        if self.proxy is not None and not self.proxy.alive:
            return False
        return now - self.loop_beat < LOOP_STALL_S and all(
            c.serving or (c.down_since is not None and now - c.down_since < START_TIMEOUT_S)
            for c in self.children.values())

    def ready(self):
        """Predictions are answered: a predict worker serves a published snapshot."""
        return (any(c.serving for r, c in self.children.items() if r.startswith("predict-"))
                and self._snapshots.current() is not None)

    # -- control ------------------------------------------------------------------------------
    def _handle(self, message):
        """A client's control op: answered here (shutdown), or forwarded to the trainer,
        whose reply comes back through `_on_child_reply`."""
        op = message.op
        if op not in control_ops.OPS:
            raise ProtocolError("unknown_op", f"control ops are {', '.join(control_ops.OPS)}; got {op!r}")
        if message.arrays:
            raise ProtocolError("bad_array", "control messages carry no arrays")
        if op == "shutdown":
            self.should_exit = True
            return {"shutting_down": True}
        return _Forwarded(message.header)

    def _forward(self, identity, echo, header):
        """Send a client's op to the children that answer it; the reply goes out once
        all have answered (`_on_child_reply`).  `status` asks the trainer, ingest and the
        predict workers at once; `set` goes to the trainer, and what it accepted of the predict
        workers' settings to them after.  `status` asks ingest too, for its memory bound."""
        op = header["op"]
        if not self.children["trainer"].serving:
            if op == "status":
                self._reply_status(identity, echo, {})
            else:
                self.endpoint.reject(identity, ProtocolError(
                    "not_ready", "the trainer process is restarting; try again in a moment"), echo)
            return
        if len(self.pending) >= ControlEndpoint.MAX_PENDING:
            self.endpoint.reject(identity, ProtocolError(
                "busy", f"{ControlEndpoint.MAX_PENDING} control operations are already waiting"), echo)
            return
        roles = ["trainer"] + ([r for r, c in self.children.items()
                                if (r.startswith("predict-") or r == "ingest") and c.serving]
                               if op == "status" else [])
        self._ask(_Pending(identity, echo, op, header), header, roles)

    def _ask(self, pending, header, roles):
        rid = next(self._ids)
        pending.waiting = set(roles)
        pending.sent = time.monotonic()
        self.pending[rid] = pending
        for role in roles:
            self.links[role].send_multipart(protocol.encode({**header, "id": rid}))

    def _on_child_reply(self, role, frames):
        try:
            reply = protocol.decode(frames, reply=True)
        except ProtocolError as exc:
            log.error("unreadable reply from %s: %s", role, exc)
            return
        rid = reply.header.get("id")
        pending = self.pending.get(rid)
        if pending is None or role not in pending.waiting:
            return                     # the answer to a request that timed out or was dropped
        pending.waiting.discard(role)
        pending.replies[role] = reply.header
        if not pending.waiting:
            del self.pending[rid]
            self._complete(pending)

    def _complete(self, pending):
        if pending.op == "status":
            self._reply_status(pending.identity, pending.echo, _answered_parts(pending))
            return
        trainer = pending.trainer_result or pending.replies.get("trainer", {})
        if not trainer.get("ok"):
            self._pass_on(pending, trainer)
            return
        settings = pending.header.get("settings") if pending.op == "set" else None
        theirs = {k: v for k, v in settings.items() if k in PREDICT_SETTINGS} if isinstance(settings, dict) else {}
        workers = [r for r, c in self.children.items() if r.startswith("predict-") and c.serving]
        if theirs and workers and pending.trainer_result is None:
            pending.trainer_result = trainer        # the trainer validated them: now the workers
            pending.replies = {}
            self._ask(pending, {"op": "set", "settings": theirs}, workers)
            return
        self._pass_on(pending, trainer)

    def _pass_on(self, pending, header):
        self.endpoint.reply(pending.identity, {**{k: v for k, v in header.items() if k != "id"},
                                               **pending.echo})

    def _reply_status(self, identity, echo, parts):
        status = dict(parts.get("trainer") or {})
        for key in ("role", "pid", "last_lsn", "failed"):
            status.pop(key, None)
        predict = [p.get("satisficing") for r, p in sorted(parts.items()) if r.startswith("predict-") and p]
        status["satisficing"] = combined_satisficing([s for s in predict if s is not None])
        status.update({
            "uptime_seconds": time.monotonic() - self.started,
            "ready": self.ready(),
            "wal": self.config.wal,
            "curve": self.curve is not None,
            "bound": dict(self.bound),
            "processes": self.processes(parts),
        })
        ingest = parts.get("ingest") or {}
        if "max_queued_bytes" in ingest:    # the memory bound, as --single-process shows it
            status["ingest"] = {k: ingest[k] for k in INGEST_STATUS_KEYS}
        self.endpoint.reply(identity, protocol.ok(**echo, result=control_ops.clean(status)))

    def processes(self, parts=None):
        """status's `processes`; parts: {role: its status part}, from which a predict
        worker adds the requests it answered (how the proxy shares the load)."""
        out = [{"role": "supervisor", "pid": os.getpid(), "restarts": 0,
                "uptime_seconds": time.monotonic() - self.started, "alive": True, "state": "serving"}]
        now = time.monotonic()
        for role, c in self.children.items():
            entry = {"role": role, "pid": c.proc.pid if c.proc else None, "restarts": c.restarts,
                     "uptime_seconds": now - c.started if c.alive else 0.0, "alive": c.serving,
                     "state": c.state}
            part = (parts or {}).get(role) or {}
            if "requests_answered" in part:
                entry["requests_answered"] = part["requests_answered"]
            out.append(entry)
        return out

    # -- the loop ----------------------------------------------------------------------------
    def main_loop(self):
        while not self.should_exit:
            self.loop_beat = time.monotonic()
            if self.reload_requested:
                self.reload_requested = False
                if self.curve is not None:
                    self.curve.reload()
                    self._show_allowed_keys()
                for c in self.children.values():
                    if c.alive:
                        c.proc.send_signal(signal.SIGHUP)
            poller = zmq.Poller()
            poller.register(self.control, zmq.POLLIN)
            for sock in self.links.values():
                poller.register(sock, zmq.POLLIN)
            events = dict(poller.poll(self.POLL_MS))
            if self.control in events:
                self._serve_clients()
            for role, sock in list(self.links.items()):
                if sock in events:
                    for _ in range(100):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            self._on_child_reply(role, frames)
                        except Exception:  # a bug must not stop the supervisor: log it, go on
                            log.exception("failed to handle a reply from %s", role)
            now = time.monotonic()
            self._expire_pending(now)
            self._watch(now)
            self._measure()

    def _serve_clients(self):
        for _ in range(100):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0]
            try:
                message = protocol.decode(frames[1:], self.limits)
            except ProtocolError as exc:
                self.endpoint.reject(identity, exc, {})
                continue
            echo = {"id": message.header["id"]} if "id" in message.header else {}
            try:
                result = self._handle(message)
            except ProtocolError as exc:
                self.endpoint.reject(identity, exc, echo)
                continue
            except Exception as exc:  # a bug must not stop the supervisor: answer, count, log
                log.exception("failed to handle a control message")
                self.endpoint.reject(identity, ProtocolError("internal", f"{type(exc).__name__}: {exc}"), echo)
                continue
            if isinstance(result, _Forwarded):
                self._forward(identity, echo, result.header)
            else:
                self.endpoint.reply(identity, protocol.ok(**echo, result=result))

    def _expire_pending(self, now):
        for rid, p in list(self.pending.items()):
            if now - p.sent > FORWARD_TIMEOUT_S:
                del self.pending[rid]
                self.endpoint.reject(p.identity, ProtocolError(
                    "internal", f"{', '.join(sorted(p.waiting))} did not answer '{p.op}' in "
                                f"{FORWARD_TIMEOUT_S:.0f} s"), p.echo)

    def _watch(self, now):
        """Restart a child that died, after a backoff; stop when one keeps dying."""
        for role, c in self.children.items():
            if c.restart_at is not None:
                if now >= c.restart_at:
                    self._restart(c)
                continue
            code = c.proc.poll()
            if code is None:
                if c.starting:
                    self._check_started(c, now)
                continue
            c.deaths.append(now)
            if c.down_since is None:
                c.down_since = now
            window = self.config.child_restart_window_s
            while c.deaths and now - c.deaths[0] > window:
                c.deaths.popleft()
            log.error("the %s process (pid %d) exited with %s%s", role, c.proc.pid,
                      f"signal {-code}" if code < 0 else f"status {code}",
                      f"; {len(c.deaths)} deaths in {window:.0f} s" if len(c.deaths) > 1 else "")
            if len(c.deaths) >= self.config.child_restart_limit:
                log.error("the %s process keeps dying: stopping the daemon (exit %d)", role, EXIT_CHILD_FAILING)
                self.exit_code = EXIT_CHILD_FAILING
                self.should_exit = True
                return
            for rid, p in list(self.pending.items()):
                if role not in p.waiting:
                    continue
                if p.op == "status":
                    # An operator asks for status most when something is wrong: the
                    # others' parts still answer, and `processes` shows who is down.
                    p.waiting.discard(role)
                    if not p.waiting:
                        del self.pending[rid]
                        self._reply_status(p.identity, p.echo, _answered_parts(p))
                    continue
                del self.pending[rid]
                self.endpoint.reject(p.identity, ProtocolError(
                    "not_ready", f"the {role} process restarted before it answered"), p.echo)
            c.restart_at = now + BACKOFF_S[min(len(c.deaths) - 1, len(BACKOFF_S) - 1)]

    def _restart(self, c):
        """Start a dead child again; the loop goes on while it starts (a trainer reads its
        checkpoint and catches up with the log), and `_check_started` links it once it serves."""
        c.start()
        c.restarts += 1
        self.child_restarts.labels(c.role).inc()

    def _check_started(self, c, now):
        try:
            info = c.serving_info()
        except StartupError as exc:
            log.error("the %s process could not start again: %s", c.role, exc)
            return                       # it exits: the next turn counts the death
        if info is not None:
            self._link(c.role)
            log.info("the %s process restarted (pid %d)", c.role, c.proc.pid)
        elif now - c.started > START_TIMEOUT_S:
            log.error("the %s process did not start in %.0f s; killed", c.role, START_TIMEOUT_S)
            c.proc.kill()

    def _measure(self):
        for role, pid in [("supervisor", os.getpid())] + [(r, c.proc.pid) for r, c in self.children.items()
                                                          if c.alive]:
            usage = _proc_usage(pid)
            if usage is not None:
                self.usage[role] = usage

    # -- shutdown ----------------------------------------------------------------------------
    def shutdown(self):
        """In order: ingest stops reading and acknowledges what it logged; the trainer
        finishes the log and checkpoints; the predict workers stop last."""
        if self.children:
            log.info("shutting down the process tree")
        order = ["ingest", "trainer"] + [r for r in self.children if r.startswith("predict-")]
        for role in order:
            c = self.children.get(role)
            if c is None or not c.alive:
                continue
            c.proc.send_signal(signal.SIGTERM)
            try:
                c.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("the %s process did not stop in %.0f s; killed", role, STOP_TIMEOUT_S)
                c.proc.kill()
                c.proc.wait(10)
            if c.proc.returncode not in (0, None):
                log.warning("the %s process exited with %s", role, c.proc.returncode)
        stop_threads(getattr(self, "handshakes", None))
        stop_http(self.http)
        if self.ctx is not None:
            for sock in [getattr(self, "control", None), *getattr(self, "links", {}).values()]:
                if sock is not None:
                    sock.close(linger=0)
            if self.proxy is not None:
                self.proxy.close()      # a running proxy closes its sockets when term() stops it
            if self.curve is not None:
                self.curve.stop()
            self.ctx.term()
        if self.rundir is not None and not any(c.alive for c in self.children.values()):
            self.rundir.remove()       # shared memory is freed with the daemon
        if self.state_lock is not None:
            os.close(self.state_lock)
            self.state_lock = None
        if self.children:
            log.info("learnd stopped")

    def run(self):
        """startup, main loop, shutdown; returns the process exit code."""
        try:
            self.startup()
            self.main_loop()
        finally:
            self.shutdown()
        return self.exit_code


class _Pending:
    """A client's control op waiting for the children's answers."""

    def __init__(self, identity, echo, op, header):
        self.identity, self.echo, self.op, self.header = identity, echo, op, header
        self.waiting = set()
        self.replies = {}
        self.sent = 0.0
        self.trainer_result = None   # a `set` the trainer took, while the workers take theirs


def _answered_parts(pending):
    """{role: its status part} of the children that answered a status request."""
    return {r: h.get("result") for r, h in pending.replies.items() if h.get("ok")}


class _Forwarded:
    """A control op the trainer process answers."""

    def __init__(self, header):
        self.header = {k: v for k, v in header.items() if k not in ("id", "v")}


class _UsageCollector:
    """Per-process CPU seconds (a counter: it restarts with the process) and resident
    memory, by role, as last measured by the supervisor's loop."""

    def __init__(self, usage):
        self.usage = usage

    def collect(self):
        cpu = CounterMetricFamily("learnd_process_cpu_seconds", "CPU seconds (user + system) of each "
                                  "process of the tree since it started, by role.", labels=["role"])
        rss = GaugeMetricFamily("learnd_process_resident_memory_bytes",
                                "Resident memory of each process of the tree, by role.", labels=["role"])
        for role, (seconds, rss_bytes) in sorted(self.usage.items()):
            cpu.add_metric([role], seconds)
            rss.add_metric([role], rss_bytes)
        yield cpu
        yield rss

    def describe(self):
        return []


def _proc_usage(pid):
    """(CPU seconds, resident bytes) of a process from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, rss_pages * os.sysconf("SC_PAGE_SIZE")
