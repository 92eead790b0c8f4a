"""The predict thread: answers each request from exactly one published snapshot.

Dynamic batching: with `batch_window_us` > 0, the thread waits that long after the first
request of a batch, takes every request that arrived meanwhile (up to `max_batch_rows`
rows), and answers them all from one snapshot with one kernel call; each reply carries
its own rows and the shared model_version.  With 0, each request is its own batch.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq

from learnd.clients import protocol
from learnd.clients.protocol import ProtocolError
from learnd.engine import EngineError
from learnd.engine.kernels.adversarial import fgsm
from learnd.engine.kernels.normalize import count_nonfinite
from learnd.engine.labels import labels_from_outputs, write_targets

from learnd.daemon.ingest.tags import check_tags
from learnd.daemon.serving.latency import LatencyWindow

log = logging.getLogger("learnd.predictor")

OUTPUTS = ("label", "proba", "value", "adversarial")


@dataclass
class Request:
    """A predict request that passed its checks, waiting for its batch's kernel call."""

    identity: list        # the routing frames the reply goes back with
    echo: dict
    output: str
    x: np.ndarray         # (m, input_dim), the snapshot's dtype
    ids: np.ndarray | None
    received: float       # perf_counter() when it was read
    Y: np.ndarray | None = None     # output "adversarial": the labels as targets (m, n_outputs)
    epsilon: float = 0.0
    tags: tuple | None = None    # (multi-hot (m, T) bool, T names), kept with ids for the labels


