"""How a training step's cost grows with batch size and layer width, for the table
(W1 at batch 32, 128, 512, with achieved GFLOP/s) and the plot in docs/performance.md.

Each figure is the median over interleaved rounds of the best block in the round, so
the configurations share the machine's slow and fast spells alike.
"""
from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from learnd.engine import Model

W1_SPEC = dict(hidden=(256, 128), task="multiclass", n_outputs=10, input_dim=784,
               batch_norm=True, keep_prob=0.8, optimizer="adam", l2=1e-4)


def gemm_flops(sizes, m):
    """FLOPs of a training step's GEMMs: 3 forward-sized products per layer (Z, dW,
    dA), less dA for the first layer."""
    total = 0
    for l in range(1, len(sizes)):
        total += 2 * m * sizes[l] * sizes[l - 1] * (3 if l > 1 else 2)
    return total


class Case:
    def __init__(self, spec, m, threads, rng, n_batches=8):
        self.model = Model(**spec)
        self.m = m
        self.threads = threads
        self.sizes = self.model.spec.layer_sizes
        self.X = rng.standard_normal((n_batches, m, spec["input_dim"]), dtype=np.float32) * 2 + 0.5
        self.y = rng.integers(0, spec["n_outputs"], (n_batches, m))
        self.i = 0
        self.times = []
        for _ in range(3):
            self.step()

    def step(self):
        k = self.i % len(self.X)
        self.model.partial_fit(self.X[k], self.y[k])
        self.i += 1

    def block(self, seconds):
        with threadpool_limits(self.threads, user_api="blas"):
            n, t0 = 0, time.perf_counter()
            best = float("inf")
            while time.perf_counter() - t0 < seconds:
                s = time.perf_counter()
                self.step()
                best = min(best, time.perf_counter() - s)
                n += 1
        return best

    def summary(self):
        s = float(np.median(self.times))
        return {"batch": self.m, "sizes": list(self.sizes), "threads": self.threads,
                "step_us": s * 1e6, "samples_per_s": self.m / s,
                "gflops": gemm_flops(self.sizes, self.m) / s / 1e9, "rounds": len(self.times)}


def measure(cases, rounds, block_s):
    for r in range(rounds):
        for c in cases[r % len(cases):] + cases[:r % len(cases)]:
            c.times.append(c.block(block_s))
    return [c.summary() for c in cases]


def w1_batches(rounds=5, block_s=0.2, seed=0, batches=(32, 128, 512), threads=(1, 2)):
    rng = np.random.default_rng(seed)
    cases = [Case(W1_SPEC, m, t, rng) for m in batches for t in threads]
    return measure(cases, rounds, block_s)


def growth(rounds=3, block_s=0.1, seed=0, batches=(8, 16, 32, 64, 128, 256, 512, 1024),
           widths=(32, 64, 128, 256, 512, 1024), threads=1):
    """Step cost of W1 across batch sizes, and of one hidden layer of each width
    (784-width-10, batch 128)."""
    rng = np.random.default_rng(seed)
    by_batch = [Case(W1_SPEC, m, threads, rng) for m in batches]
    by_width = [Case({**W1_SPEC, "hidden": (w,)}, 128, threads, rng) for w in widths]
    return {"by_batch": measure(by_batch, rounds, block_s), "by_width": measure(by_width, rounds, block_s)}
