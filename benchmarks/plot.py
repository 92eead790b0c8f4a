"""The plot in docs/performance.md: training-step cost against batch size (W1) and
against hidden-layer width (784-width-10, batch 128), 1 BLAS thread.

    python -m benchmarks.plot [--out docs/performance.png] [--json benchmarks/results/growth.json]

Needs matplotlib (the `report` extra).  About 40 s.
"""
from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import sweep  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/performance.png")
    ap.add_argument("--json", default="benchmarks/results/growth.json")
    args = ap.parse_args(argv)
    data = sweep.growth()
    with open(args.json, "w") as f:
        json.dump(data, f, indent=1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [r["batch"] for r in data["by_batch"]]
    a.loglog(xs, [r["step_us"] for r in data["by_batch"]], "o-", label="µs per step")
    a.loglog(xs, [r["step_us"] / r["batch"] for r in data["by_batch"]], "s-", label="µs per sample")
    a.set_xscale("log", base=2)
    a.set_xlabel("batch size (rows)")
    a.set_title("W1 784-256-128-10 training step, 1 BLAS thread")
    a.grid(True, which="both", alpha=0.3)
    a.legend()
    a2 = a.twinx()
    a2.semilogx(xs, [r["gflops"] for r in data["by_batch"]], "^--", color="gray", label="GEMM GFLOP/s")
    a2.set_ylabel("achieved GEMM GFLOP/s")
    a2.legend(loc="lower right")
    ws = [r["sizes"][1] for r in data["by_width"]]
    b.loglog(ws, [r["step_us"] for r in data["by_width"]], "o-", label="µs per step")
    b.set_xscale("log", base=2)
    b.set_xlabel("hidden width (784-width-10, batch 128)")
    b.set_title("one hidden layer of growing width")
    b.grid(True, which="both", alpha=0.3)
    b2 = b.twinx()
    b2.semilogx(ws, [r["gflops"] for r in data["by_width"]], "^--", color="gray")
    b2.set_ylabel("achieved GEMM GFLOP/s")
    b.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
