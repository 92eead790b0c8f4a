"""Learning quality: learnd's engine against scikit-learn's MLPClassifier, online.

Each data set is streamed once, in file order, in mini-batches of 64, test-then-train:
every batch is predicted before the model trains on it, and the prequential accuracy
is the share of those predictions that were right.  Rows [0, heldout.start) are
streamed; after that single pass the model is scored on the held-out rows
[heldout.start, n), which it never trained on.

- learnd: ``Model(hidden=(64, 64), task=..., n_outputs=..., seed=s)`` with every other
  setting at its default, fed RAW inputs (its own running normalizer scales them).
- scikit-learn: ``MLPClassifier(hidden_layer_sizes=(64, 64), random_state=s)`` (all
  else default: adam, lr 1e-3, alpha 1e-4, Glorot init, no batch norm) trained with
  ``partial_fit``, one optimizer step per call, on inputs standardized by a running
  (all-time, Chan/Welford) mean and biased variance that is updated with each batch
  before the batch is trained on - the same rule as learnd's normalizer: prediction
  uses the statistics of the rows trained so far; a feature whose standard deviation
  is below 1e-8 is only centred.

Neither model can predict before its first training batch (scikit-learn has no
classes or weights yet; learnd has no input size), so the first batch of each stream
is trained on but not scored: prequential accuracy covers rows [64, heldout.start).

Seeds 0-4 by default; the table gives mean and sample standard deviation (ddof=1)
over seeds.

    python -m benchmarks.learning                       # the comparison at the defaults
    python -m benchmarks.learning --json out.json
    python -m benchmarks.learning --set lr=3e-3 batch_norm=False --no-sklearn
    python -m benchmarks.learning --datasets digits --hidden 256 128
    python -m benchmarks.learning --replay-ratio 4 --replay-rows 4096 --no-sklearn
    python -m benchmarks.learning --population 8 --strategy random --no-sklearn

``--set key=value`` overrides Model settings (values are Python literals: 3e-3, False,
'xavier', (0.9, 0.8)); it exists to choose the defaults by measurement.
``--hidden`` changes the hidden sizes of both learners.  ``--jobs N`` runs N
(data set, seed) runs in parallel processes (BLAS kept to one thread each).

scikit-learn is a benchmark-only extra (``pip install scikit-learn``); the package
never imports it.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
import warnings

# One BLAS thread per process: numbers are per-core, and --jobs adds processes.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from benchmarks.harness import run_jobs  # noqa: E402

DATASETS = {
    # name: (task, n_outputs)
    "digits": ("multiclass", 10),
    "breast_cancer": ("binary", 1),
    "sea_drift": ("binary", 1),
}
BATCH = 64
DRIFT_ROWS = 2000          # rows after a change of concept that the drift figure covers
HIDDEN = (64, 64)
SEEDS = (0, 1, 2, 3, 4)
MIN_STD = 1e-8


class RunningScaler:
    """All-time running mean and biased variance (Chan et al.'s merge), float64."""

    def __init__(self, n):
        self.count = 0
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)

    def update(self, X):
        X = np.asarray(X, dtype=np.float64)
        m = X.shape[0]
        bmean = X.mean(axis=0)
        bm2 = ((X - bmean) ** 2).sum(axis=0)
        total = self.count + m
        delta = bmean - self.mean
        self.mean = self.mean + delta * (m / total)
        self.m2 = self.m2 + bm2 + delta ** 2 * (self.count * m / total)
        self.count = total

    def transform(self, X):
        if self.count == 0:
            return np.asarray(X, dtype=np.float64)
        std = np.sqrt(self.m2 / self.count)
        scale = np.where(std < MIN_STD, 1.0, std)
        return (np.asarray(X, dtype=np.float64) - self.mean) / scale


POPULATION_INTERVAL = 4      # batches between a population's decisions (256 rows)
POPULATION_MIN_ROWS = 256    # rows a member scores before it is judged: the small sets are ~500 rows


def _batches(n):
    """Batch boundaries over n rows; a trailing single row joins the batch before it
    (batch norm cannot train on one row; no shipped set has such a remainder)."""
    edges = list(range(0, n, BATCH)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] == 1:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:]))


def _correct(pred, y):
    return int(np.sum(np.asarray(pred).reshape(-1) == y))


