"""The entry point of each process of the tree, and what every child has in common.

    python -m learnd.daemon.supervisor.child ROLE RUN_DIR

ROLE is ingest, trainer or predict-N.  A child reads the configuration the supervisor
wrote, binds its sockets (the public one, and its control socket on ipc for the
supervisor), writes RUN_DIR/ROLE.json, and runs its loop until SIGTERM.  It dies with
its supervisor (the kernel's parent-death signal), so a killed supervisor leaves no
process holding its ports.
"""
from __future__ import annotations

import abc
import ctypes
import dataclasses
import logging
import os
import signal
import sys
import time

import zmq
from prometheus_client import generate_latest

from learnd.clients.protocol import Limits, ProtocolError
from learnd.daemon import logs
from learnd.daemon.errors import StartupError
from learnd.daemon.metrics import Metrics
from learnd.daemon.stopping import stop_threads
from learnd.daemon.supervisor import sockets
from learnd.daemon.supervisor.curve import CurveServer, HandshakeWatcher
from learnd.daemon.supervisor.endpoint import ControlEndpoint
from learnd.daemon.supervisor.rundir import RunDir

log = logging.getLogger("learnd.child")

PR_SET_PDEATHSIG = 1


SUPERVISOR_PID_ENV = "LEARND_SUPERVISOR_PID"


def die_with_parent(parent):
    """Ask the kernel to SIGKILL this process when its parent, the supervisor (pid
    `parent`), dies; exit at once if it died before we asked (the interpreter's start
    takes a while: a supervisor killed meanwhile would leave this process behind).
    Linux only; elsewhere the loop's parent check does it within a second."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(1)


class ChildProcess(abc.ABC):
    """One stage in its own interpreter: `startup()`, `step(timeout_ms)` until SIGTERM,
    `shutdown()`.  Subclasses bind their sockets in startup and answer their ops in
    `handle_op`; the control socket to the supervisor and `status`/`metrics` are here."""

    role = "child"
    POLL_MS = 50

    def __init__(self, config, run, role=None):
        self.config = config
        self.run_dir = run
        self.role = role or self.role
        self.metrics = Metrics()
        self.should_exit = False
        self.started = time.monotonic()
        self.parent = int(os.environ[SUPERVISOR_PID_ENV])
        self.limits = Limits(max_header_bytes=config.max_header_bytes,
                             max_array_bytes=config.max_array_bytes,
                             max_message_bytes=config.max_message_bytes,
                             max_rows=config.max_rows)
        self.ctx = zmq.Context()
        self.curve = CurveServer(config) if config.curve_server_secret else None
        if self.curve is not None:
            self.curve.start(self.ctx)
        self.bound = {}
        self._public = {}
        self._sockets = []
        self.reload_requested = False
        self.handshakes = None
        self.ctl = self.ctx.socket(zmq.ROUTER)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.bind(run.control(self.role))
        self._sockets.append(self.ctl)
        self.ctl_endpoint = ControlEndpoint(self.ctl, self._handle, self.limits, self.metrics.rejected)

    def bind(self, kind, address, name, configure=None, max_message_bytes=None):
        """Bind a public socket; its refused handshakes are counted like the daemon's.
        max_message_bytes: its MAXMSGSIZE, when not the configured max_message_bytes."""
        sock, self.bound[name] = sockets.bind(self.ctx, kind, address, name,
                                              max_message_bytes or self.config.max_message_bytes,
                                              self.curve, configure)
        self._sockets.append(sock)
        self._public[name] = sock
        return sock

    def _handle(self, message):
        if message.op == "metrics":
            return {"text": generate_latest(self.metrics.registry).decode(), "pid": os.getpid()}
        if message.op == "status":
            return {"role": self.role, "pid": os.getpid(),
                    "uptime_seconds": time.monotonic() - self.started, **self.status_part()}
        return self.handle_op(message)

    def status_part(self):
        return {}

    def handle_op(self, message):
        raise ProtocolError("unknown_op", f"the {self.role} process does not take {message.op!r}")

    # -- lifecycle --------------------------------------------------------------------------
    def run(self):
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)      # the supervisor decides
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        self.startup()
        self.handshakes = HandshakeWatcher(self.ctx, self._public, self.metrics.auth_failures, self.curve)
        self.handshakes.start()
        self._show_allowed_keys()
        self.run_dir.write_info(self.role, self.bound)
        log.info("%s process %d serving %s", self.role, os.getpid(), self.bound)
        last_parent_check = time.monotonic()
        try:
            while not self.should_exit:
                if self.reload_requested:
                    self.reload_requested = False
                    if self.curve is not None:
                        self.curve.reload()
                        self._show_allowed_keys()
                self.step(self.POLL_MS)
                self.ctl_endpoint.answer_ready()
                now = time.monotonic()
                if now - last_parent_check >= 1.0:
                    last_parent_check = now
                    if os.getppid() != self.parent:
                        log.error("the supervisor is gone; %s exits", self.role)
                        break
        finally:
            self.shutdown()
            stop_threads(self.handshakes)
            for sock in self._sockets:
                sock.close(linger=0)
            if self.curve is not None:
                self.curve.stop()
            self.ctx.term()
        return 0

    def serve_control(self, events):
        if self.ctl in events:
            for _ in range(100):
                try:
                    frames = self.ctl.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                try:
                    self.ctl_endpoint.on_message(frames)
                except Exception as exc:  # answer, count, log: a bug must not stop the stage
                    log.exception("control op failed")
                    self.ctl_endpoint.reject(frames[0], ProtocolError("internal", f"{type(exc).__name__}: {exc}"), {})

    def _on_signal(self, signum, frame):
        self.should_exit = True

    def _on_reload_signal(self, signum, frame):
        self.reload_requested = True

    def _show_allowed_keys(self):
        if self.curve is not None:
            allowed = self.curve.allowed_keys()
            for name in self._public:
                self.metrics.auth_allowed_keys.labels(name).set(allowed.get(name, 0))

    @abc.abstractmethod
    def startup(self):
        """Bind the stage's sockets and take its state."""

    @abc.abstractmethod
    def step(self, timeout_ms):
        """One pass of the stage's loop, waiting at most timeout_ms for work."""

    def shutdown(self):
        """Finish in-flight work before the sockets close."""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    role, path, binds = argv[0], argv[1], dict(a.split("=", 1) for a in argv[2:])
    die_with_parent(int(os.environ[SUPERVISOR_PID_ENV]))
    run = RunDir(path)
    # The supervisor passes the addresses this child binds: the configured ones at first,
    # the ports actually bound when it restarts the child (so clients find it again).
    config = dataclasses.replace(run.read_config(), **binds)
    logs.setup(config.log_json, config.log_level)
    # BLAS threads per process, set here so the processes together do not oversubscribe
    # the cores: one for ingest and each predict worker (a one-row GEMV gains nothing from
    # more), the trainer's own `blas_threads` (set by its training thread).  The engine's
    # GEMMs run on NumPy's OpenBLAS (engine.kernels.blas), or on SciPy's through np.dot.
    from learnd.daemon.blas import limit_blas_threads
    limit_blas_threads(config.blas_threads if role == "trainer" else 1)
    if role == "ingest":
        from learnd.daemon.ingest.process import IngestProcess as cls
    elif role == "trainer":
        from learnd.daemon.training.process import TrainerProcess as cls
    elif role.startswith("predict-"):
        from learnd.daemon.serving.process import PredictProcess as cls
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    try:
        return cls(config, run, role).run()
    except StartupError as exc:
        log.error("%s: %s", role, exc)
        run.write_startup_error(role, str(exc), exc.exit_code)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
