"""All of learnd's performance figures from one run on one machine: the engine against
NumPy, PyTorch eager and the GEMM-only bound; W1 across batch sizes with achieved
GFLOP/s; the daemon end to end over loopback against the bare pyzmq round trip; and
the issue's targets as ratios from this run.

    python -m benchmarks [--quick] [--json PATH]

A full run takes about 5 minutes, --quick about 1.5.  The JSON goes to
benchmarks/results/latest.json unless --json says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from benchmarks import daemon as daemon_bench
from benchmarks import engine as engine_bench
from benchmarks import sweep

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")

TARGETS = (   # (key, label, op, goal)
    ("w1_vs_torch_fused", "W1 train vs PyTorch eager (fused Adam)", ">=", 2.5),
    ("w1_vs_gemm_bound", "W1 train vs GEMM-only bound", ">=", 0.7),
    ("w2_vs_torch", "W2 train vs PyTorch eager", ">=", 10.0),
    ("predict_p50_vs_torch", "one-sample predict p50 vs PyTorch", "<=", 0.1),
    ("predict_half_p50_vs_torch", "  the same, serving_precision=half", "<=", 0.1),
    ("idle_p50_vs_bare", "ZeroMQ predict p50, idle, vs bare round trip", "<=", 1.3),
    ("idle_p99_vs_bare", "ZeroMQ predict p99, idle, vs bare round trip", "<=", 2.0),
    ("idle_spinning_p50_vs_bare", "  p50 with predict_spin_us (a busy core)", "<=", 1.3),
    ("idle_spinning_p99_vs_bare", "  p99 with predict_spin_us", "<=", 2.0),
    ("training_p99_vs_bare", "ZeroMQ predict p99, training, vs bare", "<=", 3.0),
    ("daemon_vs_embedded_training", "daemon training vs embedded engine", ">=", 0.9),
    ("daemon_serving_vs_embedded_training", "  the same while serving (no target)", None, None),
    ("ready_seconds", "ready to serve, warm cache (s)", "<=", 3.0),
)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds: about 1.5 minutes")
    ap.add_argument("--json", default=DEFAULT_JSON, help=f"where to write the results ({DEFAULT_JSON})")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    log("== engine against NumPy, PyTorch eager and the GEMM-only bound")
    engine_args = ["--rounds", "5", "--budget", "35", "--block", "0.15"] if args.quick else ["--budget", "140"]
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        engine_bench.main(engine_args + ["--json", tmp.name] + (["--no-torch"] if args.no_torch else []))
        engine = json.load(open(tmp.name))

    log("== W1 at batch 32, 128, 512")
    batches = sweep.w1_batches(rounds=3 if args.quick else 7, block_s=0.15 if args.quick else 0.25)

    log("== daemon over loopback")
    dargs = ["--seconds", "1.0", "--rounds", "1"] if args.quick else ["--seconds", "2.5", "--rounds", "3"]
    daemon = daemon_bench.main(dargs)

    ratios = dict(engine["ratios"])
    ratios.update(daemon["ratios"])
    embedded_1t = next(b for b in batches if b["batch"] == daemon_bench.BATCH and b["threads"] == 1)
    # The daemon's trainer runs 1 BLAS thread (blas_threads), so it is held against the
    # embedded engine at 1 thread; while serving, it shares the cores with predictions.
    ratios["daemon_vs_embedded_training"] = (daemon["ingest_training_samples_per_s"]
                                             / embedded_1t["samples_per_s"])
    ratios["daemon_serving_vs_embedded_training"] = (daemon["training_samples_per_s"]
                                                     / embedded_1t["samples_per_s"])
    ratios["ready_seconds"] = daemon["ready_seconds"]
    targets = {}
    for key, label, op, goal in TARGETS:
        if key in ratios:
            v = ratios[key]
            met = None if op is None else bool(v >= goal if op == ">=" else v <= goal)
            targets[key] = {"label": label, "value": v, "target": "" if op is None else f"{op} {goal}",
                            "met": met}
    out = {"environment": engine["environment"], "engine": engine, "w1_batches": batches,
           "daemon": daemon, "ratios": ratios, "targets": targets, "quick": args.quick,
           "elapsed_seconds": time.perf_counter() - t0}
    print_summary(out)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    log(f"wrote {args.json}")
    return 0


def print_summary(out):
    print()
    print("W1 training across batch sizes (GEMM FLOPs per step / step time)")
    print(f"  {'batch':>5} {'BLAS threads':>12} {'us/step':>9} {'samples/s':>11} {'GFLOP/s':>8}")
    for b in out["w1_batches"]:
        print(f"  {b['batch']:>5} {b['threads']:>12} {b['step_us']:>9,.0f} {b['samples_per_s']:>11,.0f} "
              f"{b['gflops']:>8.1f}")
    d = out["daemon"]
    print(f"daemon: training {d['ingest_training_samples_per_s']:,.0f} samples/s from ingest alone, "
          f"{d['training_samples_per_s']:,.0f} samples/s while serving; "
          f"ready in {d['ready_seconds']:.2f} s")
    print()
    print("targets, as ratios from this run:")
    for key, t in out["targets"].items():
        verdict = "" if t["met"] is None else f"target {t['target']:<7} {'met' if t['met'] else 'NOT met'}"
        print(f"  {t['label']:<48} {t['value']:7.2f}  {verdict}")
    print(f"whole run: {out['elapsed_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
