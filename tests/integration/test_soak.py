"""Load and soak on loopback: 50 predict clients and 4 producers against one daemon for
SOAK_SECONDS (default 60).  No request may fail; the daemon's resident memory may not
grow by 5% between the end of the warm-up and the end of the run, and its open file
descriptors stay where they were.  Latency percentiles and throughput are printed in
the terminal summary and written to soak.json in the test's tmp dir."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from learnd.clients.client import Control, Producer
from learnd.engine.datasets import split

DURATION_S = float(os.environ.get("SOAK_SECONDS", "60"))
WARM_UP_S = min(10.0, DURATION_S / 3)
PREDICT_PROCESSES = 5
THREADS_PER_PROCESS = 10            # 50 predict clients
PRODUCERS = 4
PRODUCER_RATE = 25.0                # messages of 64 rows per second, per producer
MAX_RSS_GROWTH = 0.05
SAMPLE_EVERY_S = 0.5
DAEMON_ENV = {"LEARND_CHECKPOINT_INTERVAL_S": "5"}   # checkpoints and log trims during the run


def tree_pids(pid):
    """The daemon's pid and its children's: the whole process tree (one pid with
    --single-process)."""
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def rss_bytes(pid):
    """Resident memory of the whole tree."""
    total = 0
    for p in tree_pids(pid):
        with open(f"/proc/{p}/status") as f:
            total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return total


def open_fds(pid):
    """Open file descriptors of the whole tree."""
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in tree_pids(pid))


def load(role, address, threads, seed, out, **extra):
    cmd = [sys.executable, "-m", "tests.integration.load_clients", role, address, "--threads",
           str(threads), "--seconds", str(DURATION_S), "--seed", str(seed), "--out", str(out)]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.soak
def test_soak_50_predict_clients_4_producers(daemons, tmp_path, figures):
    d = daemons(env=DAEMON_ENV)
    Xtr, ytr, _, _ = split("digits")
    with Producer(d.ingest, producer_id="warm-up", timeout=20) as prod:
        for i in range(0, 640, 64):
            prod.send(Xtr[i:i + 64], ytr[i:i + 64], split="train")
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["ready"] and c.status()["samples_trained"] == 640,
                     what="a ready model")
    trained_before = 640
    pid = d.proc.pid
    metrics_before = d.metrics()

    procs = [load("predict", d.predict, THREADS_PER_PROCESS, k, tmp_path / f"predict-{k}.json")
             for k in range(PREDICT_PROCESSES)]
    procs.append(load("produce", d.ingest, PRODUCERS, 99, tmp_path / "produce.json", rate=PRODUCER_RATE))
    samples = []                    # (seconds since the load began, rss bytes, open fds)
    t0 = time.monotonic()
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() - t0 < DURATION_S + 60:
            samples.append((time.monotonic() - t0, rss_bytes(pid), open_fds(pid)))
            time.sleep(SAMPLE_EVERY_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = [p.communicate()[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outputs
    assert d.proc.poll() is None

    results = [json.load(open(tmp_path / f"predict-{k}.json")) for k in range(PREDICT_PROCESSES)]
    produced = json.load(open(tmp_path / "produce.json"))
    latencies = np.concatenate([np.load(tmp_path / f"predict-{k}.json.npy") for k in range(PREDICT_PROCESSES)])
    errors = [e for r in results for e in r["errors"]] + produced["errors"]
    with Control(d.control) as c:
        def all_trained():
            s = c.status()
            return s["queue_depth"] == 0 and s["samples_trained"] + s["rows_waiting"] == 640 + produced["rows_acked"]
        d.wait_until(all_trained, timeout=60, what="every acknowledged row trained")
        status = c.status()
    metrics = d.metrics()

    during = [s for s in samples if s[0] <= DURATION_S]
    warm = next(s for s in during if s[0] >= WARM_UP_S)
    end = during[-1]
    growth = (end[1] - warm[1]) / warm[1]
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    report = {
        "seconds": DURATION_S, "predict_clients": PREDICT_PROCESSES * THREADS_PER_PROCESS,
        "producers": PRODUCERS, "errors": len(errors), "predict_requests": int(latencies.size),
        "predict_per_s": latencies.size / DURATION_S,
        "latency_s": {"p50": p50, "p95": p95, "p99": p99, "max": float(latencies.max())},
        "daemon_side_mean_latency_s": (metrics["learnd_predict_latency_seconds_sum"]
                                       - metrics_before["learnd_predict_latency_seconds_sum"])
        / max(metrics["learnd_predict_latency_seconds_count"] - metrics_before["learnd_predict_latency_seconds_count"], 1),
        "daemon_predict_errors": metrics["learnd_predict_requests_total{outcome=error}"]
        - metrics_before["learnd_predict_requests_total{outcome=error}"],
        "messages_acked": produced["messages_acked"], "rows_acked": produced["rows_acked"],
        "rows_trained_per_s": (status["samples_trained"] - trained_before) / DURATION_S,
        "checkpoints_ok": metrics["learnd_checkpoints_total{outcome=ok}"],
        "rss_bytes": {"warm": warm[1], "end": end[1], "max": max(s[1] for s in during)},
        "rss_growth": growth, "fds": {"warm": warm[2], "end": end[2], "max": max(s[2] for s in during)},
    }
    with open(tmp_path / "soak.json", "w") as f:
        json.dump(report, f, indent=1)
    figures(f"{DURATION_S:.0f} s, {report['predict_clients']} predict clients + {PRODUCERS} producers: "
            f"{len(errors)} errors; {latencies.size} predictions ({report['predict_per_s']:.0f}/s), latency "
            f"p50 {p50 * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max "
            f"{latencies.max() * 1e3:.1f} ms (daemon-side mean {report['daemon_side_mean_latency_s'] * 1e3:.2f} ms); "
            f"{produced['rows_acked']} rows acknowledged, "
            f"{report['rows_trained_per_s']:.0f} rows/s trained; RSS {warm[1] / 2**20:.1f} -> "
            f"{end[1] / 2**20:.1f} MiB ({growth:+.2%}) from {warm[0]:.0f} s to {end[0]:.0f} s; fds "
            f"{warm[2]} -> {end[2]} (max {report['fds']['max']}); {tmp_path / 'soak.json'}")

    assert errors == [], errors[:10]
    assert report["daemon_predict_errors"] == 0
    assert produced["messages_acked"] == produced["messages_sent"]
    assert status["samples_trained"] + status["rows_waiting"] == trained_before + produced["rows_acked"]
    assert growth < MAX_RSS_GROWTH, report["rss_bytes"]
    assert end[2] <= warm[2] + 2, report["fds"]
