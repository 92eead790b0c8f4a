"""kill -9 at random moments while a producer streams: with the write-ahead log on,
every acknowledged row is trained exactly once, and no checkpoint or log is ever
unreadable.

The producer here is a raw DEALER that keeps each message until it is acknowledged and
sends every unacknowledged one again to the next daemon, as a producer that outlives
daemon restarts does.  Messages have 1..96 rows, so the re-batcher always holds some.
"""
from __future__ import annotations

import os
import struct
import subprocess
import time
import zlib
from collections import OrderedDict

import msgpack
import numpy as np
import zmq

from learnd.clients import protocol
from learnd.clients.client import Control
from learnd.clients.launch import serve_command
from learnd.daemon.training.checkpoints import decode as decode_checkpoint

KILLS = 12
STARTUP_KILL_EVERY = 4          # every 4th kill lands while the daemon starts (log replay)
FEATURES = 8
MAX_ROWS = 96
WINDOW = 16
RESEND_ACKED = 64
DAEMON_ENV = {
    "LEARND_CHECKPOINT_INTERVAL_S": "0.25",   # often, so kills land mid-checkpoint too
    "LEARND_MODEL_HIDDEN": "[16]",
}
BAD_LOG_LINES = ("unreadable", "no longer passes", "Traceback", "ERROR")
WAL_HEAD = struct.Struct("<II")


class ResendingProducer:
    """Streams train messages with rising seq; keeps each until acknowledged."""

    def __init__(self, seed, producer_id="kill9"):
        self.seed = seed
        self.producer_id = producer_id
        self.ctx = zmq.Context()
        self.sock = None
        self.next_seq = 0
        self.unacked: OrderedDict[int, tuple[list, int]] = OrderedDict()   # seq -> (frames, rows)
        self.acked: dict[int, int] = {}                                     # seq -> rows
        self.duplicate_acks = 0
        self.resent = 0
        self.resent_acked = 0
        self.rng = np.random.default_rng(seed)

    def message(self, seq):
        rng = np.random.default_rng([self.seed, seq])
        m = int(rng.integers(1, MAX_ROWS + 1))
        x = rng.standard_normal((m, FEATURES)).astype(np.float32)
        y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
        header = {"op": "train", "producer": self.producer_id, "seq": seq, "split": "train"}
        return [bytes(f) for f in protocol.encode(header, {"x": x, "y": y})], m

    def connect(self, address):
        """A new socket to a (re)started daemon; everything unacknowledged goes again,
        and so do some acknowledged ones picked at random from all it sent (a producer
        replaying part of its history): the daemon must know those as duplicates."""
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        acked = np.fromiter(self.acked, dtype=np.int64)
        for seq in self.rng.choice(acked, min(RESEND_ACKED, acked.size), replace=False):
            self.sock.send_multipart(self.message(int(seq))[0])
            self.resent_acked += 1
        for frames, _ in self.unacked.values():
            self.sock.send_multipart(frames)
            self.resent += 1

    def send_window(self):
        """Fills the window of unacknowledged messages with new ones; how many it sent."""
        sent = 0
        while len(self.unacked) < WINDOW:
            frames, m = self.message(self.next_seq)
            self.sock.send_multipart(frames)
            self.unacked[self.next_seq] = (frames, m)
            self.next_seq += 1
            sent += 1
        return sent

    def pump(self, seconds, send_new=True):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if send_new:
                self.send_window()
            if not send_new and not self.unacked:
                return
            if self.sock.poll(10):
                while self.sock.poll(0):
                    self._on_reply(protocol.decode(self.sock.recv_multipart(), reply=True))

    def _on_reply(self, reply):
        assert reply.header["ok"], reply.header      # nothing here is ever refused
        seq = reply.header["seq"]
        if seq in self.acked:       # the answer to resending an acknowledged message
            assert reply.header.get("duplicate") and reply.header["accepted"] == 0, reply.header
        elif seq in self.unacked:
            self.acked[seq] = self.unacked.pop(seq)[1]
            self.duplicate_acks += bool(reply.header.get("duplicate"))

    @property
    def acked_rows(self):
        return sum(self.acked.values())

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
        self.ctx.term()


