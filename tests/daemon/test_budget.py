"""ingest.budget: the memory bound's shares, its default, and the backlog's accounting."""
from __future__ import annotations

import dataclasses

import pytest

from learnd.daemon.config import Config
from learnd.daemon.errors import ConfigError
from learnd.daemon.ingest.budget import (DEFAULT_MAX_BYTES, DEFAULT_MIN_BYTES, MIB, Backlog, IngestBudget,
                                         default_max_queued_bytes)


def budget(**settings):
    return IngestBudget.from_config(dataclasses.replace(Config(), **settings).validate())


def test_the_socket_options_and_the_reading_limit_add_up_to_the_bound():
    for total, max_message in ((64 * MIB, 256 * MIB), (1024 * MIB, 256 * MIB), (1024 * MIB, 1 * MIB),
                               (3 * MIB + 17, 256 * MIB)):
        b = budget(max_queued_bytes=total, max_message_bytes=max_message)
        assert b.max_message == min(max_message, total // 6) and b.rcvhwm >= 2
        assert b.zmq_bytes == (b.rcvhwm + 1) * b.max_message <= total // 2
        assert b.limit == total - b.zmq_bytes - b.max_message >= total // 4
    # Small messages: ZeroMQ may queue many of them in the same bytes.
    assert budget(max_queued_bytes=1024 * MIB, max_message_bytes=1 * MIB).rcvhwm == 511


def test_the_default_is_an_eighth_of_memory_within_its_bounds():
    assert default_max_queued_bytes(2 * 1024 * MIB) == 256 * MIB
    assert default_max_queued_bytes(128 * MIB) == DEFAULT_MIN_BYTES
    assert default_max_queued_bytes(64 * 1024 * MIB) == DEFAULT_MAX_BYTES
    assert DEFAULT_MIN_BYTES <= budget().total <= DEFAULT_MAX_BYTES


def test_a_bound_below_one_mib_is_refused():
    with pytest.raises(ConfigError, match="max_queued_bytes"):
        dataclasses.replace(Config(), max_queued_bytes=1000).validate()


def test_the_backlog_counts_bytes_until_the_trainer_consumes_them():
    log = Backlog()
    for lsn in range(1, 3001):
        log.add(lsn, 10)
    assert log.bytes == 30000 and len(log) == 3000
    log.consumed_through(2000)
    assert log.bytes == 10000 and len(log) == 1000
    log.consumed_through(1500)          # an older position changes nothing
    assert log.bytes == 10000
    log.add(3001, 5)
    log.consumed_through(3001)
    assert log.bytes == 0 and len(log) == 0
