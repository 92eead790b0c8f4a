"""SIGTERM under a backlog: the daemon stops reading, finishes its step, checkpoints and
exits 0 within a bounded time, leaving what was logged and not yet trained in the
write-ahead log; the next start trains the rest, every acknowledged row exactly once.

The trainer here (a 1000 x 1024 first layer) needs several seconds for the rows a
producer sends in well under one, so the backlog at the signal is most of them.
"""
from __future__ import annotations

import time

from learnd.clients.client import Control

from .floods import FLOOD_TIMEOUT_S, WARM_ROWS, collect_acks, flood, trained_rows, warm_up

MIB = 1024 * 1024
MESSAGES = 20
ROWS = 2000
# The documented stop: the step in flight (tens of ms here) and one checkpoint of a 4 MB
# model, plus the processes' own exits; training the backlog first took seconds more.
STOP_BOUND_S = 5.0
DAEMON_ARGS = ["--set", f"max_queued_bytes={1024 * MIB}", "--set", "hidden=[1024]", "--set", "batch_size=256",
               "--set", "replay_ratio=0", "--set", "task=binary", "--set", "checkpoint_interval_s=0"]


def test_sigterm_checkpoints_at_once_and_the_next_start_trains_the_rest_once(daemons, figures):
    d = daemons(args=DAEMON_ARGS)
    warm_up(d)
    socks, _ = flood(d.ingest, ["stopping"], MESSAGES, ROWS, seed=3)
    try:
        accepted, _ = collect_acks(socks, MESSAGES, None, time.monotonic() + FLOOD_TIMEOUT_S)
    finally:
        for _, s in socks:
            s.close()
    expected = accepted + WARM_ROWS
    assert accepted == MESSAGES * ROWS
    with Control(d.control) as c:
        before = c.status()["samples_trained"]
    t0 = time.monotonic()
    assert d.stop() == 0
    stop_s = time.monotonic() - t0
    figures(f"SIGTERM with {expected - before} of {expected} rows not yet trained: exit 0 after {stop_s:.2f} s")
    assert stop_s < STOP_BOUND_S, d.log()
    assert before < expected, "the trainer caught up before the signal: nothing tested"

    again = daemons(args=DAEMON_ARGS, state_dir=d.state_dir)
    status = trained_rows(again, expected)
    assert status["samples_trained"] == expected
    # What was left came from the log: some messages were trained only after the restart.
    assert again.metrics()["learnd_wal_replayed_messages_total"] >= 1
