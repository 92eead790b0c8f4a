"""Client classes: Producer (train batches), Predictor (predictions), Control (ops).

Each talks to one daemon socket through a DEALER and follows the Lazy Pirate pattern
of the ZeroMQ guide: wait with a timeout, and on silence close the socket (LINGER 0),
reconnect and resend, a bounded number of times.
"""
from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import zmq

from . import protocol

DEFAULT_INGEST = "tcp://127.0.0.1:5555"
DEFAULT_PREDICT = "tcp://127.0.0.1:5556"
DEFAULT_CONTROL = "tcp://127.0.0.1:5557"


# Replies are trusted more than requests: a status or gradcheck result can be large.
_REPLY_LIMITS = protocol.Limits(max_header_bytes=16 * 1024 * 1024)


class LearndError(RuntimeError):
    """The daemon answered with an error; `code` is its stable error code."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Unreachable(TimeoutError):
    """No reply after every retry."""


class _Connection:
    """A DEALER to one address that can be thrown away and made again."""

    def __init__(self, address, timeout, retries, context=None):
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self._own_context = context is None
        self.ctx = context or zmq.Context()
        self.sock = None
        self._connect()

    def _connect(self):
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.address)

    def _send(self, header, arrays=None):
        self.sock.send_multipart(protocol.encode(header, arrays), copy=False)

    def _recv(self, timeout):
        """A decoded reply, or None after `timeout` seconds."""
        if not self.sock.poll(max(int(timeout * 1000), 0), zmq.POLLIN):
            return None
        return protocol.decode(self.sock.recv_multipart(copy=False), _REPLY_LIMITS, reply=True)

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        if self._own_context:
            self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _RequestReply(_Connection):
    """One request at a time, matched to its reply by id, retried on silence."""

    def __init__(self, address, timeout, retries, context=None):
        super().__init__(address, timeout, retries, context)
        self._ids = itertools.count(1)

    def request(self, header, arrays=None):
        rid = next(self._ids)
        header = {**header, "id": rid}
        for attempt in range(self.retries + 1):
            self._send(header, arrays)
            deadline = time.monotonic() + self.timeout
            while True:
                reply = self._recv(deadline - time.monotonic())
                if reply is None:
                    break
                if reply.header.get("id") != rid:
                    continue  # a late answer to an earlier attempt
                if not reply.header.get("ok"):
                    err = reply.header.get("error", {})
                    raise LearndError(err.get("code", "unknown"), err.get("message", ""))
                return reply
            self._connect()
        raise Unreachable(f"no reply from {self.address} after {self.retries + 1} attempts "
                          f"of {self.timeout:g} s")


@dataclass
class Prediction:
    y: np.ndarray
    model_version: int


class Predictor(_RequestReply):
    """predict(X) -> Prediction(y, model_version); predict_many for many in flight."""

    def __init__(self, address=DEFAULT_PREDICT, timeout=5.0, retries=3, context=None):
        super().__init__(address, timeout, retries, context)

    def predict(self, X, output="label", ids=None):
        arrays = {"x": np.asarray(X)}
        if ids is not None:
            arrays["ids"] = np.asarray(ids, dtype=np.int64)
        reply = self.request({"op": "predict", "output": output}, arrays)
        return Prediction(reply.arrays["y"], reply.header["model_version"])

    def predict_many(self, batches, output="label", window=32):
        """Predictions for each X in `batches`, keeping up to `window` requests in flight."""
        batches = list(batches)
        results = [None] * len(batches)
        base = next(self._ids)
        pending = {}
        sent = 0
        deadline = time.monotonic() + self.timeout * (self.retries + 1)
        while sent < len(batches) or pending:
            while sent < len(batches) and len(pending) < window:
                self._send({"op": "predict", "output": output, "id": base + sent},
                           {"x": np.asarray(batches[sent])})
                pending[base + sent] = sent
                sent += 1
            reply = self._recv(deadline - time.monotonic())
            if reply is None:
                raise Unreachable(f"{len(pending)} predictions unanswered by {self.address}")
            index = pending.pop(reply.header.get("id"), None)
            if index is None:
                continue
            if not reply.header.get("ok"):
                err = reply.header.get("error", {})
                raise LearndError(err.get("code", "unknown"), err.get("message", ""))
            results[index] = Prediction(reply.arrays["y"], reply.header["model_version"])
        self._ids = itertools.count(base + len(batches))
        return results


class Control(_RequestReply):
    """status(), set(**settings), checkpoint(), gradcheck(), rollback(), freeze(),
    unfreeze(), shutdown()."""

    def __init__(self, address=DEFAULT_CONTROL, timeout=10.0, retries=2, context=None):
        super().__init__(address, timeout, retries, context)

    def _op(self, op, **fields):
        return self.request({"op": op, **fields}).header["result"]

    def status(self):
        return self._op("status")

    def set(self, **settings):
        return self._op("set", settings=settings)

    def checkpoint(self):
        return self._op("checkpoint")

    def gradcheck(self):
        return self._op("gradcheck")

    def rollback(self):
        """Make the best dev model (early stopping's) the live, serving one."""
        return self._op("rollback")

    def freeze(self):
        return self._op("freeze")

    def unfreeze(self):
        return self._op("unfreeze")

    def shutdown(self):
        return self._op("shutdown")


@dataclass
class Rejected:
    seq: int
    code: str
    message: str


class Producer(_Connection):
    """Sends train batches with its producer id and rising seq, keeping at most `window`
    unacknowledged; on `timeout` seconds of silence it reconnects and resends them all
    (the daemon's (producer, seq) dedupe keeps a resend from training twice).

    Batches the daemon refuses are kept in `rejected`; `flush()` waits for every ack.
    """

    def __init__(self, address=DEFAULT_INGEST, producer_id=None, window=16, timeout=5.0,
                 retries=5, first_seq=0, context=None):
        super().__init__(address, timeout, retries, context)
        self.producer_id = producer_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.window = window
        self.next_seq = first_seq
        self._pending: OrderedDict[int, list] = OrderedDict()   # seq -> [frames, last send time, attempts]
        self.acked = 0
        self.acked_rows = 0
        self.duplicates = 0
        self.rejected: list[Rejected] = []

    def send(self, X, y=None, w=None, ids=None, split="auto", **header):
        """Queue one batch (blocks while `window` batches await their acks); returns its seq."""
        while len(self._pending) >= self.window:
            self._pump(self.timeout)
        arrays = {}
        if X is not None:
            arrays["x"] = np.asarray(X)
        if y is not None:
            arrays["y"] = np.asarray(y)
        if w is not None:
            arrays["w"] = np.asarray(w)
        if ids is not None:
            arrays["ids"] = np.asarray(ids, dtype=np.int64)
        seq = self.next_seq
        self.next_seq += 1
        frames = protocol.encode({"op": "train", "producer": self.producer_id, "seq": seq,
                                  "split": split, **header}, arrays)
        frames = [bytes(f) for f in frames]   # kept for resends: own the bytes
        self.sock.send_multipart(frames)
        self._pending[seq] = [frames, time.monotonic(), 0]
        self._pump(0)
        return seq

    def _pump(self, timeout):
        """Take the acks that arrive within `timeout`; resend on silence."""
        reply = self._recv(timeout)
        while reply is not None:
            self._on_reply(reply)
            reply = self._recv(0)
        if self._pending:
            oldest = next(iter(self._pending.values()))
            if time.monotonic() - oldest[1] >= self.timeout:
                self._resend()

    def _on_reply(self, reply):
        seq = reply.header.get("seq")
        if seq not in self._pending:
            return
        del self._pending[seq]
        if reply.header.get("ok"):
            self.acked += 1
            self.acked_rows += reply.header.get("accepted", 0)
            self.duplicates += bool(reply.header.get("duplicate"))
        else:
            err = reply.header.get("error", {})
            self.rejected.append(Rejected(seq, err.get("code", "unknown"), err.get("message", "")))

    def _resend(self):
        attempts = max(entry[2] for entry in self._pending.values()) + 1
        if attempts > self.retries:
            raise Unreachable(f"{len(self._pending)} batches unacknowledged by {self.address} "
                              f"after {self.retries} resends")
        self._connect()
        now = time.monotonic()
        for entry in self._pending.values():
            self.sock.send_multipart(entry[0])
            entry[1], entry[2] = now, attempts

    @property
    def in_flight(self):
        return len(self._pending)

    def flush(self, timeout=None):
        """Wait until every batch sent is acknowledged or rejected."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            if deadline is not None and time.monotonic() >= deadline:
                raise Unreachable(f"{len(self._pending)} batches still unacknowledged")
            self._pump(min(self.timeout, 0.1))

    def close(self):
        self.flush_quietly()
        super().close()

    def flush_quietly(self):
        try:
            if self.sock is not None:
                self.flush()
        except Unreachable:
            pass

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.flush()
        super().close()
