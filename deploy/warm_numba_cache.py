"""Fill Numba's on-disk cache with every kernel a daemon on the default settings runs.

The container image runs this once at build time (deploy/Dockerfile), so a container
starts serving in about a second instead of compiling for a minute first.  It drives a
real `learnd serve` on ephemeral loopback ports in a temporary state dir through each
path that compiles something: the start-up warm-up (every task for the model dtype),
rows sent as `auto` (the split hash), `train` and `dev`, a step, an evaluation,
predictions of labels and probabilities, a checkpoint and the shutdown.  The kernels
land in NUMBA_CACHE_DIR (or beside the sources when it is unset).

    python deploy/warm_numba_cache.py          # exit 0 once the daemon stopped cleanly
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from learnd.clients.client import Control, Predictor, Producer
from learnd.clients.launch import start_daemon, stop_daemon
from learnd.engine.datasets import load

BATCH = 64
DEADLINE_S = 300.0      # a cold cache on a slow builder compiles every kernel first


def _wait(control, what, predicate, deadline):
    while time.monotonic() < deadline:
        status = control.status()
        if predicate(status):
            return status
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached within {DEADLINE_S:.0f} s")


def warm(state_dir, dtype):
    """Drive one daemon through every compiling path; returns its exit code."""
    X, y, _ = load("digits")
    deadline = time.monotonic() + DEADLINE_S
    proc, ends, log = start_daemon(state_dir, ["--set", "eval_interval_s=0.2",
                                               "--set", f"dtype={dtype}"], timeout=DEADLINE_S)
    try:
        with Producer(ends["ingest"], producer_id="warm-up", window=8, timeout=30) as prod:
            for i, split in zip(range(0, 10 * BATCH, BATCH), ("dev", "test") + ("auto",) * 4 + ("train",) * 4):
                prod.send(X[i:i + BATCH], y[i:i + BATCH], split=split)
        if prod.rejected:
            raise RuntimeError(f"the daemon refused warm-up batches: {prod.rejected[:3]}")
        with Control(ends["control"]) as control:
            _wait(control, "an evaluation of the dev split", lambda s: "dev" in (s.get("evaluation") or {}),
                  deadline)
            with Predictor(ends["predict"]) as predictor:
                for output in ("label", "proba"):
                    predictor.predict(X[:BATCH], output=output)
                predictor.predict(X[:1])
            control.checkpoint()
    finally:
        stop_daemon(proc, log)
    return proc.returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="the model dtype whose kernels to compile (default float32)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="learnd-warm-") as state_dir:
        code = warm(state_dir, args.dtype)
        if code != 0:
            with open(os.path.join(state_dir, "daemon.log"), errors="replace") as f:
                sys.stderr.write(f.read())
            print(f"warm-up: the daemon exited with {code}", file=sys.stderr)
            return 1
    cache = os.environ.get("NUMBA_CACHE_DIR", "beside the sources")
    print(f"warm-up: Numba cache ({cache}) filled for {args.dtype} in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
