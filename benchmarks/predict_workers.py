"""Predict workers: one worker bound to the predict socket against several behind the
supervisor's proxy, over loopback, with the bare pyzmq round trip as the baseline.

    python -m benchmarks.predict_workers [--workers 1 2 3] [--clients 8] [--rows 1 64]
                                         [--seconds S] [--rounds R] [--json PATH]

One process tree per worker count runs side by side (W1, trained on one batch, then
idle: this measures serving alone).  Each round, interleaved: the bare round trip;
then for each tree a single client's one-row latency (what the proxy's hop costs), and
`--clients` client processes asking back to back with each `--rows` size (what several
workers add in throughput).  Medians over rounds.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time

import numpy as np

from benchmarks.daemon import (BATCH, CLASSES, DIM, W1_ARGS, _bare_latencies, _concurrent, _echo_server,
                               _predict_latencies)
from benchmarks.harness import report
from learnd.clients.client import Predictor, Producer
from learnd.clients.launch import start_daemon, stop_daemon


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--clients", type=int, default=8, help="concurrent client processes (default 8)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64], help="rows per request under load")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    return report(run(args), _print, args.json)


def run(args):
    rng = np.random.default_rng(0)
    inputs = {m: rng.standard_normal((m, DIM)).astype(np.float32) for m in {1, *args.rows}}
    stop_echo, q = mp.Event(), mp.Queue()
    echo = mp.Process(target=_echo_server, args=(q, stop_echo), daemon=True)
    echo.start()
    echo_address = q.get(timeout=30)
    trees, dirs = {}, []
    try:
        for n in args.workers:
            d = tempfile.TemporaryDirectory(prefix="learnd-bench-")
            dirs.append(d)
            trees[n] = start_daemon(d.name, W1_ARGS + ["--set", f"predict_workers={n}"])
            with Producer(trees[n][1]["ingest"], producer_id="warm") as prod:   # the model
                prod.send(rng.standard_normal((BATCH, DIM)).astype(np.float32), rng.integers(0, CLASSES, BATCH))
        predictors = {n: Predictor(ends["predict"], timeout=30) for n, (_, ends, _) in trees.items()}
        for p in predictors.values():                                           # served once each
            _wait_for_model(p, inputs[1])
        bare, single, loaded = [], {n: [] for n in trees}, {(n, m): [] for n in trees for m in args.rows}
        for _ in range(args.rounds):
            bare.append(_bare_latencies(echo_address, inputs[1], args.seconds))
            for n in trees:
                single[n].append(_predict_latencies(predictors[n], inputs[1], args.seconds))
            for m in args.rows:
                for n, (_, ends, _) in trees.items():
                    loaded[(n, m)].append(_concurrent(ends["predict"], inputs[m], args.seconds, args.clients))
        for p in predictors.values():
            p.close()
    finally:
        for proc, _, log in trees.values():
            stop_daemon(proc, log)
        for d in dirs:
            d.cleanup()
        stop_echo.set()
        echo.join(5)

    def pct(rounds, q):
        return float(np.median([np.percentile(r, q) for r in rounds]) * 1e6)

    out = {"bare": {"p50_us": pct(bare, 50), "p99_us": pct(bare, 99)}, "clients": args.clients, "trees": {}}
    for n in trees:
        t = out["trees"][n] = {"single_p50_us": pct(single[n], 50), "single_p99_us": pct(single[n], 99)}
        for m in args.rows:
            rs = loaded[(n, m)]
            t[f"rows_{m}"] = {k: float(np.median([r[k] for r in rs])) for k in ("p50_us", "p99_us", "requests_per_s")}
    return out


def _wait_for_model(predictor, x, attempts=600):
    for _ in range(attempts):
        try:
            predictor.predict(x)
            return
        except Exception:       # not_ready until the trainer publishes its first version
            time.sleep(0.05)
    raise RuntimeError("no model served")


def _print(f):
    bare = f["bare"]
    print(f"bare pyzmq round trip, 1 row: p50 {bare['p50_us']:.0f} µs, p99 {bare['p99_us']:.0f} µs")
    rows = sorted({int(k.split("_")[1]) for t in f["trees"].values() for k in t if k.startswith("rows_")})
    head = f"{'workers':>7} {'1 client p50/p99 µs':>20} {'vs bare':>11}"
    for m in rows:
        head += f" | {f['clients']} clients x {m} rows: req/s, p50/p99 µs"
    print(head)
    first = None
    for n, t in f["trees"].items():
        line = (f"{n:>7} {t['single_p50_us']:>9.0f} / {t['single_p99_us']:<8.0f} "
                f"{t['single_p50_us'] / bare['p50_us']:>4.2f}x/{t['single_p99_us'] / bare['p99_us']:.2f}x")
        for m in rows:
            r = t[f"rows_{m}"]
            base = (first or t)[f"rows_{m}"]["requests_per_s"]
            line += (f" | {r['requests_per_s']:>8,.0f} ({r['requests_per_s'] / base:.2f}x) "
                     f"{r['p50_us']:>6.0f}/{r['p99_us']:<6.0f}")
        print(line)
        first = first or t


if __name__ == "__main__":
    main()
