"""Floods of large train messages for the memory-bound tests: producers that send without
waiting for acknowledgements, and the resident memory of a daemon's whole process tree."""
from __future__ import annotations

import contextlib
import os
import threading
import time

import numpy as np
import zmq

from learnd.clients import protocol
from learnd.clients.client import Control, Predictor

FEATURES = 1000
WARM_ROWS = 64
SAMPLE_S = 0.05
FLOOD_TIMEOUT_S = 90.0


def tree_rss(root):
    """Summed VmRSS (bytes) of `root` and all its descendants, read from /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakSampler(threading.Thread):
    """Samples the tree's RSS until stopped; `peak` is the largest sum seen."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self.stop.wait(SAMPLE_S)

    def finish(self):
        self.stop.set()
        self.join(5)
        return self.peak


def message(producer, seq, x, y):
    return protocol.encode({"v": 1, "op": "train", "producer": producer, "seq": seq, "split": "train"},
                           {"x": x, "y": y})


def flood(address, producers, n_messages, rows, seed):
    """Each producer sends n_messages of (rows, FEATURES) float32 without waiting, on its own
    thread (a blocked send pushes back on that producer alone); returns the DEALERs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES)).astype("<f4")
    y = (x[:, 0] > 0).astype("<i8")
    ctx = zmq.Context.instance()
    socks = []
    for name in producers:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, n_messages)   # the producer's side queues, the daemon's must not
        s.setsockopt(zmq.SNDTIMEO, int(FLOOD_TIMEOUT_S * 1000))
        s.connect(address)
        socks.append((name, s))
    senders = [threading.Thread(target=lambda n=name, s=s: [s.send_multipart(message(n, i, x, y), copy=False)
                                                           for i in range(n_messages)], daemon=True)
               for name, s in socks]
    for t in senders:
        t.start()
    return socks, senders


def collect_acks(socks, n_messages, predict_address, deadline):
    """Wait for every acknowledgement while asking for a prediction between polls (none
    with predict_address None); returns (accepted rows, predictions answered)."""
    accepted, answered = 0, 0
    remaining = {name: n_messages for name, _ in socks}
    probe = np.zeros((1, FEATURES), dtype="<f4")
    with contextlib.nullcontext() if predict_address is None else Predictor(predict_address, timeout=10.0,
                                                                           retries=1) as p:
        while any(remaining.values()):
            assert time.monotonic() < deadline, f"acknowledgements missing: {remaining}"
            for name, s in socks:
                while remaining[name] and s.poll(0):
                    reply = protocol.decode(s.recv_multipart(), reply=True).header
                    assert reply["ok"], reply
                    accepted += reply["accepted"]
                    remaining[name] -= 1
            if p is not None:
                p.predict(probe)      # raises when the daemon does not answer within its timeout
                answered += 1
            time.sleep(0.02)
    return accepted, answered


def trained_rows(d, rows, timeout=60.0):
    """Status once `rows` rows are trained (the last rows short of a batch wait
    batch_linger_ms) and the trainer is idle; more than `rows` fails the caller's check."""
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["samples_trained"] >= rows, timeout, what=f"{rows} rows trained")
    return d.settled()


def warm_up(d):
    """One small message trained and published: the model, its kernels and a snapshot exist."""
    socks, senders = flood(d.ingest, ["warm"], 1, WARM_ROWS, seed=1)
    name, s = socks[0]
    assert s.poll(60_000), "no acknowledgement for the warm-up message"
    s.recv_multipart()
    s.close()
    trained_rows(d, WARM_ROWS)
