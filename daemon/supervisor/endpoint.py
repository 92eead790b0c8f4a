"""A control socket's request loop: decode an op, run it (now, or as a Future the
trainer completes between steps), and answer; used by the single-process daemon, by
each child of the process tree, and by the supervisor that forwards to them."""
from __future__ import annotations

import logging

from learnd.clients import protocol
from learnd.clients.protocol import ProtocolError
from learnd.daemon.supervisor.control import clean, error_for

log = logging.getLogger("learnd.control")


class ControlEndpoint:
    MAX_PENDING = 8      # ops waiting for a Future before 'busy'

    def __init__(self, socket, handle, limits, rejected, reject=None):
        """handle(message) -> result dict or a Future; rejected: learnd_rejected_total;
        reject(socket, identity, exc, echo): how the owner answers and counts a refused
        message (default: count it and answer)."""
        self.socket = socket
        self.handle = handle
        self.limits = limits
        self.rejected = rejected
        self._reject = reject
        self.waiting = []            # (identity, echo, future)

    def on_message(self, frames):
        identity, echo = frames[0], {}
        try:
            message = protocol.decode(frames[1:], self.limits)
            if "id" in message.header:
                echo["id"] = message.header["id"]
            result = self.handle(message)
        except ProtocolError as exc:
            self.reject(identity, exc, echo)
            return
        if hasattr(result, "add_done_callback"):
            self.waiting.append((identity, echo, result))
            if len(self.waiting) > self.MAX_PENDING and result.cancel():
                self.waiting.pop()
                self.reject(identity, ProtocolError(
                    "busy", f"{self.MAX_PENDING} control operations are already waiting"), echo)
        else:
            self.reply(identity, protocol.ok(**echo, result=clean(result)))

    def answer_ready(self):
        """Reply to every op whose Future has completed."""
        still = []
        for identity, echo, fut in self.waiting:
            if not fut.done():
                still.append((identity, echo, fut))
                continue
            exc = fut.exception()
            if exc is None:
                self.reply(identity, protocol.ok(**echo, result=clean(fut.result())))
            else:
                code, text = error_for(exc)
                self.rejected.labels(code).inc()
                self.reply(identity, protocol.error(code, text, **echo))
        self.waiting = still

    def reject(self, identity, exc, echo):
        if self._reject is not None:
            self._reject(self.socket, identity, exc, echo)
            return
        self.rejected.labels(exc.code).inc()
        self.reply(identity, protocol.error(exc.code, exc.message, **echo))

    def reply(self, identity, header):
        self.socket.send_multipart([identity, *protocol.encode(header)], copy=False)
