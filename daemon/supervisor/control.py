"""Control ops: status, set, checkpoint, gradcheck, rollback, freeze, unfreeze, shutdown.

`handle` returns either a reply header now or a Future the server answers when the
trainer thread has run the op between steps.
"""
from __future__ import annotations

import math

from learnd.clients.protocol import ProtocolError
from learnd.engine import EngineError

from learnd.daemon.errors import ConfigError, UnsupportedOperation

OPS = ("status", "set", "checkpoint", "gradcheck", "rollback", "freeze", "unfreeze", "shutdown")


class Control:
    def __init__(self, server):
        self.server = server

    def handle(self, message):
        """(result dict) or a Future resolving to one; raises ProtocolError."""
        op = message.op
        if op not in OPS:
            raise ProtocolError("unknown_op", f"control ops are {', '.join(OPS)}; got {op!r}")
        if message.arrays:
            raise ProtocolError("bad_array", "control messages carry no arrays")
        return getattr(self, "op_" + op)(message.header)

    def op_status(self, header):
        return self.server.status()

    def op_set(self, header):
        settings = header.get("settings")
        if not isinstance(settings, dict) or not settings:
            raise ProtocolError("bad_header", "'set' needs 'settings': a non-empty map of name to value")
        return self.server.trainer.submit(lambda t: t.apply_settings(settings))

    def op_checkpoint(self, header):
        return self.server.trainer.request_checkpoint()

    def op_gradcheck(self, header):
        return self.server.trainer.submit(lambda t: t.gradient_check())

    def op_rollback(self, header):
        return self.server.trainer.submit(lambda t: t.rollback())

    def op_freeze(self, header):
        return self.server.trainer.submit(lambda t: t.set_frozen(True))

    def op_unfreeze(self, header):
        return self.server.trainer.submit(lambda t: t.set_frozen(False))

    def op_shutdown(self, header):
        self.server.should_exit = True
        return {"shutting_down": True}


def error_for(exc):
    """The (code, message) reply for an exception a control Future raised."""
    if isinstance(exc, (KeyError, ConfigError, EngineError)):
        return "bad_setting", str(exc).strip('"')
    if isinstance(exc, LookupError):
        return "not_ready", str(exc)
    if isinstance(exc, UnsupportedOperation):
        return "unsupported", str(exc)
    return "internal", f"{type(exc).__name__}: {exc}"


def clean(value):
    """NaN and inf become None so a status reply is valid JSON as well as msgpack."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value
