"""The trainer process: reads the log from its own position, trains, publishes, checkpoints.

The training thread is the single-process daemon's Trainer; this process feeds it from
the write-ahead log instead of from ingest's hand: each record up to the durable lsn
ingest announces is decoded and queued; a record ingest checked carries its rows' splits
and is trusted (its checksum matched), an older one is checked again (the same
deterministic checks and split hash ingest applied).  A checkpoint records the log position it holds
(`last_lsn`), so after a restart the trainer reads on from there: every acknowledged row
is trained exactly once.  Each new model version is published into shared memory for the
predict workers and on the snapshots socket for followers.
"""
from __future__ import annotations

import logging
import os
import queue
import time

import zmq

from learnd.clients import protocol
from learnd.clients.protocol import ProtocolError
from learnd.daemon.ingest.budget import IngestBudget
from learnd.daemon.ingest.checks import IngestChecker, train_fields
from learnd.daemon.ingest.idstore import IdStore
from learnd.daemon.ingest.process import log_directory
from learnd.daemon.ingest.schema import Schema
from learnd.daemon.ingest.splits import SplitAssigner
from learnd.daemon.log.positions import Positions
from learnd.daemon.log.wal import LogReader, WriteAheadLog
from learnd.daemon.serving.broadcast import SnapshotBroadcast
from learnd.daemon.serving.snapshots import SnapshotPublisher
from learnd.daemon.supervisor import control as control_ops
from learnd.daemon.supervisor.child import ChildProcess
from learnd.daemon.training.checkpoints import CheckpointStore
from learnd.daemon.training.trainer import Trainer

log = logging.getLogger("learnd.trainer")

FEED_RECORDS = 64        # log records read per pass, at most
# Bytes of decoded messages the training thread's queue holds, at most (past one message),
# and at most this share of ingest's bound: the backlog waits in the log on disk, memory
# holds what is about to be trained.
FEED_BYTES = 32 * 1024 * 1024
FEED_SHARE = 4
DRAIN_TIMEOUT_S = 60.0