def check_state_files(state_dir):
    """Every checkpoint verifies; every log record is whole and matches its CRC, except
    a torn record at the very end of the newest segment (a write cut short, never
    acknowledged).  Returns the number of torn tails (0 or 1)."""
    for name in sorted(os.listdir(state_dir)):
        if name.startswith("checkpoint-") and name.endswith(".ckpt"):
            with open(os.path.join(state_dir, name), "rb") as f:
                decode_checkpoint(f.read())          # raises on a corrupt file
    wal_dir = os.path.join(state_dir, "wal")
    segments = sorted(n for n in os.listdir(wal_dir) if n.endswith(".log")) if os.path.isdir(wal_dir) else []
    torn = 0
    for i, name in enumerate(segments):
        with open(os.path.join(wal_dir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            if pos + WAL_HEAD.size > len(data):
                break
            length, crc = WAL_HEAD.unpack_from(data, pos)
            body = data[pos + WAL_HEAD.size:pos + WAL_HEAD.size + length]
            if len(body) < length:
                break
            assert zlib.crc32(body) == crc, f"{name}: a whole record at byte {pos} fails its CRC"
            msgpack.unpackb(body, raw=False)
            pos += WAL_HEAD.size + length
        if pos < len(data):
            assert i == len(segments) - 1, f"{name}: torn record in a segment that is not the newest"
            torn += 1
    return torn


def new_log_lines(daemon, offset):
    text = daemon.log()
    return text[offset:], len(text)


def test_kill9_at_random_moments_loses_no_acknowledged_row(daemons, tmp_path, seed, figures):
    t_start = time.monotonic()
    rng = np.random.default_rng(seed)
    state_dir = tmp_path / "state"
    producer = ResendingProducer(seed)
    counts = {"startup_kills": 0, "torn_tails": 0, "replayed": 0}
    log_offset = 0
    try:
        for k in range(KILLS):
            if k % STARTUP_KILL_EVERY == STARTUP_KILL_EVERY - 1:
                # Kill it while it starts: reading checkpoints, replaying the log, binding.
                with open(tmp_path / "startup-kills.log", "ab") as out:
                    proc = subprocess.Popen(serve_command(state_dir), stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, **DAEMON_ENV})
                    time.sleep(rng.uniform(0.1, 1.0))
                    proc.kill()
                    proc.wait(10)
                counts["startup_kills"] += 1
            else:
                d = daemons(state_dir=state_dir, env=DAEMON_ENV)
                metrics = d.metrics()
                assert metrics["learnd_checkpoint_load_failures_total"] == 0
                counts["replayed"] += metrics["learnd_wal_replayed_messages_total"]
                producer.connect(d.ingest)
                producer.pump(rng.uniform(0.05, 1.5))
                d.kill()                                    # SIGKILL
                lines, log_offset = new_log_lines(d, log_offset)
                bad = [line for line in lines.splitlines() if any(b in line for b in BAD_LOG_LINES)]
                assert not bad, bad
            counts["torn_tails"] += check_state_files(state_dir)

        d = daemons(state_dir=state_dir, env=DAEMON_ENV)      # the final restart
        assert d.metrics()["learnd_checkpoint_load_failures_total"] == 0
        producer.connect(d.ingest)
        producer.pump(60, send_new=False)
        assert not producer.unacked, f"{len(producer.unacked)} messages never acknowledged"
        acked_rows = producer.acked_rows
        with Control(d.control) as c:
            def trained_all():
                s = c.status()
                return s["queue_depth"] == 0 and s["samples_trained"] + s["rows_waiting"] == acked_rows
            d.wait_until(trained_all, timeout=60, what=f"{acked_rows} rows trained")
            time.sleep(0.5)                                  # nothing trains twice later
            status = c.status()
        assert status["samples_trained"] + status["rows_waiting"] == acked_rows
        assert status["rows_waiting"] <= 1          # a lone row waits for company by design
        assert status["nonfinite_steps"] == 0
        assert d.stop() == 0
        lines, _ = new_log_lines(d, log_offset)
        assert not [line for line in lines.splitlines() if any(b in line for b in BAD_LOG_LINES)]

        d = daemons(state_dir=state_dir, env=DAEMON_ENV)      # and the shutdown checkpoint holds it
        with Control(d.control) as c:
            again = c.status()
        assert again["samples_trained"] + again["rows_waiting"] == acked_rows
        assert d.stop() == 0
    finally:
        producer.close()
    elapsed = time.monotonic() - t_start
    figures(f"kill -9 x{KILLS} ({counts['startup_kills']} during start-up): {len(producer.acked)} messages, "
          f"{acked_rows} rows acknowledged, {status['samples_trained']} trained + {status['rows_waiting']} "
          f"waiting; {producer.resent} unacknowledged and {producer.resent_acked} acknowledged messages sent "
          f"again, {producer.duplicate_acks} first acknowledged as duplicates, "
          f"{int(counts['replayed'])} log records replayed at start, {counts['torn_tails']} torn log "
          f"tails cut; {elapsed:.1f} s")


def test_wal_fsync_ms_0_syncs_every_message_before_its_ack(daemons):
    d = daemons(env={"LEARND_WAL_FSYNC_MS": "0", "LEARND_MODEL_HIDDEN": "[16]"})
    producer = ResendingProducer(seed=7, producer_id="each")
    try:
        producer.connect(d.ingest)
        producer.pump(60, send_new=False)           # connects; nothing to send yet
        for _ in range(5):                           # 5 windows of 16 in flight at once
            assert producer.send_window() == WINDOW
            producer.pump(60, send_new=False)        # until all 16 are acknowledged
    finally:
        producer.close()
    assert len(producer.acked) == 5 * WINDOW
    assert d.metrics()["learnd_wal_fsync_seconds_count"] == 5 * WINDOW
