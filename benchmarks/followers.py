"""Followers: the snapshot stream at full training speed, what it costs the trainer, how
far behind the followers answer, and how soon a late one is ready.

    python -m benchmarks.followers [--followers 2] [--seconds S] [--json PATH]

One trainer (W1, the process tree) takes a producer's stream as fast as it trains.
The trainer's rows per second for `--seconds` each: without followers; with `--followers`
of them subscribed and idle (what the stream itself costs: a publication must not hold
the trainer back); and with them answering a client while everything is sampled (on one
two-core host the followers' work competes with the trainer's for the cores).  Then: the snapshot bytes per second each receives (learnd_follower_snapshot_bytes_total)
and the versions per second; the lag from a version's publication (its time in the
snapshot header, read by a subscriber of our own) to the first reply naming it, seen by
a client that asks one follower back to back; the followers' own lag gauges, sampled.
Last, a follower started while the stream runs: seconds from its launch to /readyz 200,
and from its sockets being bound (its endpoints file) to ready.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import zmq
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.daemon import DIM, W1_ARGS, _produce
from benchmarks.harness import report
from learnd.clients import protocol
from learnd.clients.client import Predictor
from learnd.clients.launch import start_daemon, stop_daemon, terminate

START_TIMEOUT_S = 120.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    return report(run(args), _print, args.json)


class FollowerProc:
    """A `learnd follow` subprocess on loopback ports; `endpoints` once it serves."""

    def __init__(self, directory, source):
        self.path = os.path.join(directory, "endpoints.json")
        self.log = open(os.path.join(directory, "follower.log"), "ab")
        self.launched = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "learnd", "follow", "--from", source, "--predict", "tcp://127.0.0.1:0",
             "--control", "tcp://127.0.0.1:0", "--metrics", "127.0.0.1:0", "--endpoints", self.path],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoints = None
        self.bound_at = None

    def wait_bound(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with open(self.path) as f:
                    data = json.load(f)
                if data.get("pid") == self.proc.pid:
                    self.endpoints, self.bound_at = data, time.monotonic()
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        raise RuntimeError(f"the follower did not start; see {self.log.name}")

    def ready(self):
        try:
            with urllib.request.urlopen(self.endpoints["metrics"].rsplit("/", 1)[0] + "/readyz", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self):
        terminate(self.proc, 30)
        self.log.close()


def _scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else ""):
            s.value for family in text_string_to_metric_families(text) for s in family.samples}


def _publication_times(address, stop, out):
    """{version: publication time} from the snapshots socket's headers, as they come."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    limits = protocol.Limits(max_array_bytes=1 << 30, max_message_bytes=1 << 30)
    try:
        while not stop.is_set():
            if sub.poll(100):
                header = protocol.decode(sub.recv_multipart(copy=False), limits).header
                out.setdefault(header["version"], header["published"])
    finally:
        sub.close()
        ctx.term()


def _first_answers(address, x, stop, out):
    """{version: wall time of the first reply naming it}, asking back to back."""
    with Predictor(address, timeout=30) as p:
        while not stop.is_set():
            version = p.predict(x).model_version
            if version not in out:
                out[version] = time.time()


def _trainer_rate(ends, seconds):
    url = ends["metrics"]
    before = _scrape(url)["learnd_samples_trained_total"]
    time.sleep(seconds)
    return (_scrape(url)["learnd_samples_trained_total"] - before) / seconds