class TrainerProcess(ChildProcess):
    role = "trainer"
    POLL_MS = 5

    def startup(self):
        cfg = self.config
        self.positions = Positions(self.run_dir.positions)
        self.schema = Schema(cfg.model.get("input_dim"), cfg.model.get("task"), cfg.model.get("n_outputs"))
        self.checkpoints = CheckpointStore(cfg.state_dir, keep=cfg.checkpoint_keep)
        directory = log_directory(cfg, self.run_dir)
        os.makedirs(directory, exist_ok=True)
        # The trainer only trims the log (segments older than every kept checkpoint);
        # ingest alone appends to it.
        self.trainer = Trainer(cfg, self.schema, self.metrics, self.checkpoints, WriteAheadLog(directory))
        self.trainer.publisher = SnapshotPublisher(self.run_dir.snapshots)
        payload, path = self.checkpoints.load_newest(lambda p: (self.trainer.restore(p), p)[1],
                                                     lambda p, e: self.metrics.checkpoint_load_failures.inc())
        if path is not None:
            log.info("resumed from %s: %d batches, %d samples trained", path,
                     self.trainer.batches_trained, self.trainer.samples_trained)
            self.trainer.apply_configured_settings()
        dtype = self.trainer.model.dtype if self.trainer.model is not None else cfg.model.get("dtype", "float32")
        splitter = SplitAssigner((1.0 - cfg.dev_fraction - cfg.test_fraction, cfg.dev_fraction,
                                  cfg.test_fraction), cfg.train_dev_fraction)
        # Logged records always carry their inputs (ingest resolved delayed labels before
        # logging them), so this checker's id store stays empty.
        self.checker = IngestChecker(self.schema, dtype, IdStore(1, 1.0), self.limits, cfg.model,
                                     splitter, self.metrics.delayed_labels, cfg.max_abs_value, cfg.max_tags)
        self.reader = LogReader(directory, self.trainer.last_lsn)
        self.feed_bytes = min(FEED_BYTES, IngestBudget.from_config(cfg).limit // FEED_SHARE)
        # What the log held past the checkpoint when this process started is the replay
        # of a restart (learnd_wal_replayed_messages_total), read like any new record.
        self.replay_until = self.positions.durable
        self.positions.consumed = self.trainer.last_lsn
        snapshots = self.bind(zmq.XPUB, cfg.snapshots, "snapshots", SnapshotBroadcast.configure)
        self.trainer.broadcast = SnapshotBroadcast(snapshots)
        self.ops = control_ops.Control(self)
        self.poller = zmq.Poller()
        self.poller.register(self.ctl, zmq.POLLIN)
        self.metrics.add_live_collector(lambda: self.trainer.live_values(self._backlog()))
        self.trainer.start()

    def _backlog(self):
        """Messages logged and not yet taken into the model: the log's part of the queue
        plus what waits in the thread's queue."""
        return max(0, self.positions.durable - self.reader.position) + self.trainer.queue.qsize()

    # `control_ops.Control` asks its server for these.
    def status(self):
        return self.trainer.status_part(self._backlog())

    def handle_op(self, message):
        if message.op == "shutdown":
            raise ProtocolError("unknown_op", "shutdown is the supervisor's")
        return self.ops.handle(message)

    def status_part(self):
        return {"last_lsn": self.trainer.last_lsn, "ready": self.trainer.ready.is_set(),
                "failed": self.trainer.failure is not None, **self.status()}

    def step(self, timeout_ms):
        behind = self.reader.position < self.positions.durable
        room = not self.trainer.queue.full() and self.trainer.queued_bytes < self.feed_bytes
        events = dict(self.poller.poll(0 if behind and room else timeout_ms))
        self.serve_control(events)
        self._feed()
        self.positions.consumed = self.trainer.last_lsn
        if self.trainer.stopped.is_set():
            log.error("the training thread stopped; the trainer process exits")
            self.should_exit = True

    def _feed(self, block=False):
        """Queue the log's next records for the training thread, as far as it has room
        (block: wait for room, when draining)."""
        q = self.trainer.queue
        room = FEED_RECORDS if block else min(FEED_RECORDS, q.maxsize - q.qsize())
        if room <= 0:
            return 0
        records = []
        while len(records) < room and self.trainer.queued_bytes < self.feed_bytes:
            read = self.reader.read(self.positions.durable, max_records=1)
            if not read:
                break
            records += read
            record = read[0]
            try:
                message = protocol.decode([b"", *record.frames], self.limits)
                producer, seq, _ = train_fields(message.header)
                if self.trainer.dedupe.seen(producer, seq):
                    continue
                item = self.checker.logged_item(message, record)
                if record.lsn <= self.replay_until:
                    self.metrics.wal_replayed.inc()
            except ProtocolError as exc:  # it passed these checks when it was logged
                log.error("write-ahead log record %d no longer passes its checks: %s", record.lsn, exc)
                continue
            while True:
                try:
                    q.put(item, timeout=1.0)
                    self.trainer.enqueued_bytes += item.nbytes
                    break
                except queue.Full:
                    if self.trainer.stopped.is_set():
                        return len(records)
        return len(records)

    def shutdown(self):
        """The thread checkpoints and stops.  With the write-ahead log, what is logged and
        not yet consumed stays there for the next start (a bounded stop: the step in
        flight and one checkpoint); without it, the log on the run dir's memory file
        system goes with this run, so it is trained first."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while (not self.trainer.leaves_backlog_in_log and self.reader.position < self.positions.durable
               and not self.trainer.stopped.is_set() and time.monotonic() < deadline):
            self._feed(block=True)
        self.trainer.stop_requested.set()
        self.trainer.stopped.wait(max(1.0, deadline - time.monotonic()))
        self.positions.consumed = self.trainer.last_lsn
        self.positions.close()
        self.reader.close()