def run_learnd(X, y, start, task, n_outputs, seed, hidden, overrides, replay=None, concept=None,
               population=None):
    """One pass; replay (ratio, rows) takes `ratio` learnd.Replay steps after each batch.
    With `concept` (the concept id of each row) also the accuracy over the DRIFT_ROWS
    rows after each change of concept.  population (members, strategy): a
    learnd.Population on the default search space instead of one Model (member 0 on
    the same settings as the Model), deciding every POPULATION_INTERVAL batches."""
    from learnd.engine import Model, Population, Replay

    if population is not None:
        members, strategy = population
        ratio, rows, recency = replay[:3] if replay is not None else (0, 0, None)
        model = Population(members=members, strategy=strategy, seed=seed, interval=POPULATION_INTERVAL,
                           min_rows=POPULATION_MIN_ROWS, replay_ratio=ratio, replay_rows=rows if ratio else 0,
                           replay_recency=recency, hidden=hidden, task=task, n_outputs=n_outputs, **overrides)
        learn = model.partial_fit
    else:
        model = Model(hidden=hidden, task=task, n_outputs=n_outputs, seed=seed, **overrides)
        learn = model.partial_fit
    if population is None and replay is not None and replay[0] > 0:
        learn = Replay(model, rows=replay[1], ratio=replay[0], seed=seed, recency=replay[2],
                       forget_on_drift=replay[3]).learn
    hits = np.zeros(start, dtype=bool)
    scored = np.zeros(start, dtype=bool)
    t0 = time.perf_counter()
    for i, (a, b) in enumerate(_batches(start)):
        if i > 0:
            hits[a:b] = np.asarray(model.predict(X[a:b])).reshape(-1) == y[a:b]
            scored[a:b] = True
        learn(X[a:b], y[a:b])
    seconds = time.perf_counter() - t0
    held = _correct(model.predict(X[start:]), y[start:]) / (len(y) - start)
    nonfinite = (sum(mb.model.nonfinite_steps for mb in model.members) if population is not None
                 else model.nonfinite_steps)
    out = {"prequential": hits[scored].mean(), "heldout": held, "seconds": seconds,
           "nonfinite_steps": nonfinite}
    if population is not None:
        out["champion"] = model.leaderboard()[0]["draw"] if model.leaderboard() else None
        out["decisions"] = len(model.decisions)
        model.close()
    if concept is not None:
        out["after_drift"] = [float(hits[c:c + DRIFT_ROWS].mean()) for c in _changes(concept[:start])]
    return out


def _changes(concept):
    """The first row of each concept after the first.  (During a transition rows of the
    old and the new concept mix, so the first row of the new one marks the change.)"""
    firsts = sorted(int(np.argmax(concept == c)) for c in np.unique(concept))
    return firsts[1:]


def run_sklearn(X, y, start, task, n_outputs, seed, hidden):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    classes = np.arange(n_outputs if task == "multiclass" else 2)
    clf = MLPClassifier(hidden_layer_sizes=hidden, random_state=seed)
    scaler = RunningScaler(X.shape[1])
    right = scored = 0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, (a, b) in enumerate(_batches(start)):
            if i > 0:
                right += _correct(clf.predict(scaler.transform(X[a:b])), y[a:b])
                scored += b - a
            scaler.update(X[a:b])
            if i == 0:
                clf.partial_fit(scaler.transform(X[a:b]), y[a:b], classes=classes)
            else:
                clf.partial_fit(scaler.transform(X[a:b]), y[a:b])
    seconds = time.perf_counter() - t0
    held = _correct(clf.predict(scaler.transform(X[start:])), y[start:]) / (len(y) - start)
    return {"prequential": right / scored, "heldout": held, "seconds": seconds}


def _one(job):
    """One (learner, data set, seed) run; a top-level function so a pool can call it."""
    learner, name, seed, hidden, overrides, replay, population = job
    from learnd.engine.datasets import load

    X, y, meta = load(name)
    start = meta["heldout"]["start"]
    task, k = DATASETS[name]
    if learner in ("learnd", "population"):
        concept = _concept(name)
        out = run_learnd(X, y, start, task, k, seed, hidden, overrides, replay, concept,
                         population if learner == "population" else None)
    else:
        out = run_sklearn(X, y, start, task, k, seed, hidden)
    return {"learner": learner, "dataset": name, "seed": seed, **out}


def _concept(name):
    """The concept column of a drifting set (sea_drift), else None."""
    import os as _os

    from learnd.engine import datasets
    path = _os.path.join(_os.path.dirname(datasets.__file__), f"{name}.npz")
    with np.load(path, allow_pickle=False) as f:
        return f["concept"].copy() if "concept" in f.files else None


def _summary(runs, key):
    v = np.array([r[key] for r in runs], dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "values": [float(x) for x in v]}


def run(datasets, seeds, hidden, overrides, sklearn=True, jobs=1, replay=None, population=None):
    learners = ["learnd"] + (["population"] if population else []) + (["sklearn"] if sklearn else [])
    todo = [(lr, d, s, hidden, overrides, replay, population) for d in datasets for lr in learners for s in seeds]
    # Warm Numba's cache (and compile once) before timing anything.
    _warm(hidden, overrides)
    results = run_jobs(_one, todo, jobs)
    table = {}
    for d in datasets:
        for lr in learners:
            rs = [r for r in results if r["dataset"] == d and r["learner"] == lr]
            table.setdefault(d, {})[lr] = {
                "prequential": _summary(rs, "prequential"),
                "heldout": _summary(rs, "heldout"),
                "seconds_per_run": float(np.mean([r["seconds"] for r in rs])),
            }
            if lr == "population":
                table[d][lr]["decisions_per_run"] = float(np.mean([r["decisions"] for r in rs]))
            if lr in ("learnd", "population"):
                table[d][lr]["nonfinite_steps"] = int(sum(r["nonfinite_steps"] for r in rs))
                if "after_drift" in rs[0]:
                    table[d][lr]["after_drift"] = [float(np.mean(v)) for v in
                                                   zip(*(r["after_drift"] for r in rs))]
    return table, results


