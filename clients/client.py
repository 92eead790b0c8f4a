"""Client classes: Producer (train batches), Predictor (predictions), Control (ops).

Each talks to one daemon socket through a DEALER and follows the Lazy Pirate pattern
of the ZeroMQ guide: wait with a timeout, and on silence close the socket (LINGER 0),
reconnect and resend, a bounded number of times.

With `curve_server_key` (the daemon's public key) and `curve_client_cert` (this
client's NAME.key_secret) every socket, the first and each one made by a reconnect,
is a CURVE client.  A socket monitor watches the handshake: when the daemon refuses
the key, or one end speaks CURVE and the other not, the call raises Unauthorized at
once instead of waiting out its retries; so do handshakes that fail
FAILED_HANDSHAKES_FINAL times in a row (a wrong server key, or a CURVE daemon whose
mismatch this client did not get to see, protocol notes in clients/handshake.py).
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

from . import handshake, protocol
from .keys import load_public, load_secret

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


class Unauthorized(LearndError):
    """The daemon refused this client at the handshake (code "unauthorized"): its CURVE
    key is not allowed there, or one end uses CURVE and the other does not."""

    def __init__(self, message):
        super().__init__("unauthorized", message)


class Unreachable(TimeoutError):
    """No reply after every retry."""


class _Connection:
    """A DEALER to one address that can be thrown away and made again."""

    # ZeroMQ retries a failed handshake every 100 ms; this many failures in a row without
    # one success is no passing fault (a daemon restarting refuses connections instead).
    FAILED_HANDSHAKES_FINAL = 3

    def __init__(self, address, timeout, retries, context=None, curve_server_key=None,
                 curve_client_cert=None):
        if (curve_server_key is None) != (curve_client_cert is None):
            raise ValueError("CURVE needs both curve_server_key (the daemon's public key or its "
                             "NAME.key file) and curve_client_cert (this client's NAME.key_secret)")
        self.address = address
        self.timeout = timeout
        self.retries = retries
        # Read once: a reconnect must not meet a key file that changed or vanished.
        self._server_key = None if curve_server_key is None else load_public(curve_server_key)
        self._client_keys = None if curve_client_cert is None else load_secret(curve_client_cert)
        self._own_context = context is None
        self.ctx = context or zmq.Context()
        self.sock = None
        self._handshakes = None
        self._poller = None
        self.handshake_failure = None     # the last non-final handshake failure, for Unreachable
        self._refused = False             # the daemon refused this socket's handshake
        self._failed_handshakes = 0       # in a row, on this socket
        self._connect()

    @property
    def curve(self):
        return self._server_key is not None

    def _connect(self):
        self._close_socket()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if self.curve:
            self.sock.curve_serverkey = self._server_key
            self.sock.curve_publickey, self.sock.curve_secretkey = self._client_keys
        self._handshakes = handshake.monitor(self.sock, self.ctx, handshake.HANDSHAKE_FAILURES
                                             | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._handshakes, zmq.POLLIN)
        self._send_poller = zmq.Poller()
        self._send_poller.register(self.sock, zmq.POLLOUT)
        self._send_poller.register(self._handshakes, zmq.POLLIN)
        self._refused = False
        self._failed_handshakes = 0
        self.sock.connect(self.address)

    def _send(self, header, arrays=None):
        self._send_frames(protocol.encode(header, arrays), copy=False)

    def _send_frames(self, frames, copy=True):
        """Queue the message; True once queued, False when it could not be queued within
        `timeout` seconds (the callers then wait for a reply that does not come and retry
        as on silence); Unauthorized when the handshake is refused meanwhile.

        A DEALER's send blocks while it has no connection to queue on, and a socket
        whose handshake the daemon refused may have none between its retries: a plain
        blocking send could then wait for good instead of reporting the refusal."""
        if self._refused:
            # A refused socket never tries again; a fresh one lets this call meet a
            # changed allowlist (and be refused again, once, if it has not changed).
            self._connect()
        deadline = time.monotonic() + max(self.timeout, 0.0)
        while True:
            try:
                # Multipart is atomic: only the first frame can meet a full or absent queue.
                self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
                return True
            except zmq.Again:
                if not self._wait(self._send_poller, deadline):
                    return False

    def _recv(self, timeout):
        """A decoded reply, or None after `timeout` seconds; Unauthorized when the
        handshake was refused."""
        if not self._wait(self._poller, time.monotonic() + max(timeout, 0.0)):
            return None
        return protocol.decode(self.sock.recv_multipart(copy=False), _REPLY_LIMITS, reply=True)

    def _wait(self, poller, deadline):
        """True once `poller` finds the socket ready (to read or to send, as registered),
        False at `deadline`; handshake events meanwhile go to _on_handshake, which raises
        Unauthorized on a refusal."""
        while True:
            wait_ms = max(int((deadline - time.monotonic()) * 1000), 0)
            events = dict(poller.poll(wait_ms))
            if self.sock in events:
                return True
            if self._handshakes in events:
                self._on_handshake(handshake.read_event(self._handshakes))
            elif wait_ms == 0:
                return False

    def _on_handshake(self, outcome):
        if outcome is None:
            return
        if outcome == handshake.SUCCEEDED:
            self._failed_handshakes = 0
            return
        self._failed_handshakes += 1
        if outcome == handshake.KEY_REFUSED:
            message = (f"{self.address} refused this client's CURVE key: its public certificate "
                       "is not in the daemon's allowlist for this socket")
        elif outcome == handshake.MECHANISM_MISMATCH:
            message = (f"{self.address} does not use CURVE: connect without a server key and client key"
                       if self.curve else
                       f"{self.address} requires CURVE: give the daemon's public key and a client key "
                       "(--server-key FILE --client-key FILE)")
        else:
            self.handshake_failure = (
                "the CURVE handshake failed: the server key is not the daemon's, or the daemon does "
                "not use CURVE" if self.curve else
                "the daemon closed the connection during the handshake: it may require CURVE "
                "(--server-key FILE --client-key FILE)")
            if self._failed_handshakes < self.FAILED_HANDSHAKES_FINAL:
                return
            message = f"{self.address}: {self._failed_handshakes} handshakes failed in a row; " \
                      f"{self.handshake_failure}"
        self._refused = True
        raise Unauthorized(message)

    def _unreachable(self, text):
        note = f" ({self.handshake_failure})" if self.handshake_failure else ""
        return Unreachable(text + note)

    def _close_socket(self):
        if self._handshakes is not None:
            self._handshakes.close(linger=0)
            self._handshakes = None
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def close(self):
        self._close_socket()
        if self._own_context:
            self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _RequestReply(_Connection):
    """One request at a time, matched to its reply by id, retried on silence."""

    def __init__(self, address, timeout, retries, context=None, **curve):
        super().__init__(address, timeout, retries, context, **curve)
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
        raise self._unreachable(f"no reply from {self.address} after {self.retries + 1} attempts "
                                f"of {self.timeout:g} s")


@dataclass
class Prediction:
    y: np.ndarray
    model_version: int
    member: object = None     # a population's answering member id, or "ensemble"; None for one model


@dataclass
class Adversarial:
    x: np.ndarray             # FGSM examples x + epsilon * sign(dJ/dx), in input units
    model_version: int
    member: object = None


class Predictor(_RequestReply):
    """predict(X) -> Prediction(y, model_version, member); predict_many for many in flight.

    curve_server_key / curve_client_cert: see the module docstring.
    """

    def __init__(self, address=DEFAULT_PREDICT, timeout=5.0, retries=3, context=None,
                 curve_server_key=None, curve_client_cert=None):
        super().__init__(address, timeout, retries, context, curve_server_key=curve_server_key,
                         curve_client_cert=curve_client_cert)

    def predict(self, X, output="label", ids=None, tags=None, tag_names=None):
        """Predictions for X.  ids: keep the inputs for labels sent later under those ids;
        tags (with tag_names, as Producer.send's) are kept with them, for error analysis."""
        if (tags is None) != (tag_names is None):
            raise ValueError("tags and tag_names go together")
        arrays = {"x": np.asarray(X)}
        header = {"op": "predict", "output": output}
        if ids is not None:
            arrays["ids"] = np.asarray(ids, dtype=np.int64)
        if tags is not None:
            tags = np.asarray(tags)
            arrays["tags"] = tags.astype(np.int32) if tags.ndim == 1 else tags
            header["tag_names"] = list(tag_names)
        reply = self.request(header, arrays)
        return Prediction(reply.arrays["y"], reply.header["model_version"], reply.header.get("member"))

    def adversarial(self, X, y, epsilon):
        """FGSM examples of the rows X (m, n) against their labels y at epsilon (input
        units), from the served model: Adversarial(x, model_version, member)."""
        reply = self.request({"op": "predict", "output": "adversarial", "epsilon": float(epsilon)},
                             {"x": np.asarray(X), "y": np.asarray(y)})
        return Adversarial(reply.arrays["x"], reply.header["model_version"], reply.header.get("member"))

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
                raise self._unreachable(f"{len(pending)} predictions unanswered by {self.address}")
            index = pending.pop(reply.header.get("id"), None)
            if index is None:
                continue
            if not reply.header.get("ok"):
                err = reply.header.get("error", {})
                raise LearndError(err.get("code", "unknown"), err.get("message", ""))
            results[index] = Prediction(reply.arrays["y"], reply.header["model_version"],
                                        reply.header.get("member"))
        self._ids = itertools.count(base + len(batches))
        return results


class Control(_RequestReply):
    """status(), set(**settings), checkpoint(), gradcheck(), rollback(), freeze(),
    unfreeze(), shutdown().  curve_server_key / curve_client_cert: see the module docstring."""

    def __init__(self, address=DEFAULT_CONTROL, timeout=10.0, retries=2, context=None,
                 curve_server_key=None, curve_client_cert=None):
        super().__init__(address, timeout, retries, context, curve_server_key=curve_server_key,
                         curve_client_cert=curve_client_cert)

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
    curve_server_key / curve_client_cert: see the module docstring.
    """

    def __init__(self, address=DEFAULT_INGEST, producer_id=None, window=16, timeout=5.0,
                 retries=5, first_seq=0, context=None, curve_server_key=None, curve_client_cert=None):
        super().__init__(address, timeout, retries, context, curve_server_key=curve_server_key,
                         curve_client_cert=curve_client_cert)
        self.producer_id = producer_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.window = window
        self.next_seq = first_seq
        self._pending: OrderedDict[int, list] = OrderedDict()   # seq -> [frames, last send time, attempts]
        self.acked = 0
        self.acked_rows = 0
        self.duplicates = 0
        self.rejected: list[Rejected] = []

    def send(self, X, y=None, w=None, ids=None, split="auto", tags=None, tag_names=None, **header):
        """Queue one batch (blocks while `window` batches await their acks); returns its seq.

        split: "auto" (the daemon divides the rows by their hash), "train", "train_dev",
        "dev" or "test" (every row goes there).  tags: int codes (m,) into tag_names
        (-1: no tag) or multi-hot (m, len(tag_names)), for error analysis by tag."""
        if (tags is None) != (tag_names is None):
            raise ValueError("tags and tag_names go together")
        if split not in protocol.TRAIN_SPLITS:
            raise ValueError(f"split must be one of {', '.join(protocol.TRAIN_SPLITS)}, got {split!r}")
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
        if tags is not None:
            tags = np.asarray(tags)
            arrays["tags"] = tags.astype(np.int32) if tags.ndim == 1 else tags
            header["tag_names"] = list(tag_names)
        seq = self.next_seq
        self.next_seq += 1
        frames = protocol.encode({"op": "train", "producer": self.producer_id, "seq": seq,
                                  "split": split, **header}, arrays)
        frames = [bytes(f) for f in frames]   # kept for resends: own the bytes
        self._send_frames(frames)
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
            raise self._unreachable(f"{len(self._pending)} batches unacknowledged by {self.address} "
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
                raise self._unreachable(f"{len(self._pending)} batches still unacknowledged")
            self._pump(min(self.timeout, 0.1))

    def close(self):
        self.flush_quietly()
        super().close()

    def flush_quietly(self):
        try:
            if self.sock is not None:
                self.flush()
        except (Unreachable, Unauthorized):
            pass

    def __exit__(self, exc_type, *rest):
        # Closed even when the flush fails: an open socket would hold its context's
        # termination (and the interpreter's exit) until the process dies.
        try:
            if exc_type is None:
                self.flush()
        finally:
            super().close()