def run(args):
    x = np.random.default_rng(0).standard_normal((1, DIM)).astype(np.float32)
    work = tempfile.TemporaryDirectory(prefix="learnd-bench-followers-")
    proc, ends, log = start_daemon(os.path.join(work.name, "trainer"), W1_ARGS)
    stop_stream, counter = mp.Event(), mp.Value("q", 0)
    producer = mp.Process(target=_produce, args=(ends["ingest"], stop_stream, counter), daemon=True)
    followers, stop = [], threading.Event()
    try:
        producer.start()
        time.sleep(2.0)                                      # the model exists, the stream flows
        alone = _trainer_rate(ends, args.seconds)
        for i in range(args.followers):
            os.makedirs(os.path.join(work.name, f"f{i}"))
            followers.append(FollowerProc(os.path.join(work.name, f"f{i}"), ends["snapshots"]))
        for f in followers:
            f.wait_bound()
            while not f.ready():
                time.sleep(0.01)
        subscribed = _trainer_rate(ends, args.seconds)
        published, answered = {}, {}
        threads = [threading.Thread(target=_publication_times, args=(ends["snapshots"], stop, published)),
                   threading.Thread(target=_first_answers, args=(followers[0].endpoints["predict"], x, stop,
                                                                 answered))]
        for t in threads:
            t.start()
        time.sleep(0.5)
        urls = [f.endpoints["metrics"] for f in followers]
        start = [_scrape(u) for u in urls]
        t0 = time.monotonic()
        lag_versions, lag_seconds = [], []

        def sample():
            while not stop.is_set():
                for u in urls:
                    m = _scrape(u)
                    lag_versions.append(m["learnd_follower_lag_versions"])
                    lag_seconds.append(m["learnd_follower_lag_seconds"])
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with_followers = _trainer_rate(ends, args.seconds)
        elapsed = time.monotonic() - t0
        end = [_scrape(u) for u in urls]
        late_dir = os.path.join(work.name, "late")
        os.makedirs(late_dir)
        late = FollowerProc(late_dir, ends["snapshots"])
        followers.append(late)
        late.wait_bound()
        while not late.ready():
            time.sleep(0.002)
        ready_at = time.monotonic()
        stop.set()
        sampler.join(30)
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        stop_stream.set()
        producer.join(30)
        for f in followers:
            f.stop()
        stop_daemon(proc, log)
        work.cleanup()
    delays = np.array([answered[v] - published[v] for v in answered if v in published])

    def per_s(name):
        return float(np.mean([(e[name] - s[name]) / elapsed for s, e in zip(start, end)]))

    return {
        "followers": args.followers, "seconds": args.seconds,
        "trainer_rows_per_s": {"alone": alone, "followers_idle": subscribed, "with_followers": with_followers},
        "snapshot_bytes_per_s_per_follower": per_s("learnd_follower_snapshot_bytes_total"),
        "versions_per_s_per_follower": per_s("learnd_follower_messages_total{outcome=applied}"),
        "publication_to_answer_ms": {"versions": int(delays.size),
                                     "p50": float(np.percentile(delays, 50) * 1e3) if delays.size else None,
                                     "p99": float(np.percentile(delays, 99) * 1e3) if delays.size else None},
        "lag_gauges": {"versions_p50": float(np.percentile(lag_versions, 50)),
                       "versions_p99": float(np.percentile(lag_versions, 99)),
                       "seconds_p50": float(np.percentile(lag_seconds, 50)),
                       "seconds_p99": float(np.percentile(lag_seconds, 99)), "samples": len(lag_seconds)},
        "late_follower_ready_s": {"from_launch": ready_at - late.launched, "from_bound": ready_at - late.bound_at},
    }


def _print(f):
    rate = f["trainer_rows_per_s"]
    print(f"trainer (W1): {rate['alone']:,.0f} rows/s alone, {rate['followers_idle']:,.0f} rows/s with "
          f"{f['followers']} followers subscribed ({rate['followers_idle'] / rate['alone']:.2f}x), "
          f"{rate['with_followers']:,.0f} rows/s while they answer a client "
          f"({rate['with_followers'] / rate['alone']:.2f}x)")
    print(f"snapshot stream per follower: {f['snapshot_bytes_per_s_per_follower'] / 1e6:,.1f} MB/s, "
          f"{f['versions_per_s_per_follower']:.1f} versions/s")
    lag = f["publication_to_answer_ms"]
    if lag["versions"]:
        print(f"publication to a follower's first answer from it: p50 {lag['p50']:.2f} ms, "
              f"p99 {lag['p99']:.2f} ms over {lag['versions']} versions")
    g = f["lag_gauges"]
    print(f"followers' lag gauges over {g['samples']} scrapes: versions p50 {g['versions_p50']:.0f} "
          f"p99 {g['versions_p99']:.0f}; seconds p50 {g['seconds_p50']:.3f} p99 {g['seconds_p99']:.3f}")
    late = f["late_follower_ready_s"]
    print(f"a follower started mid-stream is ready {late['from_launch']:.2f} s after launch, "
          f"{late['from_bound']:.3f} s after binding its sockets")


if __name__ == "__main__":
    main()
