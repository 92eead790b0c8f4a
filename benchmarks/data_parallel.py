"""Data-parallel training: the group's rows per second with 1 and 2 ranks on this machine,
and MPI Allreduce time against parameter count, the input of docs/scaling.md's projection.

    python -m benchmarks.data_parallel [--ranks 1 2] [--seconds S] [--json PATH]

Each group (`mpiexec -n K learnd serve --data-parallel`, W1: 784-256-128-10 with batch
norm and dropout, batch 128 per rank) takes one producer per rank streaming as fast as
it is acknowledged; after a warm-up, the rows the whole group trained over `--seconds`
(every rank's samples_trained), and the steps.  Then, under `mpiexec -n 2`, the median
time of one Allreduce (in place, float64 sum) for buffers from 1e3 to 4e6 values, and of
the 4-number round the ranks agree in before every step.

On one machine the ranks share its cores (and, here, with the producers): two ranks on
two cores measure what the collective and the rounds cost, not what a second machine
adds.  `project` turns the measured step time and a network's latency and bandwidth
into rows per second for K machines (docs/scaling.md has the formula).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.harness import report
from learnd.clients.client import Control, Producer
from learnd.clients.launch import free_port_base, mpiexec, start_group, stop_group

DIM, CLASSES, BATCH = 784, 10, 128
W1_SETTINGS = {"hidden": "[256,128]", "keep_prob": "0.8", "l2": "0.0001", "batch_norm": "true",
               "input_dim": str(DIM), "task": '"multiclass"', "n_outputs": str(CLASSES),
               "batch_size": str(BATCH)}
W1_PARAMS = DIM * 256 + 2 * 256 + 256 * 128 + 2 * 128 + 128 * CLASSES + CLASSES
WARMUP_S = 3.0
SIZES = (1_000, 10_000, 100_000, W1_PARAMS, 1_000_000, 4_000_000)
# A datacentre network for the projection: 10 Gb/s Ethernet, TCP.
NETWORK = {"latency_s": 50e-6, "bandwidth_bytes_s": 1.25e9}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--allreduce-out", help=argparse.SUPPRESS)   # the timing under mpiexec
    args = parser.parse_args(argv)
    if args.allreduce_out:
        return time_allreduce(args.allreduce_out)
    if mpiexec() is None:
        print("no mpiexec: pip install 'learnd[mpi]'", file=sys.stderr)
        return 2
    figures = {"groups": [group_rate(k, args.seconds) for k in args.ranks], "allreduce": allreduce_times(),
               "params": W1_PARAMS, "batch_per_rank": BATCH}
    one = next((g for g in figures["groups"] if g["ranks"] == 1), None)
    if one is not None:
        step_s = 1.0 / one["steps_per_s"]
        figures["projection"] = {"network": NETWORK, "step_seconds": step_s,
                                 "rows_per_s": {k: project(step_s, W1_PARAMS, k, BATCH, **NETWORK)
                                                for k in (1, 2, 4, 8, 16, 32)}}
    report(figures, _print, args.json)
    return 0


def ring_allreduce_seconds(n_params, ranks, latency_s, bandwidth_bytes_s, bytes_per_value=8):
    """A ring Allreduce of n float64 values over K ranks: 2 (K - 1) messages in a row,
    each of n / K values: 2 (K - 1) latency + 2 (K - 1) / K * n * 8 / bandwidth."""
    if ranks == 1:
        return 0.0
    k = ranks
    return 2 * (k - 1) * latency_s + 2 * (k - 1) / k * n_params * bytes_per_value / bandwidth_bytes_s


def project(step_s, n_params, ranks, batch, latency_s, bandwidth_bytes_s):
    """Group rows per second for K machines: each step is one rank's compute (step_s, the
    same on every machine), the gradient's Allreduce and the round's (4 values); K
    batches of `batch` rows each."""
    comm = (ring_allreduce_seconds(n_params, ranks, latency_s, bandwidth_bytes_s)
            + ring_allreduce_seconds(4, ranks, latency_s, bandwidth_bytes_s))
    return ranks * batch / (step_s + comm)


def _produce(address, producer_id, stop, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((BATCH * 32, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, len(X))
    with Producer(address, producer_id=producer_id, window=32, timeout=30) as prod:
        k = 0
        while not stop.is_set():
            i = (k % 32) * BATCH
            prod.send(X[i:i + BATCH], y[i:i + BATCH], split="train")
            k += 1


def _totals(endpoints):
    rows = steps = 0
    for info in endpoints:
        with Control(info["control"], timeout=30) as c:
            s = c.status()
        rows += s["samples_trained"]
        steps = s["batches_trained"]        # the same on every rank
    return rows, steps


def group_rate(ranks, seconds):
    """Rows and steps per second of a group of `ranks` with one producer per rank."""
    args = []
    for k, v in W1_SETTINGS.items():
        args += ["--set", f"{k}={v}"]
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoints, log = start_group(ranks, os.path.join(tmp, "state"), free_port_base(ranks), args,
                                           env={"LEARND_LOG_LEVEL": "warning"})
        stop = mp.Event()
        producers = [mp.Process(target=_produce, args=(info["ingest"], f"bench-{r}", stop, r))
                     for r, info in enumerate(endpoints)]
        try:
            for p in producers:
                p.start()
            time.sleep(WARMUP_S)
            rows0, steps0 = _totals(endpoints)
            t0 = time.monotonic()
            time.sleep(seconds)
            rows1, steps1 = _totals(endpoints)
            elapsed = time.monotonic() - t0
        finally:
            stop.set()
            for p in producers:
                p.join(30)
                if p.is_alive():
                    p.kill()
            stop_group(proc, endpoints, log)
    return {"ranks": ranks, "rows_per_s": (rows1 - rows0) / elapsed, "steps_per_s": (steps1 - steps0) / elapsed,
            "rows_per_step": (rows1 - rows0) / max(1, steps1 - steps0)}


def allreduce_times():
    """{values: median seconds} of one Allreduce under mpiexec -n 2, and the round's."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "allreduce.json")
        subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "benchmarks.data_parallel",
                        "--allreduce-out", out], check=True, timeout=600)
        with open(out) as f:
            return json.load(f)