class PredictServer(threading.Thread):
    """Serves the predict ROUTER socket; reads `trainer.snapshot`, never the live model."""

    POLL_MS = 100

    def __init__(self, socket, trainer, metrics, limits, id_store, batch_window_us=0.0,
                 max_batch_rows=1024, spin_us=0.0, routing_frames=1, max_tags=0):
        """routing_frames: frames before a request's own (the client's identity; behind
        the supervisor's proxy, the proxy's too), sent back in front of its reply."""
        super().__init__(name="learnd-predict", daemon=True)
        self.socket = socket
        self.trainer = trainer
        self.metrics = metrics
        self.limits = limits
        self.id_store = id_store
        self.max_tags = max_tags
        self.batch_window_s = batch_window_us / 1e6
        self.max_batch_rows = max(1, max_batch_rows)
        self.spin_s = spin_us / 1e6
        self.routing_frames = routing_frames
        self.should_exit = threading.Event()
        self._workspaces = {}     # one per snapshot layout, reused across requests
        self._grad_work = (None, None)   # (layer table, scratch) of adversarial requests
        self.latencies = LatencyWindow()   # recent latencies, for the satisficing p99
        self._inputs = {}         # per dtype: a growable (rows, input_dim) buffer for batches
        self._requests_ok = metrics.predict_requests.labels("ok")
        self._requests_error = metrics.predict_requests.labels("error")

    def run(self):
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        spin_until = 0.0
        while not self.should_exit.is_set():
            # Spin, then block: for spin_s after an answer the thread polls without
            # sleeping, so a client's next request is read without waking a sleeping thread
            # (on a virtual machine that wake-up can cost more than the request itself).
            spinning = time.perf_counter() < spin_until
            if not poller.poll(0 if spinning else self.POLL_MS):
                continue
            # Serve what has arrived before polling again.
            for _ in range(1000):
                if not self.socket.get(zmq.EVENTS) & zmq.POLLIN:
                    break
                self._serve_batch()
            if self.spin_s:
                spin_until = time.perf_counter() + self.spin_s
        self.socket.close(linger=0)

    def _serve_batch(self):
        """Read one request, and with batching on, the others that arrive within the
        window (up to max_batch_rows rows); answer them with one kernel call."""
        snap = self.trainer.snapshot     # one version for the whole batch
        requests = []
        rows = self._take(snap, requests)
        if self.batch_window_s > 0:
            time.sleep(self.batch_window_s)
            while rows < self.max_batch_rows and self.socket.get(zmq.EVENTS) & zmq.POLLIN:
                rows += self._take(snap, requests)
        if requests:
            self._answer(requests, snap)

    def _take(self, snap, requests):
        """Read one message; append it to `requests` if it passes its checks (else it
        is answered at once).  Returns its rows."""
        frames = self.socket.recv_multipart(copy=False)
        request = self._check(frames, snap, time.perf_counter())
        if request is None:
            return 0
        requests.append(request)
        return request.x.shape[0]

    def _check(self, frames, snap, t0):
        """A Request, or None after answering the error it carries."""
        n = self.routing_frames
        identity = frames[:n]
        echo = {}
        try:
            message = protocol.decode(frames[n:], self.limits)
            if "id" in message.header:
                echo["id"] = message.header["id"]
            if message.op != "predict":
                raise ProtocolError("unknown_op", f"the predict socket serves 'predict', not {message.op!r}")
            return self.check(message, snap, identity, echo, t0)
        except ProtocolError as exc:
            self._fail(identity, echo, exc.code, exc.message, t0)
        except Exception as exc:  # a bug must not stop serving: answer, count and log it
            log.exception("predict request failed")
            self._fail(identity, echo, "internal", f"{type(exc).__name__}: {exc}", t0)
        return None

    def check(self, message, snap, identity=None, echo=None, t0=0.0):
        """The Request for a decoded predict message, or ProtocolError."""
        header, arrays = message.header, message.arrays
        output = header.get("output", "label")
        if output not in OUTPUTS:
            raise ProtocolError("bad_header", f"'output' must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if output == "adversarial":
            if set(arrays) != {"x", "y"}:
                raise ProtocolError("bad_array", "an adversarial predict message carries x and y (the labels)")
        elif "x" not in arrays or set(arrays) - {"x", "ids", "tags"}:
            raise ProtocolError("bad_array", "a predict message carries x and optionally ids (and tags with them)")
        if "tags" in arrays and "ids" not in arrays:
            raise ProtocolError("bad_array", "a predict message's tags are kept with its ids for the labels "
                                             "that come later: send ids with them")
        if snap is None:
            raise ProtocolError("not_ready", "no model yet: the first training batch creates it")
        x = arrays["x"]
        if x.ndim != 2 or x.shape[1] != snap.input_dim or x.shape[0] == 0:
            raise ProtocolError("shape_mismatch", f"x must have shape [m, {snap.input_dim}] with m >= 1, "
                                                  f"got {list(x.shape)}")
        if x.dtype.kind not in "iuf":
            raise ProtocolError("bad_array", f"x must be numbers, got dtype {x.dtype.str}")
        if x.dtype != snap.dtype:
            # One kernel per dtype is compiled at start; other inputs are cast, not compiled for.
            # A value past the dtype becomes Inf, a signalling NaN a NaN: both refused below.
            with np.errstate(over="ignore", invalid="ignore"):
                x = x.astype(snap.dtype)
        if count_nonfinite(x):
            raise ProtocolError("non_finite", "x holds NaN or Inf")
        ids = arrays.get("ids")
        if ids is not None:
            if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.shape[0] != x.shape[0]:
                raise ProtocolError("bad_array", "ids must be a 1-D integer array, one per row of x")
        tags = None if "tags" not in arrays else check_tags(arrays["tags"], header, x.shape[0], self.max_tags)
        request = Request(identity, echo or {}, output, x, ids, t0, tags=tags)
        if output == "adversarial":
            self._check_attack(header, arrays["y"], snap, request)
        return request

    @staticmethod
    def _check_attack(header, y, snap, request):
        """The labels and epsilon of an adversarial request, into `request`."""
        epsilon = header.get("epsilon")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (
                math.isfinite(epsilon) and epsilon >= 0):
            raise ProtocolError("bad_header", f"output 'adversarial' needs 'epsilon', a finite number >= 0 "
                                              f"in input units, got {epsilon!r}")
        if not hasattr(snap, "input_loss_and_grad_into"):
            raise ProtocolError("unsupported", "adversarial examples come from one model; "
                                               "an ensemble serves here")
        m = request.x.shape[0]
        Y = np.empty((m, snap.n_outputs), dtype=snap.dtype)
        try:
            write_targets(snap.task, snap.n_outputs, y, m, Y)
        except EngineError as exc:
            raise ProtocolError("bad_label", str(exc)) from None
        request.Y = Y
        request.epsilon = float(epsilon)

    def _answer(self, requests, snap):
        attacks = [r for r in requests if r.output == "adversarial"]
        if attacks:
            for r in attacks:
                self._answer_adversarial(r, snap)
            requests = [r for r in requests if r.output != "adversarial"]
            if not requests:
                return
        try:
            P = self._predict(snap, [r.x for r in requests])
        except Exception as exc:  # a bug must not stop serving: answer, count and log it
            log.exception("predict kernel failed")
            for r in requests:
                self._fail(r.identity, r.echo, "internal", f"{type(exc).__name__}: {exc}", r.received)
            return
        start = 0
        # A population's snapshot names who answers: a member's id, or "ensemble".
        member = {"member": snap.meta["member"]} if "member" in snap.meta else {}
        for r in requests:
            m = r.x.shape[0]
            if r.ids is not None:
                self.id_store.put(r.ids, r.x, r.tags)
            y = _outputs(snap.task, P[start:start + m], r.output)
            start += m
            self._requests_ok.inc()
            self.metrics.predict_rows.inc(m)
            reply = protocol.ok(**r.echo, model_version=snap.version, output=r.output, **member)
            # Only answered requests are the satisficing metric's latency: a refusal
            # (not_ready, a bad shape) is quick and says nothing of serving a model.
            self.latencies.record(self._send(r.identity, reply, {"y": y}, r.received))

    def _answer_adversarial(self, r, snap):
        """FGSM examples x + epsilon * sign(dJ/dx) of the request's rows against its
        labels, from this snapshot's model (inference mode), in input units."""
        key = (type(snap).__name__, snap.units_per_row)
        try:
            ws = self._workspaces.get(key)
            if ws is None:
                ws = self._workspaces[key] = snap.new_workspace()
            layout, gw = self._grad_work
            if layout != snap.table.tobytes():
                gw = snap.new_input_grad_work()
                self._grad_work = (snap.table.tobytes(), gw)
            dX = np.empty_like(r.x)
            snap.input_loss_and_grad_into(r.x, r.Y, dX, ws, gw)
            x_adv = np.empty_like(r.x)
            fgsm(r.x, dX, r.epsilon, x_adv)
        except Exception as exc:  # a bug must not stop serving: answer, count and log it
            log.exception("adversarial request failed")
            self._fail(r.identity, r.echo, "internal", f"{type(exc).__name__}: {exc}", r.received)
            return
        member = {"member": snap.meta["member"]} if "member" in snap.meta else {}
        self._requests_ok.inc()
        self.metrics.predict_rows.inc(r.x.shape[0])
        reply = protocol.ok(**r.echo, model_version=snap.version, output=r.output, epsilon=r.epsilon, **member)
        self._send(r.identity, reply, {"x": x_adv}, r.received)

    def _predict(self, snap, xs):
        """Head outputs (rows of every x, in order, n_outputs) from one kernel call."""
        # An ensemble's workspace also holds one member's outputs: keyed by kind too.
        key = (type(snap).__name__, snap.units_per_row)
        ws = self._workspaces.get(key)
        if ws is None:
            ws = self._workspaces[key] = snap.new_workspace()
        if len(xs) == 1:
            X = xs[0]
        else:
            rows = sum(x.shape[0] for x in xs)
            buf = self._inputs.get(snap.dtype)
            if buf is None or buf.shape[0] < rows or buf.shape[1] != snap.input_dim:
                buf = self._inputs[snap.dtype] = np.empty((max(rows, self.max_batch_rows), snap.input_dim),
                                                          dtype=snap.dtype)
            X = buf[:rows]
            start = 0
            for x in xs:
                X[start:start + x.shape[0]] = x
                start += x.shape[0]
        P = np.empty((X.shape[0], snap.n_outputs), dtype=snap.dtype)
        snap.predict_into(X, P, ws)
        self.metrics.predict_batches.inc()
        return P

    def _fail(self, identity, echo, code, message, t0):
        self._requests_error.inc()
        self.metrics.rejected.labels(code).inc()
        self._send(identity, protocol.error(code, message, **echo), None, t0)

    def _send(self, identity, reply, arrays, t0):
        """Send a reply; returns the seconds since the request was received."""
        self.socket.send_multipart([*identity, *protocol.encode(reply, arrays)], copy=False)
        elapsed = time.perf_counter() - t0
        self.metrics.predict_latency.observe(elapsed)
        return elapsed


def _outputs(task, P, output):
    return labels_from_outputs(task, P) if output == "label" else P
