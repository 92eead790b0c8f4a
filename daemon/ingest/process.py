"""The ingest process: the ingest socket, the write-ahead log, acknowledgements.

It appends every accepted message to the log and acknowledges it after the grouped
fsync; then it stores the newest durable lsn in the shared positions, and the trainer
reads the log up to there.  Backpressure: while the trainer is `queue_size` messages
behind (durable - consumed), or the messages read and not yet consumed reach the memory
bound (ingest.budget), ingest stops reading its socket and ZeroMQ's high-water mark
pushes back on producers.  Delayed labels: predict workers push the inputs of
requests that carried ids to this process, which keeps the id store.
"""
from __future__ import annotations

import logging
import os

import msgpack
import numpy as np
import zmq

from learnd.clients import protocol
from learnd.clients.protocol import ProtocolError
from learnd.daemon.ingest.budget import Backlog, IngestBudget, queued_values
from learnd.daemon.ingest.checks import IngestChecker, train_fields
from learnd.daemon.ingest.idstore import IdStore
from learnd.daemon.ingest.schema import Schema
from learnd.daemon.ingest.splits import SplitAssigner
from learnd.daemon.ingest.stage import IngestStage
from learnd.daemon.log.positions import Positions
from learnd.daemon.log.wal import LogReader, WriteAheadLog
from learnd.daemon.supervisor.child import ChildProcess
from learnd.daemon.training.checkpoints import CheckpointStore, newest_consumed_state

log = logging.getLogger("learnd.ingest")


def log_directory(config, run):
    """The log's directory: the state dir's wal/, or (--no-wal) a queue in memory."""
    return os.path.join(config.state_dir, "wal") if config.wal else run.queue


