"""Watching a socket's ZMTP handshakes through a ZeroMQ socket monitor.

A refused CURVE peer never gets a message through, so the only trace of the refusal is
the handshake-failure event libzmq raises on both ends.  The daemon counts those; a
client turns the ones that are final (the daemon refused its key, or the two ends use
different security mechanisms, or handshakes keep failing) into an error at once
instead of waiting out its timeouts.
"""
from __future__ import annotations

import itertools
import os

import zmq
from zmq.utils.monitor import parse_monitor_message

HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

# Why a handshake failed.
KEY_REFUSED = "key_refused"           # CURVE key not in the allowlist (ZAP answered 400)
MECHANISM_MISMATCH = "mechanism_mismatch"   # one end speaks CURVE, the other does not
BAD_HANDSHAKE = "bad_handshake"       # anything else: a wrong server key, garbage, a reset
SUCCEEDED = "succeeded"

_addresses = itertools.count()


def monitor(sock, context, events=HANDSHAKE_FAILURES):
    """A PAIR socket that receives `sock`'s handshake events (by default, the failures).

    The inproc address is unique per call: pyzmq's default one is built from the file
    descriptor, which a socket made right after another's close can reuse while the old
    monitor endpoint is still being torn down.
    """
    address = f"inproc://learnd-handshake-{os.getpid()}-{next(_addresses)}"
    sock.monitor(address, events)
    pair = context.socket(zmq.PAIR)
    pair.setsockopt(zmq.LINGER, 0)
    pair.connect(address)
    return pair


def read_event(pair):
    """The outcome of the handshake the next event on a monitor PAIR reports: SUCCEEDED,
    or why it failed (KEY_REFUSED, MECHANISM_MISMATCH or BAD_HANDSHAKE); None for any
    other event (the monitor's own stop event).

    A mismatch of mechanisms is not always seen as one: the end that notices it first
    closes the connection with the other's bytes unread, and the TCP reset that follows
    can reach the other end before the greeting that would have told it.
    """
    event = parse_monitor_message(pair.recv_multipart())
    kind, value = event["event"], event["value"]
    if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return SUCCEEDED
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return KEY_REFUSED
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return MECHANISM_MISMATCH
    if kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
        return BAD_HANDSHAKE
    return None