def time_allreduce(path):
    """Run by every rank: the median of in-place Allreduce (SUM) times per buffer size,
    after a warm-up, each timed between barriers; rank 0 writes them to `path`."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    result = {}
    for n in (4, *SIZES):
        buf = np.ones(n)
        reps = max(10, min(2000, int(2e7 // (n * 8))))
        times = []
        for i in range(reps + 5):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            if i >= 5:
                times.append(time.perf_counter() - t0)
        result[str(n)] = float(np.median(times))
    if comm.Get_rank() == 0:
        with open(path, "w") as f:
            json.dump(result, f)
    return 0


def _print(figures):
    print(f"W1 ({figures['params']:,} parameters), {figures['batch_per_rank']} rows per rank per step")
    print(f"{'ranks':>6} {'rows/s':>10} {'steps/s':>9} {'rows/step':>10}")
    for g in figures["groups"]:
        print(f"{g['ranks']:>6} {g['rows_per_s']:>10.0f} {g['steps_per_s']:>9.1f} {g['rows_per_step']:>10.1f}")
    print("\nAllreduce (float64 sum, in place), 2 ranks on this machine, median")
    print(f"{'values':>10} {'bytes':>12} {'seconds':>11} {'GB/s':>7}")
    for n, t in figures["allreduce"].items():
        n = int(n)
        print(f"{n:>10,} {8 * n:>12,} {t:>11.2e} {8 * n / t / 1e9:>7.2f}")
    proj = figures.get("projection")
    if proj:
        net = proj["network"]
        print(f"\nProjection (docs/scaling.md): step {proj['step_seconds'] * 1e3:.2f} ms, network latency "
              f"{net['latency_s'] * 1e6:.0f} us, {net['bandwidth_bytes_s'] / 1e9:.2f} GB/s")
        for k, rate in proj["rows_per_s"].items():
            print(f"  {k:>3} machines: {rate:>9.0f} rows/s")


if __name__ == "__main__":
    sys.exit(main())
