"""A predict worker process: the predict socket, answered from the snapshot in shared memory.

The worker maps the newest published snapshot (serving.snapshots) and runs the same
PredictServer loop as the single-process daemon, on its own core and interpreter: the
trainer's steps never hold its GIL.  With one worker it binds the predict socket itself;
with several, each connects to the supervisor's proxy, which binds it once.  Inputs of requests
that carry ids are pushed to ingest, which keeps the delayed-label store.
"""
from __future__ import annotations

import dataclasses
import logging

import msgpack
import numpy as np
import zmq

from learnd.clients.protocol import ProtocolError
from learnd.engine.warm import warm_up

from learnd.daemon.serving.latency import satisficing, satisficing_values
from learnd.daemon.serving.predictor import PredictServer
from learnd.daemon.serving.snapshots import SnapshotReader
from learnd.daemon.stopping import stop_threads
from learnd.daemon.supervisor.child import ChildProcess

log = logging.getLogger("learnd.predict")


class SharedSnapshot:
    """What PredictServer reads as `trainer.snapshot`: the newest published version."""

    def __init__(self, reader):
        self.reader = reader

    @property
    def snapshot(self):
        return self.reader.current()


class ForwardedIds:
    """The id store's `put`, sent to the ingest process (which holds the store)."""

    def __init__(self, socket):
        self.socket = socket

    def put(self, ids, x, tags=None):
        x = np.ascontiguousarray(x)
        meta = {"dtype": x.dtype.str, "shape": list(x.shape)}
        frames = [np.ascontiguousarray(ids, dtype="<i8"), x]
        if tags is not None:                 # (multi-hot (m, T) bool, names): a frame of 0/1 bytes
            meta["tag_names"] = list(tags[1])
            frames.append(np.ascontiguousarray(tags[0], dtype=np.uint8))
        header = msgpack.packb(meta)
        try:
            self.socket.send_multipart([header, *frames],
                                       flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("ingest is not taking stored inputs; %d ids not kept", len(ids))


class PredictProcess(ChildProcess):
    role = "predict-0"

    def startup(self):
        cfg = self.config
        warm_up(cfg.model.get("dtype", "float32"), training=False)   # before the first request
        self.reader = SnapshotReader(self.run_dir.snapshots)
        forward = self.ctx.socket(zmq.PUSH)
        forward.setsockopt(zmq.LINGER, 0)
        forward.setsockopt(zmq.SNDHWM, 10_000)
        forward.connect(self.run_dir.id_forward)
        self._sockets.append(forward)
        if cfg.predict_workers > 1:
            sock, routing_frames = self._behind_proxy(), 2
        else:
            sock, routing_frames = self.bind(zmq.ROUTER, cfg.predict, "predict"), 1
        self.predictor = PredictServer(sock, SharedSnapshot(self.reader), self.metrics, self.limits,
                                       ForwardedIds(forward), cfg.predict_batch_window_us,
                                       cfg.predict_batch_max_rows, cfg.predict_spin_us,
                                       routing_frames=routing_frames, max_tags=cfg.max_tags)
        self.metrics.add_live_collector(self._live_values)
        self.poller = zmq.Poller()
        self.poller.register(self.ctl, zmq.POLLIN)
        self.predictor.start()

    def _behind_proxy(self):
        """The worker's socket when several share the predict endpoint: a ROUTER connected
        to the supervisor's proxy (supervisor/proxy.py), which checked the client's
        handshake and the message size already."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.run_dir.predict_backend)
        self._sockets.append(sock)
        return sock

    def _live_values(self):
        return satisficing_values(self.predictor.latencies, self.config.predict_p99_bound_ms / 1e3)

    def status_part(self):
        snap = self.reader.snapshot
        return {"model_version": snap.version if snap is not None else None,
                "requests_answered": self.predictor.latencies.count,
                "satisficing": satisficing(self.predictor.latencies, self.config.predict_p99_bound_ms / 1e3)}

    def handle_op(self, message):
        """`set` of the worker's own live settings (the supervisor sends those the trainer
        has validated)."""
        if message.op != "set":
            return super().handle_op(message)
        settings = message.header.get("settings") or {}
        unknown = set(settings) - {"predict_p99_bound_ms"}
        if unknown:
            raise ProtocolError("bad_setting", f"the predict worker takes none of {sorted(unknown)}")
        self.config = dataclasses.replace(self.config, **settings).validate()
        return {k: getattr(self.config, k) for k in settings}

    def step(self, timeout_ms):
        events = dict(self.poller.poll(timeout_ms))
        self.serve_control(events)
        if not self.predictor.is_alive():
            log.error("the predict thread stopped; the worker exits")
            self.should_exit = True

    def shutdown(self):
        stop_threads(self.predictor)
        self.reader.close()
