"""Binding the daemon's ZeroMQ sockets, the same way in every process that owns one."""
from __future__ import annotations

import logging

import zmq

from learnd.daemon.errors import StartupError

log = logging.getLogger("learnd.sockets")

EXIT_PORT_IN_USE = 3
HWM = 1000           # messages ZeroMQ buffers per peer before pushing back


def bind(ctx, kind, address, name, max_message_bytes, curve=None, configure=None):
    """A bound socket and the endpoint it bound (the port the OS chose for port 0).

    Raises StartupError (exit 3 when the port is taken)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.SNDHWM, HWM)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    if configure is not None:
        configure(sock)
    # No frame may be larger than a whole message: ZeroMQ drops a peer that sends one
    # before it is held in memory, where the decoder's too_large would come too late.
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if curve is not None:
        curve.secure(sock, name)
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close()
        raise StartupError(f"cannot bind the {name} socket to {address}: {zmq.strerror(exc.errno)}",
                           EXIT_PORT_IN_USE if exc.errno == zmq.EADDRINUSE else 1) from None
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    log.info("%s socket bound to %s", name, endpoint)
    return sock, endpoint
