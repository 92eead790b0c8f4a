"""Replay costs ingest nothing: training rows/s from ingest at full producer speed, with
replay on against replay off, in one run.

    python -m benchmarks.replay [--seconds S] [--rounds R] [--ratio N] [--json PATH]

Two daemons run side by side on their defaults but for `replay_ratio` (0 and N) and the
model (hidden [64, 64], the size of the learning benchmark).  Each round floods one, then
the other (the order alternates), from a producer process for S seconds, and reads the
rows trained from `status` before and after.  The figure is the median over rounds of
each round's on/off ratio: the two floods of a round are next to each other in time, so
they share the machine's slow and fast spells.  Two identical daemons (`--ratio 0`) give
the benchmark's own spread: single rounds differ by up to 20% on a 2-core machine, where
the producer, the ingest process and the trainer share the cores.  While the flood lasts
no replay step should run (new data always waits), so the replay steps taken during it
are printed too, then those taken in the quiet after it.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time

import numpy as np

from benchmarks.harness import report
from learnd.clients.client import Control, Producer
from learnd.clients.launch import start_daemon, stop_daemon

ARGS = ["--set", "hidden=[64,64]"]
DIM, CLASSES, BATCH = 64, 10, 64


def _flood(address, seconds, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((BATCH * 64, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, len(X))
    end = time.monotonic() + seconds
    with Producer(address, producer_id=f"flood-{seed}", window=32, timeout=30) as prod:
        k = 0
        while time.monotonic() < end:
            i = (k % 64) * BATCH
            prod.send(X[i:i + BATCH], y[i:i + BATCH], split="train")
            k += 1


def _status(ends):
    with Control(ends["control"]) as c:
        return c.status()


def _settle(ends, replay=True, timeout=60.0):
    """Wait until the trainer has trained everything sent (and, with replay, taken its
    banked replay steps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _status(ends)
        if s["queue_depth"] == 0 and (not replay or s["replay"]["pending"] == 0):
            return s
        time.sleep(0.01)
    return _status(ends)


def _round(ends, seconds, seed):
    before = _settle(ends)
    t0 = time.monotonic()
    p = mp.get_context("spawn").Process(target=_flood, args=(ends["ingest"], seconds, seed))
    p.start()
    p.join(seconds + 60)
    during = _status(ends)
    trained = _settle(ends, replay=False)     # every sent row trained: the throughput
    elapsed = time.monotonic() - t0
    after = _settle(ends)
    return {"rows_per_s": (trained["samples_trained"] - before["samples_trained"]) / elapsed,
            "replay_during": during["replay"]["steps"] - before["replay"]["steps"],
            "replay_after": after["replay"]["steps"] - during["replay"]["steps"],
            "new_steps": after["batches_trained"] - before["batches_trained"]}


def run(args):
    runs = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="learnd-bench-") as off_dir, \
            tempfile.TemporaryDirectory(prefix="learnd-bench-") as on_dir:
        off = start_daemon(off_dir, ARGS, {"LEARND_REPLAY_RATIO": "0"})
        on = start_daemon(on_dir, ARGS, {"LEARND_REPLAY_RATIO": str(args.ratio)})
        try:
            for r in range(args.rounds):
                order = (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off))
                for name, (_, ends, _) in order:
                    runs[name].append(_round(ends, args.seconds, seed=r))
        finally:
            for proc, _, log in (off, on):
                stop_daemon(proc, log)
    med = {k: float(np.median([x["rows_per_s"] for x in v])) for k, v in runs.items()}
    paired = [a["rows_per_s"] / b["rows_per_s"] for a, b in zip(runs["on"], runs["off"])]
    q1, q3 = np.percentile(paired, [25, 75])
    return {"ratio": args.ratio, "seconds": args.seconds, "rounds": args.rounds, "runs": runs,
            "median_rows_per_s": med, "round_ratios": paired, "on_over_off": float(np.median(paired)),
            "on_over_off_iqr": [float(q1), float(q3)]}


def _print(f):
    print(f"training rows/s from ingest at full producer speed, {f['rounds']} interleaved rounds "
          f"of {f['seconds']:.0f} s, medians")
    print(f"{'replay':<14} {'rows/s':>10} {'replay steps during / after the flood':>40}")
    for name, label in (("off", "off"), ("on", f"ratio {f['ratio']}")):
        during = [x["replay_during"] for x in f["runs"][name]]
        after = [x["replay_after"] for x in f["runs"][name]]
        print(f"{label:<14} {f['median_rows_per_s'][name]:>10,.0f} {str(during) + ' / ' + str(after):>40}")
    q1, q3 = f["on_over_off_iqr"]
    print(f"on / off, median of the rounds' ratios: {f['on_over_off']:.3f}x (quartiles {q1:.3f}-{q3:.3f}; "
          f"target >= 0.95x)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--ratio", type=int, default=4)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    return report(run(args), _print, args.json)


if __name__ == "__main__":
    main()
