"""A population trains its members in parallel: the members' steps per second added up,
against one model's steps per second, in one run.

    python -m benchmarks.population [--members N] [--seconds S] [--rounds R] [--threads T]

Every member is W1 (784-256-128-10, batch norm, keep_prob 0.8, Adam, L2, batch 128);
the search space varies only the learning rate and L2, which cost nothing, so a
member's step costs what the single model's does.  Each round times the single
model, then the population (the order alternates), for S seconds each; BLAS runs one
thread per caller, as in the daemon's trainer.  The figure is the ratio of the
medians: (population batches/s x members) / (single-model steps/s).  On two cores the
ideal is 2.0.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

from learnd import Model, Population

W1 = dict(hidden=(256, 128), task="multiclass", n_outputs=10, batch_norm=True, keep_prob=0.8,
          optimizer="adam", lr=1e-3, l2=1e-4, input_dim=784)
SPACE = {"lr": {"log_uniform": [1e-4, 1e-2]}, "l2": {"log_uniform": [1e-6, 1e-3]}}
BATCH = 128


def _batches(seed, n=32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((BATCH * n, 784)).astype(np.float32)
    y = rng.integers(0, 10, len(X))
    return [(X[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(X), BATCH)]


def _rate(step, batches, seconds):
    """Calls of step per second over `seconds` (after two warm-up calls)."""
    for xb, yb in batches[:2]:
        step(xb, yb)
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        xb, yb = batches[k % len(batches)]
        step(xb, yb)
        k += 1
    return k / (time.perf_counter() - t0)


def _plain_threads(models, batches, seconds, threads):
    """Steps per second of `models` dealt out to `threads` plain threads, each stepping
    its share over and over for `seconds`: what the cores give with no population."""
    counts = [0] * threads

    def work(i):
        share, k, t0 = models[i::threads], 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for m in share:
                xb, yb = batches[k % len(batches)]
                m.partial_fit(xb, yb)
                k += 1
        counts[i] = k / (time.perf_counter() - t0)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="training threads (default: cores)")
    args = ap.parse_args(argv)
    batches = _batches(0)
    model = Model(**W1)
    # interval larger than any run: the figure is training, not deciding
    pop = Population(members=args.members, search_space=SPACE, interval=10 ** 9, threads=args.threads, **W1)
    # Numba's BLAS is loaded by the first kernel call; a limit set before it misses it.
    model.partial_fit(*batches[0])
    pop.partial_fit(*batches[0])
    # The machine's own ceiling: the same number of models stepped by plain threads,
    # each thread its own share, no population around them.
    plain = [Model(**W1, seed=i) for i in range(args.members)]
    for m in plain:
        m.partial_fit(*batches[0])
    runs = {"single": [], "single_all_cores": [], "plain_threads": [], "population": []}

    def measure(which):
        if which == "single_all_cores":
            return _rate(model.partial_fit, batches, args.seconds)
        with threadpool_limits(limits=1, user_api="blas"):
            if which == "single":
                return _rate(model.partial_fit, batches, args.seconds)
            if which == "plain_threads":
                return _plain_threads(plain, batches, args.seconds, pop.threads)
            rate = _rate(pop.partial_fit, batches, args.seconds) * args.members
            pop.sync()
            return rate

    try:
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for which in order:
                runs[which].append(measure(which))
    finally:
        pop.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    labels = {"single": "one W1 model, 1 BLAS thread", "single_all_cores": "one W1 model, BLAS on every core",
              "plain_threads": f"{args.members} W1 models, {pop.threads} plain threads",
              "population": f"{args.members} W1 members, summed"}
    print(f"{'steps/s':44s}{'median':>10s}  rounds")
    for k, v in runs.items():
        print(f"{labels[k]:44s}{med[k]:10.1f}  " + " ".join(f"{x:.0f}" for x in v))
    print(f"{'population / one model (1 BLAS thread)':44s}{med['population'] / med['single']:10.2f}"
          f"  (the daemon's trainer: blas_threads = 1; ideal {pop.threads:.1f})")
    print(f"{'population / one model (BLAS on every core)':44s}{med['population'] / med['single_all_cores']:10.2f}")
    print(f"{'plain threads / one model (the ceiling here)':44s}{med['plain_threads'] / med['single']:10.2f}")
    print(f"{'population / plain threads':44s}{med['population'] / med['plain_threads']:10.2f}")
    return med


if __name__ == "__main__":
    main()
