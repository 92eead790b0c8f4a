"""Ingest's memory bound (`max_queued_bytes`) under a flood.

Producers here send large, valid train messages as fast as their sockets take them and
read the acknowledgements only afterwards, while the trainer (a wide first layer)
needs many times longer to learn from them than they take to arrive.  The whole process
tree's resident memory (VmRSS of the daemon and every descendant, summed at each
sample) must stay under its idle figure plus the bound plus a margin; every
acknowledged row must be trained exactly once; predict must keep answering.
"""
from __future__ import annotations

import time

from learnd.clients.client import Control

from .floods import FEATURES, FLOOD_TIMEOUT_S, WARM_ROWS, PeakSampler, collect_acks, flood, trained_rows, tree_rss, warm_up

MIB = 1024 * 1024
BOUND = 64 * MIB
# What the tree may hold past the bound: the trainer's own copies of the message it is
# training (the decoded log record and the re-batcher, which grows to twice the rows it
# holds), and the allocator's slack: 96 MiB + 4 messages.  Each producer beyond the
# first adds its ZeroMQ buffer ((RCVHWM + 1) x MAXMSGSIZE = 32 MiB with this bound).
BASE_MARGIN = 96 * MIB
ZMQ_PER_PRODUCER = BOUND // 2
DAEMON_ARGS = ["--set", f"max_queued_bytes={BOUND}", "--set", "hidden=[256]", "--set", "batch_size=256",
               "--set", "replay_ratio=0", "--set", "task=binary", "--set", "checkpoint_interval_s=0"]


def run_flood(d, producers, n_messages, rows, figures):
    warm_up(d)
    idle = tree_rss(d.proc.pid)
    sampler = PeakSampler(d.proc.pid)
    sampler.start()
    socks, senders = flood(d.ingest, producers, n_messages, rows, seed=2)
    try:
        accepted, answered = collect_acks(socks, n_messages, d.predict, time.monotonic() + FLOOD_TIMEOUT_S)
        status = trained_rows(d, len(producers) * n_messages * rows + WARM_ROWS)
    finally:
        peak = sampler.finish()
        for _, s in socks:
            s.close()
    message_bytes = rows * FEATURES * 4
    margin = BASE_MARGIN + 4 * message_bytes + (len(producers) - 1) * ZMQ_PER_PRODUCER
    figures(f"{len(producers)} producer(s) x {n_messages} messages of {message_bytes / MIB:.1f} MiB: tree RSS "
            f"idle {idle / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, allowed {(idle + BOUND + margin) / MIB:.0f} "
            f"MiB; {answered} predictions answered meanwhile")
    sent_rows = len(producers) * n_messages * rows
    assert accepted == sent_rows
    assert status["samples_trained"] == sent_rows + WARM_ROWS     # each row once, the warm-up's too
    assert answered > 0
    assert peak <= idle + BOUND + margin, (peak, idle)
    return status


def test_one_producer_flooding_8_mb_messages_stays_under_the_bound(daemons, figures):
    d = daemons(args=DAEMON_ARGS)
    with Control(d.control) as c:
        ingest = c.status()["ingest"]
    # The bound as the operator reads it back, and ZeroMQ's options chosen from it.
    assert ingest["max_queued_bytes"] == BOUND
    assert ingest["zmq_max_message_bytes"] == BOUND // 6 and ingest["zmq_rcvhwm"] == 2
    assert ingest["limit_bytes"] == BOUND - 4 * (BOUND // 6)
    metrics = d.metrics()
    assert metrics["learnd_ingest_queued_limit_bytes"] == BOUND - 4 * (BOUND // 6)
    run_flood(d, ["solo"], 30, 2000, figures)
    assert d.metrics()["learnd_ingest_queued_bytes"] == 0
    assert d.metrics()["learnd_ingest_paused_total"] > 0       # the bound pushed back


def test_two_producers_flooding_10_mb_messages_stay_under_the_bound(daemons, figures):
    d = daemons(args=DAEMON_ARGS)
    run_flood(d, ["left", "right"], 8, 2600, figures)     # 10.4 MB each, under MAXMSGSIZE = B/6
