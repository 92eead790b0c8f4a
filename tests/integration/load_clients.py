"""Client load for the soak test, in its own process so the test's own interpreter (and
its GIL) is not the bottleneck:

    python -m tests.integration.load_clients predict ADDRESS --threads 10 --seconds 60 --out F
    python -m tests.integration.load_clients produce ADDRESS --threads 4 --rate 25 --seconds 60 --out F

`predict` runs closed-loop clients (each thread its own DEALER), asking for 1..8 rows of
the digits test set at a time; `produce` runs producers, each sending 64-row batches of
the digits training set at `rate` messages per second.  Every failure counts as an
error: a client never retries silently.  F receives a JSON summary, and for `predict`
F.npy the latency of every request in seconds.
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import zmq

from learnd.clients.client import Predictor, Producer
from learnd.engine.datasets import split

REPLY_TIMEOUT_S = 10.0      # a reply slower than this is an error, not a retry
BATCH = 64


def predict_loop(address, ctx, deadline, seed, X, latencies, errors):
    rng = np.random.default_rng(seed)
    with Predictor(address, timeout=REPLY_TIMEOUT_S, retries=0, context=ctx) as p:
        while time.monotonic() < deadline:
            rows = int(rng.integers(1, 9))
            i = int(rng.integers(0, len(X) - rows))
            t0 = time.perf_counter()
            try:
                reply = p.predict(X[i:i + rows])
                if reply.y.shape[0] != rows:
                    raise AssertionError(f"{reply.y.shape[0]} predictions for {rows} rows")
            except Exception as exc:  # every failure is counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t0)


def produce_loop(address, ctx, deadline, producer_id, rate, X, y, totals, errors):
    try:
        with Producer(address, producer_id=producer_id, window=16, timeout=REPLY_TIMEOUT_S,
                      retries=0, context=ctx) as prod:
            t0 = time.monotonic()
            sent = 0
            while time.monotonic() < deadline:
                delay = t0 + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                i = (sent * BATCH) % (len(X) - BATCH)
                prod.send(X[i:i + BATCH], y[i:i + BATCH], split="train")
                sent += 1
            prod.flush(REPLY_TIMEOUT_S)
        totals.append((sent, prod.acked, prod.acked_rows))
        errors.extend(f"seq {r.seq}: {r.code}: {r.message}" for r in prod.rejected)
    except Exception as exc:  # every failure is counted and reported
        errors.append(f"{type(exc).__name__}: {exc}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=("predict", "produce"))
    ap.add_argument("address")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--rate", type=float, default=25.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    Xtr, ytr, Xte, _ = split("digits")
    ctx = zmq.Context()
    deadline = time.monotonic() + args.seconds
    errors, threads = [], []
    per_thread = [[] for _ in range(args.threads)]
    totals = []
    for k in range(args.threads):
        if args.role == "predict":
            target, targs = predict_loop, (args.address, ctx, deadline, args.seed * 1000 + k, Xte,
                                           per_thread[k], errors)
        else:
            target, targs = produce_loop, (args.address, ctx, deadline, f"soak-{args.seed}-{k}",
                                           args.rate, Xtr, ytr, totals, errors)
        threads.append(threading.Thread(target=target, args=targs))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    ctx.term()
    summary = {"role": args.role, "threads": args.threads, "seconds": elapsed, "errors": errors}
    if args.role == "predict":
        latencies = np.array([v for lat in per_thread for v in lat])
        np.save(args.out + ".npy", latencies)
        summary["requests"] = int(latencies.size)
    else:
        summary["messages_sent"] = sum(t[0] for t in totals)
        summary["messages_acked"] = sum(t[1] for t in totals)
        summary["rows_acked"] = sum(t[2] for t in totals)
    with open(args.out, "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main()
