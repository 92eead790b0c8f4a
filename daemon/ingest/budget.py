"""The memory bound of ingest: how many bytes of train messages the daemon may hold.

`max_queued_bytes` covers everything ingest holds: ZeroMQ's receive buffer (RCVHWM
whole messages of at most MAXMSGSIZE bytes each, per connected producer, and the one its
I/O thread is receiving), the one message being read, and the messages read and not yet taken into training (waiting for
the log's fsync, or logged and not yet consumed by the trainer).  The two ZeroMQ
options are chosen together from the bound, so that a high-water mark counted in
messages still means a number of bytes; ingest stops reading once the messages it
holds reach what is left (`limit`), and ZeroMQ's high-water mark then pushes back on
producers.  Nothing is dropped: a producer's sends block or time out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import zmq

MIB = 1024 * 1024
# The default bound: an eighth of the machine's (or the container's) memory, kept between
# these two: a daemon should not claim most of a small machine, nor need GiBs of backlog
# in memory on a big one (the log holds the backlog on disk).
DEFAULT_FRACTION = 8
DEFAULT_MIN_BYTES = 64 * MIB
DEFAULT_MAX_BYTES = 1024 * MIB
MIN_BYTES = 1 * MIB
# Shares of the bound: at most half for ZeroMQ's buffer, at most a sixth for the largest
# message (the one being read may pass `limit` by that much), so that half holds
# MIN_RCVHWM + 1 of them; at least a third is left for the messages read.
ZMQ_SHARE = 2
MESSAGE_SHARE = 6
# ZeroMQ's ROUTER with CURVE stops delivering a producer's messages at RCVHWM 1 (measured:
# the CURVE integration tests hang there and pass at 2); 2 is the least it is given.
MIN_RCVHWM = 2


def machine_memory_bytes():
    """Physical memory, or the cgroup's limit (a container) when that is lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 * DEFAULT_MAX_BYTES
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_max_queued_bytes(memory_bytes=None):
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    return int(min(DEFAULT_MAX_BYTES, max(DEFAULT_MIN_BYTES, memory // DEFAULT_FRACTION)))


@dataclass(frozen=True)
class IngestBudget:
    """total: max_queued_bytes.  max_message: ZeroMQ's MAXMSGSIZE on the ingest socket
    (max_message_bytes, or a sixth of the bound when that is smaller: a message that
    cannot fit the bound is refused at the door).  rcvhwm: whole messages ZeroMQ queues
    per producer: as many of the largest as fit half the bound beside the one being
    received (at least MIN_RCVHWM)."""

    total: int
    max_message: int
    rcvhwm: int

    @classmethod
    def from_config(cls, config):
        total = config.max_queued_bytes or default_max_queued_bytes()
        max_message = max(1, min(config.max_message_bytes, total // MESSAGE_SHARE))
        rcvhwm = max(MIN_RCVHWM, (total // ZMQ_SHARE) // max_message - 1)
        return cls(total, max_message, rcvhwm)

    @property
    def zmq_bytes(self):
        """ZeroMQ's receive buffer at most, for one connected producer: the queued
        messages and the one being received."""
        return (self.rcvhwm + 1) * self.max_message

    @property
    def limit(self):
        """Bytes of read messages at which ingest stops reading: the bound less ZeroMQ's
        buffer and the one message that may be read past it."""
        return self.total - self.zmq_bytes - self.max_message

    def configure(self, sock):
        """Set the ingest socket's high-water mark (bind() sets MAXMSGSIZE after it)."""
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)

    def status(self):
        return {"max_queued_bytes": self.total, "limit_bytes": self.limit,
                "zmq_rcvhwm": self.rcvhwm, "zmq_max_message_bytes": self.max_message}


class Backlog:
    """Bytes of the messages logged and not yet consumed by the trainer, by log position
    (the process tree's ingest: the trainer reports the newest lsn it consumed)."""

    def __init__(self):
        self._sizes = []        # [(lsn, nbytes)] in rising lsn
        self._first = 0         # index of the oldest not yet consumed
        self.bytes = 0

    def add(self, lsn, nbytes):
        self._sizes.append((lsn, nbytes))
        self.bytes += nbytes

    def consumed_through(self, lsn):
        sizes, i = self._sizes, self._first
        while i < len(sizes) and sizes[i][0] <= lsn:
            self.bytes -= sizes[i][1]
            i += 1
        if i > 1024 and i * 2 > len(sizes):     # drop the consumed front now and then, not per pop
            del sizes[:i]
            i = 0
        self._first = i

    def __len__(self):
        return len(self._sizes) - self._first


def queued_values(queued_bytes, budget):
    """The bound's two live metrics (a metrics live collector's values)."""
    return {
        "learnd_ingest_queued_bytes": ("Bytes of train messages read by ingest and not yet taken into "
                                       "training.", queued_bytes),
        "learnd_ingest_queued_limit_bytes": ("Bytes of read messages at which ingest stops reading "
                                             "(max_queued_bytes less ZeroMQ's receive buffer).", budget.limit),
    }
