"""What a dead unit's optimizer moments cost a training step once they decay into
subnormal floats.

    python -m benchmarks.subnormal [--rounds 9] [--dead 0.1]

A ReLU unit that no longer fires gets an exactly zero gradient for its incoming
weights, so Adam's moments for them decay geometrically: v by beta1 = 0.9 a step, s by
beta2 = 0.999.  s reaches float32's smallest normal number (1.2e-38) some 70k steps
after the unit dies and then spends about 16k steps among the subnormals, where x86
arithmetic takes a microcode assist (tens to hundreds of cycles) on every operation
that reads or produces one.  The optimizer kernels store a moment that falls below the
smallest normal as 0 (engine/kernels/optim.py), so this state lasts one step.

Without L2 (the engine's default; with it the weights keep a gradient l2 W) the
benchmark puts W1 (benchmarks.engine) in that state: a share `--dead` of the first
hidden layer's units dead (batch norm's gamma 0 and beta -1: the ReLU never fires), their
incoming weights' s set to subnormal values and v to 0, as 70k steps of zero gradient
leave them.  It then times training steps in that state against the same model with
those moments at 0, alternating, medians, 1 BLAS thread: with the flush the two are
the same after the first step; without it (before engine/kernels/optim.py flushed) the
subnormal state costs what the table shows.
"""
from __future__ import annotations

import argparse
import gc
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
from benchmarks.engine import W1_BATCH, W1_SPEC
from benchmarks.harness import report

N_BATCHES = 16
# W1 without L2, as the engine's default: with L2 a dead unit's weights keep the gradient
# l2 W, and their moments stay normal numbers.
SPEC = {**W1_SPEC, "l2": 0.0}


def dead_unit_model(dead_share, subnormal, rng):
    """W1 after some steps, with `dead_share` of its first hidden layer's units dead and
    their incoming weights' Adam moments as a long run of zero gradients leaves them:
    v = 0 and s subnormal (or, with subnormal False, s = 0)."""
    model = Model(**SPEC)
    X = rng.standard_normal((W1_BATCH, 784), dtype=np.float32)
    y = rng.integers(0, 10, W1_BATCH)
    for _ in range(5):
        model.partial_fit(X, y)
    n_units = SPEC["hidden"][0]
    dead = rng.choice(n_units, int(dead_share * n_units), replace=False)
    params = model.network.params
    params["gamma1"][dead] = 0.0
    params["beta1"][dead] = -1.0
    start, shape = model.network.layout.param_slices["W1"]     # W1 (n_units, 784) in the flat buffer
    rows = np.zeros(shape, dtype=bool)
    rows[dead] = True
    index = start + np.flatnonzero(rows.ravel())
    tiny = np.finfo(np.float32).tiny
    model.optimizer.state["v"][index] = 0.0
    model.optimizer.state["s"][index] = rng.uniform(0.01, 0.99, index.size).astype(np.float32) * tiny \
        if subnormal else 0.0
    return model, index


def _steps_us(model, batches, n):
    gc.disable()
    try:
        t0 = time.perf_counter()
        for i in range(n):
            model.partial_fit(*batches[i % len(batches)])
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        gc.enable()


def measure(rounds, dead_share, steps):
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((W1_BATCH, 784), dtype=np.float32), rng.integers(0, 10, W1_BATCH))
               for _ in range(N_BATCHES)]
    times = {"subnormal": [], "zero": []}
    left_subnormal = []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(rounds):
            for state in ("subnormal", "zero"):
                # a fresh model each round: the state under test lasts as long as the flush lets it
                model, index = dead_unit_model(dead_share, state == "subnormal", np.random.default_rng(1))
                times[state].append(_steps_us(model, batches, steps))
                s = model.optimizer.state["s"][index]
                if state == "subnormal":
                    left_subnormal.append(int(np.count_nonzero((s != 0) & (s < np.finfo(np.float32).tiny))))
    sub, zero = statistics.median(times["subnormal"]), statistics.median(times["zero"])
    return {"dead_share": dead_share, "moments_affected": int(index.size), "steps_per_round": steps,
            "rounds": rounds, "subnormal_us": sub, "zero_us": zero, "ratio": sub / zero,
            "subnormal_left_after_steps": max(left_subnormal)}


def print_table(f):
    print(f"W1, {f['dead_share']:.0%} of the first hidden layer dead, {f['moments_affected']:,} Adam "
          f"moments; {f['steps_per_round']} steps a round, medians over {f['rounds']} rounds, 1 BLAS thread")
    print(f"{'moments of the dead units':<32}{'µs/step':>10}")
    print(f"{'subnormal s, v = 0':<32}{f['subnormal_us']:>10.0f}")
    print(f"{'s = v = 0':<32}{f['zero_us']:>10.0f}")
    print(f"ratio {f['ratio']:.2f}x; subnormal moments left after the steps: {f['subnormal_left_after_steps']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--dead", type=float, default=0.1, help="share of first-layer units dead")
    parser.add_argument("--steps", type=int, default=40, help="training steps timed per round")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    return report(measure(args.rounds, args.dead, args.steps), print_table, args.json)


if __name__ == "__main__":
    main()
