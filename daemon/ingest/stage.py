"""The ingest stage: decode, check, dedupe, log and acknowledge each train message.

Used by the single-process daemon (which hands each accepted item to its trainer thread)
and by the ingest process of the process tree (where the trainer reads the log itself,
so nothing is handed on).  A message is acknowledged only once it is durable: with the
write-ahead log, after the grouped fsync that covers it.
"""
from __future__ import annotations

import time

import numpy as np

from learnd.clients import protocol
from learnd.clients.protocol import ProtocolError
from learnd.daemon.ingest.checks import train_fields
from learnd.daemon.ingest.splits import NAMES as SPLIT_NAMES


class IngestStage:
    def __init__(self, socket, checker, accepted, wal, metrics, limits, fsync_ms, deliver, reject):
        """socket: the ingest ROUTER.  checker: IngestChecker.  accepted: the Dedupe of
        what was taken.  wal: WriteAheadLog or None.  deliver(item): called once an
        accepted item is durable, or None.  reject(socket, identity, exc, echo): answers
        and counts a refused message."""
        self.socket = socket
        self.checker = checker
        self.accepted = accepted
        self.wal = wal
        self.metrics = metrics
        self.limits = limits
        self.fsync_s = fsync_ms / 1e3
        self.deliver = deliver
        self.reject = reject
        self.pending = []          # (identity, reply, item) waiting for the log's fsync
        self.pending_bytes = 0     # their items' bytes: part of what ingest's bound counts
        self._pending_since = 0.0

    def handle(self, frames):
        identity, echo = frames[0], {}
        try:
            message = protocol.decode(frames[1:], self.limits)
            if isinstance(message.header.get("seq"), int):
                echo["seq"] = message.header["seq"]
            if message.op != "train":
                raise ProtocolError("unknown_op", f"the ingest socket takes 'train', not {message.op!r}")
            producer, seq, _ = train_fields(message.header)
            if self.accepted.seen(producer, seq):
                self.metrics.ingest_messages.labels("duplicate").inc()
                reply = protocol.ok(seq=seq, accepted=0, duplicate=True)
                if self.pending:   # the original may still await its fsync: ack after it
                    self.pending.append((identity, reply, None))
                else:
                    self._send(identity, reply)
                return
            item = self.checker.item(message)
        except ProtocolError as exc:
            self.metrics.ingest_messages.labels("rejected").inc()
            self.reject(self.socket, identity, exc, echo)
            return
        reply = protocol.ok(seq=seq, accepted=int(item.x.shape[0]))
        if self.wal is None:
            self._count_accepted(producer, seq, item)
            if self.deliver is not None:
                self.deliver(item)
            self._send(identity, reply)
            return
        if "x" not in message.arrays:   # log the resolved inputs: the id store is not durable
            kept = {k: message.arrays[k] for k in ("y", "w", "ids") if k in message.arrays}
            header = dict(message.header)
            if item.tags is not None:         # sent, or kept with the ids by their predict request
                kept["tags"] = item.tags.astype(np.uint8)
                header["tag_names"] = list(item.tag_names)
            logged = protocol.encode(header, {"x": item.x, **kept})
        else:
            logged = frames[1:]
        # With the rows' split codes: the trainer trusts the checked, checksummed record.
        item.lsn = self.wal.append([f.buffer if hasattr(f, "buffer") else f for f in logged[1:]], item.codes)
        # Only a logged message counts as seen: one the log refused (a full disk) must be
        # taken again when its producer resends it, not acknowledged as a duplicate.
        self._count_accepted(producer, seq, item)
        if not self.pending:
            self._pending_since = time.monotonic()
        self.pending.append((identity, reply, item))
        self.pending_bytes += item.nbytes
        if self.fsync_s == 0:   # the policy "fsync every message"
            self.flush(force=True)

    def _count_accepted(self, producer, seq, item):
        self.accepted.add(producer, seq)
        self.metrics.ingest_messages.labels("accepted").inc()
        for code, rows in enumerate(np.bincount(item.codes, minlength=len(SPLIT_NAMES)).tolist()):
            if rows:
                self.metrics.ingest_rows.labels(SPLIT_NAMES[code]).inc(rows)

    def flush(self, force=False):
        """fsync the log once for every message waiting, then hand them on and ack them;
        True when something was flushed."""
        if not self.pending:
            return False
        if not force and time.monotonic() - self._pending_since < self.fsync_s:
            return False
        t0 = time.perf_counter()
        self.wal.sync()
        self.metrics.wal_fsync_seconds.observe(time.perf_counter() - t0)
        for identity, reply, item in self.pending:
            if item is not None and self.deliver is not None:
                self.deliver(item)
            self._send(identity, reply)
        self.pending.clear()
        self.pending_bytes = 0
        return True

    def _send(self, identity, header):
        self.socket.send_multipart([identity, *protocol.encode(header)], copy=False)
