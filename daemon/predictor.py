"""The predict thread: answers each request from exactly one published snapshot."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
import zmq

from clients import protocol
from clients.protocol import ProtocolError

from .latency import LatencyWindow

log = logging.getLogger("learnd.predictor")

OUTPUTS = ("label", "proba", "value")


class PredictServer(threading.Thread):
    """Serves the predict ROUTER socket; reads `trainer.snapshot`, never the live model."""

    POLL_MS = 100

    def __init__(self, socket, trainer, metrics, limits, id_store):
        super().__init__(name="learnd-predict", daemon=True)
        self.socket = socket
        self.trainer = trainer
        self.metrics = metrics
        self.limits = limits
        self.id_store = id_store
        self.should_exit = threading.Event()
        self._workspaces = {}     # one per snapshot layout, reused across requests
        self.latencies = LatencyWindow()   # recent latencies, for the satisficing p99
        self._requests_ok = metrics.predict_requests.labels("ok")
        self._requests_error = metrics.predict_requests.labels("error")

    def run(self):
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self.should_exit.is_set():
            if not poller.poll(self.POLL_MS):
                continue
            # Drain what has arrived before polling again.
            for _ in range(1000):
                try:
                    frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._serve(frames)
        self.socket.close(linger=0)

    def _serve(self, frames):
        t0 = time.perf_counter()
        identity = frames[0]
        echo = {}
        try:
            message = protocol.decode(frames[1:], self.limits)
            if "id" in message.header:
                echo["id"] = message.header["id"]
            if message.op != "predict":
                raise ProtocolError("unknown_op", f"the predict socket serves 'predict', not {message.op!r}")
            header, arrays = self.predict(message)
            reply = protocol.ok(**echo, **header)
            self._requests_ok.inc()
            self.metrics.predict_rows.inc(arrays["y"].shape[0])
        except ProtocolError as exc:
            reply, arrays = protocol.error(exc.code, exc.message, **echo), None
            self._requests_error.inc()
            self.metrics.rejected.labels(exc.code).inc()
        except Exception as exc:  # a bug must not stop serving: answer, count and log it
            log.exception("predict request failed")
            reply, arrays = protocol.error("internal", f"{type(exc).__name__}: {exc}", **echo), None
            self._requests_error.inc()
            self.metrics.rejected.labels("internal").inc()
        self.socket.send_multipart([identity, *protocol.encode(reply, arrays)], copy=False)
        elapsed = time.perf_counter() - t0
        self.metrics.predict_latency.observe(elapsed)
        self.latencies.record(elapsed)

    def predict(self, message):
        """(reply fields, {"y": outputs}) for a decoded predict message."""
        header, arrays = message.header, message.arrays
        output = header.get("output", "label")
        if output not in OUTPUTS:
            raise ProtocolError("bad_header", f"'output' must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if set(arrays) - {"x", "ids"} or "x" not in arrays:
            raise ProtocolError("bad_array", "a predict message carries x and optionally ids")
        snap = self.trainer.snapshot
        if snap is None:
            raise ProtocolError("not_ready", "no model yet: the first training batch creates it")
        x = arrays["x"]
        if x.ndim != 2 or x.shape[1] != snap.input_dim or x.shape[0] == 0:
            raise ProtocolError("shape_mismatch", f"x must have shape [m, {snap.input_dim}] with m >= 1, "
                                                  f"got {list(x.shape)}")
        if x.dtype.kind not in "iuf":
            raise ProtocolError("bad_array", f"x must be numbers, got dtype {x.dtype.str}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ProtocolError("non_finite", "x holds NaN or Inf")
        if x.dtype != snap.dtype:
            # One kernel per dtype is compiled at start; other inputs are cast, not compiled for.
            x = x.astype(snap.dtype)
        ids = arrays.get("ids")
        if ids is not None:
            if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.shape[0] != x.shape[0]:
                raise ProtocolError("bad_array", "ids must be a 1-D integer array, one per row of x")
        ws = self._workspaces.get(snap.units_per_row)
        if ws is None:
            ws = self._workspaces[snap.units_per_row] = snap.new_workspace()
        P = np.empty((x.shape[0], snap.n_outputs), dtype=snap.dtype)
        snap.predict_into(x, P, ws)
        if ids is not None:
            self.id_store.put(ids, x)
        return {"model_version": snap.version, "output": output}, {"y": _outputs(snap.task, P, output)}


def _outputs(task, P, output):
    if output == "label" and task == "multiclass":
        return P.argmax(axis=1)
    if output == "label" and task in ("binary", "multilabel"):
        return (P >= 0.5).astype(np.int64)
    return P
