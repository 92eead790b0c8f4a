"""Choose learnd's defaults by measurement: benchmarks/learning.py over a grid.

Runs scikit-learn once (it does not depend on learnd's settings), then learnd at every
combination of the given settings, and prints one row per candidate: mean prequential
and held-out accuracy per data set, and the margin over scikit-learn (the smallest
learnd-minus-sklearn difference over all data sets and both figures; >= 0 means at
least as good everywhere).

    python -m benchmarks.learning_sweep --grid lr=1e-3,3e-3,1e-2 batch_norm=True,False
    python -m benchmarks.learning_sweep --grid init=he,xavier,glorot --fix lr=3e-3
    python -m benchmarks.learning_sweep --grid lr=1e-3,3e-3 --hidden 256 128 --datasets digits

Values are Python literals or bare words.  --fix applies to every candidate.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

from . import learning as L  # sets BLAS threads before NumPy loads


def _parse_values(text):
    return [L._parse_set([f"v={v}"])["v"] for v in text.split(",")]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.learning_sweep",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2,...")
    ap.add_argument("--fix", nargs="+", default=[], metavar="KEY=VALUE")
    ap.add_argument("--datasets", nargs="+", choices=list(L.DATASETS), default=list(L.DATASETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(L.SEEDS))
    ap.add_argument("--hidden", type=int, nargs="+", default=list(L.HIDDEN))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)

    hidden = tuple(args.hidden)
    fixed = L._parse_set(args.fix)
    keys, values = [], []
    for item in args.grid:
        k, v = item.split("=", 1)
        keys.append(k)
        values.append(_parse_values(v))
    candidates = [dict(fixed, **dict(zip(keys, combo))) for combo in itertools.product(*values)]
    L.check_overrides(dict(fixed, **dict.fromkeys(keys)))

    ref = None
    if not args.no_sklearn:
        ref, _ = L.run(args.datasets, args.seeds, hidden, {}, sklearn=True, jobs=args.jobs)
        ref = {d: ref[d]["sklearn"] for d in args.datasets}

    cols = "".join(f" {d[:13]:>13}" for d in args.datasets)
    head = f"{'candidate':<44}{cols}" + (f" {'margin':>7}" if not args.no_sklearn else "")
    print(f"hidden={hidden}; each cell: prequential/held-out, mean over seeds {args.seeds}")
    print(head)
    print("-" * len(head))
    if ref:
        cells = "".join(f"   {ref[d]['prequential']['mean']:.3f}/{ref[d]['heldout']['mean']:.3f}"
                        for d in args.datasets)
        print(f"{'scikit-learn MLPClassifier':<44}{cells}")
    rows = []
    for cand in candidates:
        t0 = time.perf_counter()
        try:
            table, _ = L.run(args.datasets, args.seeds, hidden, cand, sklearn=False, jobs=args.jobs)
        except Exception as exc:  # an invalid combination (e.g. a setting out of range)
            print(f"{_name(cand):<44} error: {exc}")
            continue
        margin = None
        if ref:
            margin = min(table[d]["learnd"][f]["mean"] - ref[d][f]["mean"]
                         for d in args.datasets for f in ("prequential", "heldout"))
        cells = "".join(f"   {table[d]['learnd']['prequential']['mean']:.3f}/"
                        f"{table[d]['learnd']['heldout']['mean']:.3f}" for d in args.datasets)
        mtxt = f" {margin:>+7.3f}" if margin is not None else ""
        print(f"{_name(cand):<44}{cells}{mtxt}", flush=True)
        rows.append({"settings": cand, "margin": margin, "seconds": time.perf_counter() - t0,
                     "table": {d: table[d]["learnd"] for d in args.datasets}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hidden": list(hidden), "seeds": args.seeds, "sklearn": ref,
                       "candidates": rows}, f, indent=2, default=repr)
    return 0


def _name(cand):
    return " ".join(f"{k}={v}" for k, v in cand.items()) or "(defaults)"


if __name__ == "__main__":
    sys.exit(main())