def _warm(hidden, overrides):
    from learnd.engine import Model
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 3)).astype(np.float32)
    for task, k, y in (("binary", 1, rng.integers(0, 2, 8)),
                       ("multiclass", 3, rng.integers(0, 3, 8))):
        m = Model(hidden=hidden, task=task, n_outputs=k, **overrides)
        m.partial_fit(X, y)
        m.predict(X)


def format_table(table, hidden, overrides, seeds, replay=None):
    lines = []
    settings = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "defaults"
    replayed = (f"replay ratio {replay[0]} over {replay[1]} rows"
                + (f", recency {replay[2]:g}" if replay[2] else ", uniform")
                + ("" if replay[3] else ", never cut on drift") if replay and replay[0] else "no replay")
    lines.append(f"hidden={hidden}, learnd settings: {settings}, {replayed}; batch {BATCH}, "
                 f"one pass, seeds {list(seeds)}; mean ± std over seeds")
    head = f"{'data set':<14} {'learner':<10} {'prequential':>17} {'held-out':>17} {'s/run':>7}"
    lines.append(head)
    lines.append("-" * len(head))
    for d, by in table.items():
        for lr, r in by.items():
            p, h = r["prequential"], r["heldout"]
            lines.append(f"{d:<14} {lr:<10} {p['mean']:>9.4f} ± {p['std']:.4f} "
                         f"{h['mean']:>9.4f} ± {h['std']:.4f} {r['seconds_per_run']:>7.2f}")
        if "sklearn" in by:
            dp = by["learnd"]["prequential"]["mean"] - by["sklearn"]["prequential"]["mean"]
            dh = by["learnd"]["heldout"]["mean"] - by["sklearn"]["heldout"]["mean"]
            lines.append(f"{'':<14} {'diff':<10} {dp:>+9.4f}{'':8} {dh:>+9.4f}")
        if "after_drift" in by["learnd"]:
            figures = ", ".join(f"{a:.4f}" for a in by["learnd"]["after_drift"])
            lines.append(f"{'':<14} learnd accuracy over the {DRIFT_ROWS} rows after each change: {figures}")
    return "\n".join(lines)


def _parse_set(items):
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v  # a bare word: xavier, momentum, ...
    return out


def check_overrides(overrides):
    """Reject --set keys that are not Model settings (or are fixed by the benchmark)."""
    import inspect

    from learnd.engine import Model
    allowed = set(inspect.signature(Model.__init__).parameters) - {
        "self", "hidden", "task", "n_outputs", "seed"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise SystemExit(f"--set: not a Model setting the benchmark lets you change: {bad}; "
                         f"choose from {', '.join(sorted(allowed))} (use --hidden for hidden)")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.learning",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN))
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override learnd Model settings (exploration)")
    ap.add_argument("--no-sklearn", action="store_true", help="run learnd only")
    ap.add_argument("--replay-ratio", type=int, default=0,
                    help="learnd.Replay steps after each batch (default 0: none)")
    ap.add_argument("--replay-rows", type=int, default=4096, help="rows the replay window keeps")
    ap.add_argument("--replay-recency", type=float, default=None,
                    help="mean age (rows) of the exponential weighting of replay draws (default: uniform)")
    ap.add_argument("--no-forget", action="store_true",
                    help="replay never cuts its window when the error rises (Replay forget_on_drift=False)")
    ap.add_argument("--population", type=int, default=0, metavar="N",
                    help="also run a learnd.Population of N members on the default search space")
    ap.add_argument("--strategy", default="random", choices=("random", "halving", "pbt"),
                    help="the population's strategy")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes (default 1)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    hidden = tuple(args.hidden)
    overrides = _parse_set(args.set)
    check_overrides(overrides)
    t0 = time.perf_counter()
    replay = (args.replay_ratio, args.replay_rows, args.replay_recency, not args.no_forget)
    population = (args.population, args.strategy) if args.population >= 2 else None
    table, results = run(args.datasets, args.seeds, hidden, overrides,
                         sklearn=not args.no_sklearn, jobs=args.jobs, replay=replay, population=population)
    wall = time.perf_counter() - t0
    print(format_table(table, hidden, overrides, args.seeds, replay))
    print(f"wall time {wall:.1f} s")
    if args.json:
        import platform
        import sklearn
        doc = {"benchmark": "learning", "batch": BATCH, "hidden": list(hidden),
               "seeds": list(args.seeds), "learnd_overrides": overrides,
               "replay": {"ratio": args.replay_ratio, "rows": args.replay_rows, "recency": args.replay_recency,
                          "forget_on_drift": not args.no_forget},
               "protocol": "one pass in file order, test-then-train on rows [0, heldout.start) "
                           "(first batch trained, not scored); held-out accuracy on rows "
                           "[heldout.start, n) after the pass",
               "table": table, "runs": results, "wall_seconds": wall,
               "versions": {"python": platform.python_version(), "numpy": np.__version__,
                            "sklearn": sklearn.__version__}}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=repr)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
