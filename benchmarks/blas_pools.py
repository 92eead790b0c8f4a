"""One BLAS or two: a W1 training step right after NumPy's own matrix products.

    python -m benchmarks.blas_pools [--rounds 7] [--steps 40] [--json out.json]

The engine's GEMMs run on NumPy's OpenBLAS (engine.kernels.blas); before, they ran on
the OpenBLAS SciPy bundles, through Numba's np.dot, which `set_numpy_blas(False)`
still selects.  An OpenBLAS worker spins for about 0.1 s after its last product before
it sleeps, so with two libraries in the process, NumPy's worker holds the second core
while the engine's two-thread GEMMs want it.  For each path, in alternating rounds in
this one process, the mean µs per W1 step (784-256-128-10, batch norm, dropout, Adam,
batch 128, 2 BLAS threads) over --steps steps taken:

  after a pause           0.3 s after anything ran: every pool asleep
  after NumPy products    right after 20 products of 512 x 512 float32 matrices in NumPy

and the ratio of the two paths, per round, median over rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a file: import the project, not this folder
    import os
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import numpy as np
from threadpoolctl import threadpool_limits

from learnd.engine import Model
from learnd.engine.kernels import blas
from benchmarks.engine import W1_BATCH, W1_SPEC

PATHS = {"numpy": True, "np.dot": False}
CASES = ("after a pause", "after NumPy products")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)
    if blas.LIBRARY is None:
        raise SystemExit("NumPy's BLAS was not found: the engine runs on np.dot only, nothing to compare")

    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((W1_BATCH, W1_SPEC["input_dim"]), dtype=np.float32),
                rng.integers(0, W1_SPEC["n_outputs"], W1_BATCH)) for _ in range(16)]
    model = Model(**W1_SPEC)
    square = rng.standard_normal((512, 512), dtype=np.float32)

    def steps(n):
        start = time.perf_counter()
        for i in range(n):
            model.partial_fit(*batches[i % len(batches)])
        return (time.perf_counter() - start) / n * 1e6

    figures = {path: {case: [] for case in CASES} for path in PATHS}
    with threadpool_limits(limits=2, user_api="blas"):
        for on in PATHS.values():          # warm up: kernels loaded, both pools started
            blas.set_numpy_blas(on)
            steps(10)
            square @ square
        for r in range(args.rounds):
            order = list(PATHS.items()) if r % 2 == 0 else list(PATHS.items())[::-1]
            for path, on in order:
                blas.set_numpy_blas(on)
                time.sleep(0.3)
                figures[path]["after a pause"].append(steps(args.steps))
                for _ in range(20):
                    square @ square
                figures[path]["after NumPy products"].append(steps(args.steps))
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    blas.set_numpy_blas(True)

    print(f"\nW1 training step, µs (mean over {args.steps} steps; median over {args.rounds} rounds), "
          f"2 BLAS threads; NumPy's library: {blas.LIBRARY}")
    print(f"{'case':<24}{'NumPy BLAS':>12}{'np.dot':>12}{'np.dot / NumPy BLAS':>22}")
    out = {"rounds": args.rounds, "steps": args.steps, "library": blas.LIBRARY, "cases": {}}
    for case in CASES:
        a, b = figures["numpy"][case], figures["np.dot"][case]
        ratio = statistics.median(y / x for x, y in zip(a, b))
        print(f"{case:<24}{statistics.median(a):>12,.0f}{statistics.median(b):>12,.0f}{ratio:>21.2f}x")
        out["cases"][case] = {"numpy_blas_us": a, "np_dot_us": b, "ratio_median": ratio}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