class IngestProcess(ChildProcess):
    role = "ingest"
    BUSY_POLL_MS = 2

    def startup(self):
        cfg = self.config
        self.positions = Positions(self.run_dir.positions)
        self.wal = WriteAheadLog(log_directory(cfg, self.run_dir)).open()
        state = newest_consumed_state(CheckpointStore(cfg.state_dir, cfg.checkpoint_keep, writer=False),
                                      cfg.dedupe_window)
        self.schema = Schema(cfg.model.get("input_dim"), cfg.model.get("task"), cfg.model.get("n_outputs"))
        for key, value in state.schema.items():
            if value is not None:
                setattr(self.schema, key, value)
        self.id_store = IdStore(cfg.id_store_size, cfg.id_ttl_s)
        splitter = SplitAssigner((1.0 - cfg.dev_fraction - cfg.test_fraction, cfg.dev_fraction,
                                  cfg.test_fraction), cfg.train_dev_fraction)
        dtype = cfg.model.get("dtype", "float32")
        self.checker = IngestChecker(self.schema, dtype, self.id_store, self.limits, cfg.model,
                                     splitter, self.metrics.delayed_labels, cfg.max_abs_value, cfg.max_tags)
        self.accepted = state.dedupe
        self.budget = IngestBudget.from_config(cfg)
        self.backlog = Backlog()
        self.wal.last_lsn = max(self.wal.last_lsn, state.last_lsn)
        self._take_logged_records(state.last_lsn)
        self.positions.durable = self.wal.last_lsn
        self.ingest = self.bind(zmq.ROUTER, cfg.ingest, "ingest", self.budget.configure,
                                self.budget.max_message)
        self.ids = self.ctx.socket(zmq.PULL)
        self.ids.setsockopt(zmq.LINGER, 0)
        self.ids.bind(self.run_dir.id_forward)
        self._sockets.append(self.ids)
        # Without the write-ahead log the queue is on a memory file system: an
        # acknowledgement then means "queued", and no fsync is needed.
        self.stage = IngestStage(self.ingest, self.checker, self.accepted, self.wal, self.metrics,
                                 self.limits, cfg.wal_fsync_ms if cfg.wal else 0.0,
                                 lambda item: self.backlog.add(item.lsn, item.nbytes), self._reject)
        if not cfg.wal:
            self.wal.sync = lambda: None
        self.metrics.add_live_collector(lambda: {
            "learnd_delayed_label_store_rows": ("Inputs kept for delayed labels.", len(self.id_store)),
            **queued_values(self.queued_bytes(), self.budget)})
        self.poller = zmq.Poller()
        for sock in (self.ctl, self.ids, self.ingest):
            self.poller.register(sock, zmq.POLLIN)
        self.reading = True

    def _take_logged_records(self, after_lsn):
        """What the log holds past the newest checkpoint was accepted too: remember each
        (producer, seq), and fix the schema from it when no checkpoint knew it."""
        reader = LogReader(self.wal.directory, after_lsn)
        taken = 0
        while True:
            records = reader.read(self.wal.last_lsn, max_records=256)
            if not records:
                break
            for record in records:
                frames = record.frames
                header = msgpack.unpackb(frames[0], raw=False)
                try:
                    producer, seq, _ = train_fields(header)
                    if not self.schema.known:
                        self.checker.item(protocol.decode([b"", *frames], self.limits))
                except ProtocolError as exc:   # it passed these checks when it was logged
                    log.error("a logged record no longer passes its checks: %s", exc)
                    continue
                self.accepted.add(producer, seq)
                # Counted against the bound until the trainer consumes it, like a new message.
                self.backlog.add(record.lsn, sum(len(f) for f in frames))
                taken += 1
        reader.close()
        if taken:
            log.info("%d logged messages are not yet in a checkpoint; their resends will be "
                     "acknowledged as duplicates", taken)

    def _reject(self, sock, identity, exc, echo):
        self.metrics.rejected.labels(exc.code).inc()
        sock.send_multipart([identity, *protocol.encode(protocol.error(exc.code, exc.message, **echo))],
                            copy=False)

    def queued_bytes(self):
        """Bytes of the messages read and not yet consumed by the trainer."""
        return self.stage.pending_bytes + self.backlog.bytes

    def step(self, timeout_ms):
        self.backlog.consumed_through(self.positions.consumed)
        room = self.config.queue_size - (self.positions.durable - self.positions.consumed) - len(self.stage.pending)
        if self.queued_bytes() >= self.budget.limit:
            room = 0
        if (room > 0) != self.reading:
            self.reading = room > 0
            if not self.reading:
                self.metrics.ingest_paused.inc()
            self.poller.modify(self.ingest, zmq.POLLIN if self.reading else 0)
        busy = self.stage.pending or not self.reading
        events = dict(self.poller.poll(self.BUSY_POLL_MS if busy else timeout_ms))
        self.serve_control(events)
        if self.ids in events:
            self._take_forwarded_ids()
        if self.ingest in events and self.reading:
            for _ in range(max(room, 0)):
                if self.queued_bytes() >= self.budget.limit:
                    break
                try:
                    frames = self.ingest.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                try:
                    self.stage.handle(frames)
                except Exception as exc:  # a bug or a full disk must not stop ingest: answer, count, log
                    log.exception("failed to handle a message")
                    self._reject(self.ingest, frames[0], ProtocolError("internal", f"{type(exc).__name__}: {exc}"), {})
        self.stage.flush()
        if not self.stage.pending:      # every record appended so far is synced
            self.positions.durable = self.wal.last_lsn

    def _take_forwarded_ids(self):
        for _ in range(1000):
            try:
                frames = self.ids.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            header = msgpack.unpackb(frames[0], raw=False)
            ids = np.frombuffer(frames[1], dtype="<i8")
            x = np.frombuffer(frames[2], dtype=header["dtype"]).reshape(header["shape"])
            tags = None
            if "tag_names" in header:      # checked by the predict worker
                names = tuple(header["tag_names"])
                tags = (np.frombuffer(frames[3], dtype=np.uint8).reshape(len(ids), len(names)).astype(bool), names)
            self.id_store.put(ids, x, tags)

    def status_part(self):
        return {"durable_lsn": self.positions.durable, "pending_acks": len(self.stage.pending),
                "delayed_label_store_rows": len(self.id_store), "reading": self.reading,
                "queued_bytes": self.queued_bytes(), **self.budget.status()}

    def shutdown(self):
        if self.stage.pending:
            self.stage.flush(force=True)
            self.positions.durable = self.wal.last_lsn
        self.wal.close()
        self.positions.close()
