"""`learnd demo`: a daemon on the embedded default, fed a real data set while a client
asks it for predictions, with live progress and the held-out score at the end."""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import threading
import time

import numpy as np

from .client import Control, Predictor, Producer
from .launch import start_daemon, stop_daemon

DATASET = "digits"
REFRESH_S = 0.5


def _dataset_path(name):
    # find_spec of the top-level package does not import it (and so not Numba).
    spec = importlib.util.find_spec("engine")
    return os.path.join(spec.submodule_search_locations[0], "datasets", f"{name}.npz"), \
        os.path.join(spec.submodule_search_locations[0], "datasets", f"{name}.json")


class _Asker(threading.Thread):
    """Keeps asking for predictions: one-row requests for latency, the whole held-out
    set now and then for accuracy."""

    def __init__(self, address, X, y):
        super().__init__(daemon=True)
        self.address, self.X, self.y = address, X, y
        self.latencies = []
        self.accuracy = float("nan")
        self.version = 0
        self.stop = threading.Event()

    def run(self):
        with Predictor(self.address, timeout=10) as p:
            i = 0
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    p.predict(self.X[i % len(self.X)][None, :])
                except Exception:        # not ready before the first batch: try again
                    time.sleep(0.05)
                    continue
                self.latencies.append(time.perf_counter() - t0)
                i += 1
                if i % 50 == 0:
                    r = p.predict(self.X)
                    self.accuracy, self.version = float((r.y == self.y).mean()), r.model_version


def run_demo(passes=8, quiet=False):
    npz, meta_path = _dataset_path(DATASET)
    with np.load(npz, allow_pickle=False) as z:
        X, y = z["X"], z["y"]
    with open(meta_path) as f:
        meta = json.load(f)
    start = meta["heldout"]["start"]
    Xtr, ytr, Xte, yte = X[:start], y[:start], X[start:], y[start:]
    print(f"learnd demo: {meta['title']} ({meta['source']['package']} {meta['source']['version']}), "
          f"{len(Xtr)} rows to train on, {len(Xte)} held out", flush=True)
    with tempfile.TemporaryDirectory(prefix="learnd-demo-") as state_dir:
        t_start = time.monotonic()
        # Evaluate every 512 trained rows, so the short run ends with fresh figures.
        proc, ends, log = start_daemon(state_dir, ["--set", "eval_interval_samples=512"])
        print(f"daemon started (pid {proc.pid}) on the embedded default; metrics at {ends['metrics']}",
              flush=True)
        try:
            return _stream(ends, Xtr, ytr, Xte, yte, passes, quiet, t_start)
        finally:
            stop_daemon(proc, log)
            print(f"daemon stopped (exit {proc.returncode}) after {time.monotonic() - t_start:.1f} s")


def _stream(ends, Xtr, ytr, Xte, yte, passes, quiet, t_start):
    asker = _Asker(ends["predict"], Xte, yte)
    asker.start()
    control = Control(ends["control"])
    last = 0.0
    try:
        with Producer(ends["ingest"], producer_id="demo", window=8, timeout=30) as prod:
            prod.send(Xte, yte, split="test")     # held out: scored by the daemon, never trained
            for _ in range(passes):
                order = np.arange(len(Xtr))
                for i in range(0, len(order), 64):
                    prod.send(Xtr[i:i + 64], ytr[i:i + 64], split="train")
                    if not quiet and time.monotonic() - last >= REFRESH_S:
                        _progress(control, asker)
                        last = time.monotonic()
        total = passes * len(Xtr)
        deadline = time.monotonic() + 60
        while control.status()["samples_trained"] < total - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        asker.stop.set()
        asker.join(10)
        with Predictor(ends["predict"]) as p:
            final = p.predict(Xte)
        status = control.status()
        if not quiet:
            _progress(control, asker)
            print()
        accuracy = float((final.y == yte).mean())
        p50, p99 = (np.percentile(asker.latencies, [50, 99]) * 1e3) if asker.latencies else (np.nan, np.nan)
        print(f"trained {status['samples_trained']} rows in {status['batches_trained']} steps; "
              f"train loss {status['train_loss']:.4f}")
        print(f"held-out accuracy {accuracy:.4f} on {len(Xte)} rows (model version {final.model_version})")
        print(f"predict latency while training: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
              f"over {len(asker.latencies)} one-row requests")
        diag, prog = status.get("diagnosis") or {}, status.get("progressive") or {}
        if prog.get("error") is not None:
            print(f"test-then-train error over the stream {prog['error']:.4f} "
                  f"(every batch scored before the model learned from it)")
        if diag:
            print(f"diagnosis: {diag['verdict']} — {diag['recipe']}")
        print(f"metrics: {ends['metrics']}   status: learnd status --control {ends['control']}")
        return 0
    finally:
        asker.stop.set()
        control.close()


def _progress(control, asker):
    s = control.status()
    lat = np.median(asker.latencies[-200:]) * 1e3 if asker.latencies else float("nan")
    loss = s["train_loss"] if s["train_loss"] is not None else float("nan")
    print(f"\rrows trained {s['samples_trained']:>6}  loss {loss:7.4f}  "
          f"held-out accuracy {asker.accuracy:6.3f}  predict p50 {lat:5.2f} ms  "
          f"model v{s['model_version'] or 0:<5}", end="", flush=True)
