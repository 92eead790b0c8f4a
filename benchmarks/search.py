"""The population against the best single configuration chosen in hindsight, learnd's
defaults and the peers, in one table: one pass, prequential accuracy.

    python -m benchmarks.search [--streams NAME ...] [--seeds 0 1 2] [--jobs 2]
                                [--no-peers] [--json PATH]

Protocol (the same as benchmarks.peers, embedded): each stream once, in order, in
batches of 64; every batch is predicted, then learned; the first batch is learned but
not scored (no learner can predict before it).  Prequential accuracy is the share of
right predictions; mean (± sample std) over seeds.

learnd is run as the daemon runs it on its defaults (regression targets standardized,
`normalize_targets`): each new batch is followed by the
replay steps it earns (engine.Replay: ratio 16 over 4,096 rows, recency 256; the
daemon takes them while no new data waits, which at a few thousand rows per second is
always).

- defaults: one Model on the engine's defaults (the task and its outputs given).
- population: learnd.Population of 8 members on the default search space (member 0 on
  the defaults), each with the same replay, deciding every 4 batches once members have
  scored 256 rows (the daemon decides after its evaluations; these streams are short).
- grid: one Model per configuration of GRID, each with the same replay; "best in
  hindsight" is the configuration with the highest mean prequential accuracy over the
  seeds, chosen after seeing them all (no real learner can choose so).
- peers (``pip install '.[bench]'``): River ARFClassifier, HoeffdingAdaptiveTree,
  scaled logistic regression; Vowpal Wabbit linear and --nn 32; scikit-learn's MLP
  (64, 64) - benchmarks.peers runs them.

Streams: digits, breast_cancer, sea_drift (first 20,000 rows), sudden_drift (made in
benchmarks.peers: a labelling hyperplane replaced twice), the shipped regression set
diabetes, and `price`, made here, learnt twice: with standardized targets (the daemon's
default for regression) and as `price_unscaled` with targets as they are, on which the
defaults' learning rate is far too small (see make_price).  The figure is accuracy for classes and R^2
(1 - SSE/SST of the predictions) for regression; the peers for regression are River's
ARFRegressor, HoeffdingAdaptiveTreeRegressor and scaled linear regression, Vowpal
Wabbit's squared loss (linear and --nn 32) and scikit-learn's MLPRegressor((64, 64)).
`--streams teacher_large gradual_drift` runs the other two streams benchmarks.peers
makes (left out of the default run for time).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from benchmarks import peers  # noqa: E402
from benchmarks.harness import run_jobs  # noqa: E402

STREAMS = ("digits", "breast_cancer", "diabetes", "sea_drift", "sudden_drift", "price", "price_unscaled")
# Also runnable by name (--streams), left out of the default run for time: the other
# streams benchmarks.peers makes.
MORE_STREAMS = tuple(s for s in peers.MADE if s not in STREAMS)
REGRESSION = ("diabetes", "price", "price_unscaled")
# Model settings a stream's learnd runs take besides the defaults: `price_unscaled` is
# `price` learnt as the daemon did before it standardized regression targets.
STREAM_SETTINGS = {"price_unscaled": {"normalize_targets": False}}
SEEDS = (0, 1, 2)
MEMBERS = 8
INTERVAL, MIN_ROWS = 4, 256
REPLAY = dict(rows=4096, ratio=16, recency=256.0)
GRID = {"lr": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "hidden": ((64,), (256, 128))}


def make_price():
    """(X, y) of `price`: 20,000 rows of 8 features and a price around 400 (spread about
    100) set by a random two-layer network, plus noise of 10.  Learnt with targets as
    they are (`price_unscaled`, normalize_targets = false), a network's output must
    travel hundreds of units: at the defaults' learning rate (Adam, 5e-3: about that far
    per step) that takes tens of thousands of steps - the stream on which the default
    learning rate is far too small.  With standardized targets (the daemon's default)
    it is an ordinary regression."""
    rng = np.random.default_rng(505)
    n, d, h = 20_000, 8, 16
    X = rng.standard_normal((n, d)).astype(np.float32)
    W1 = rng.standard_normal((d, h)) / np.sqrt(d)
    w2 = rng.standard_normal(h) / np.sqrt(h)
    y = 400.0 + 100.0 * np.tanh(X @ W1) @ w2 / np.std(np.tanh(X @ W1) @ w2) + rng.normal(0, 10, n)
    return X, y


def load(name):
    """(X, y, k) of a stream: k classes, or 0 for a regression stream (y float)."""
    if name in ("price", "price_unscaled"):
        X, y = make_price()
        return np.ascontiguousarray(X, dtype=np.float32), y.astype(np.float64), 0
    if name == "diabetes":
        from learnd.engine.datasets import load as load_shipped
        X, y, _ = load_shipped("diabetes")
        return np.ascontiguousarray(X, dtype=np.float32), np.asarray(y, dtype=np.float64), 0
    return peers.load_stream(name)


def _model_settings(k, hidden=None, lr=None, stream=None):
    if k == 0:
        # The daemon standardizes regression targets unless told otherwise.
        out = {"task": "regression", "n_outputs": 1, "normalize_targets": True}
    else:
        out = {"task": "multiclass" if k > 2 else "binary", "n_outputs": k if k > 2 else 1}
    out.update(STREAM_SETTINGS.get(stream, {}))
    if hidden is not None:
        out["hidden"] = hidden
    if lr is not None:
        out["lr"] = lr
    return out


def run_learnd(X, y, k, seed, config=None, population=False, stream=None):
    """Prequential accuracy of one pass: config None = the defaults, else a dict of Model
    settings; population: a Population of MEMBERS instead of one model."""
    from learnd.engine import Model, Population, Replay

    settings = _model_settings(k, stream=stream, **(config or {}))
    if population:
        learner = Population(members=MEMBERS, seed=seed, interval=INTERVAL, min_rows=MIN_ROWS,
                             replay_ratio=REPLAY["ratio"], replay_rows=REPLAY["rows"],
                             replay_recency=REPLAY["recency"], threads=1, **settings)
        learn = learner.partial_fit
    else:
        learner = Model(seed=seed, **settings)
        learn = Replay(learner, seed=seed, **REPLAY).learn
    score = Prequential(k)
    for i, (a, b) in enumerate(peers._batches(len(y))):
        if i > 0:
            score.add(np.asarray(learner.predict(X[a:b])).reshape(-1), y[a:b])
        learn(X[a:b], y[a:b])
    out = {"accuracy": score.value()}
    if population:
        board = learner.leaderboard()
        out["champion"] = next(r["draw"] for r in board if r["champion"])
        out["decisions"] = len(learner.decisions)
        learner.close()
    return out


class Prequential:
    """The figure of a stream's predictions: accuracy for classes; for regression
    (k == 0) R^2 = 1 - SSE / SST over the scored rows (higher is better like accuracy;
    0 is predicting their mean, below 0 worse than that)."""

    def __init__(self, k):
        self.k = k
        self.pred, self.true = [], []

    def add(self, pred, true):
        self.pred.append(np.asarray(pred, dtype=np.float64).reshape(-1))
        self.true.append(np.asarray(true, dtype=np.float64).reshape(-1))

    def value(self):
        p, t = np.concatenate(self.pred), np.concatenate(self.true)
        if self.k:
            return float(np.mean(p == t))
        if not np.all(np.isfinite(p)):
            return float("-inf")
        return float(1.0 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2))


# -- regression peers (benchmarks.peers has the classifiers) ---------------------------
def run_regression_peer(name, X, y, seed):
    """Prequential R^2 of a peer on a regression stream, learning row by row (River,
    Vowpal Wabbit) or by batch (scikit-learn's MLPRegressor on running z-scores)."""
    score = Prequential(0)
    batches = peers._batches(len(y))
    if name.startswith("river_"):
        from river import forest, linear_model, preprocessing, tree
        model = {"river_arf": lambda: forest.ARFRegressor(seed=seed),
                 "river_hat": lambda: tree.HoeffdingAdaptiveTreeRegressor(seed=seed),
                 "river_logreg": lambda: preprocessing.StandardScaler() | linear_model.LinearRegression()}[name]()
        names = [str(j) for j in range(X.shape[1])]
        rows = [dict(zip(names, map(float, x))) for x in X]
        for i, (a, b) in enumerate(batches):
            if i > 0:
                score.add([model.predict_one(rows[j]) or 0.0 for j in range(a, b)], y[a:b])
            for j in range(a, b):
                model.learn_one(rows[j], float(y[j]))
        return score.value()
    if name.startswith("vw_"):
        from vowpalwabbit import Workspace
        vw = Workspace(f"--quiet --random_seed {seed}" + (" --nn 32" if name == "vw_nn" else ""))
        feats = [" ".join(f"f{j}:{v:.6g}" for j, v in enumerate(x)) for x in X]
        for i, (a, b) in enumerate(batches):
            if i > 0:
                score.add([vw.predict(f"| {feats[j]}") for j in range(a, b)], y[a:b])
            for j in range(a, b):
                vw.learn(f"{y[j]:.6g} | {feats[j]}")
        vw.finish()
        return score.value()
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    from benchmarks.learning import RunningScaler
    reg, scaler = MLPRegressor(hidden_layer_sizes=(64, 64), random_state=seed), RunningScaler(X.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, (a, b) in enumerate(batches):
            if i > 0:
                score.add(reg.predict(scaler.transform(X[a:b])), y[a:b])
            scaler.update(X[a:b])
            reg.partial_fit(scaler.transform(X[a:b]), y[a:b])
    return score.value()


def _configs():
    keys = list(GRID)
    return [dict(zip(keys, values)) for values in itertools.product(*(GRID[k] for k in keys))]


def _label(config):
    return "grid " + " ".join(f"{k}={v}" for k, v in config.items())


def _job(job):
    learner, stream, seed, config = job
    X, y, k = load(stream)
    t0 = time.perf_counter()
    if learner == "defaults":
        out = run_learnd(X, y, k, seed, stream=stream)
    elif learner == "population":
        out = run_learnd(X, y, k, seed, population=True, stream=stream)
    elif learner == "grid":
        out = run_learnd(X, y, k, seed, config=config, stream=stream)
        learner = _label(config)
    elif k == 0:
        out = {"accuracy": run_regression_peer(learner, X, y, seed)}
    else:
        out = {"accuracy": peers.run_peer(learner, X, y, k, seed)}
    return {"learner": learner, "stream": stream, "seed": seed, "seconds": time.perf_counter() - t0, **out}


def run(streams, seeds, with_peers=True, jobs=1):
    todo = [(lr, s, seed, None) for s in streams for lr in ("defaults", "population") for seed in seeds]
    todo += [("grid", s, seed, c) for s in streams for c in _configs() for seed in seeds]
    if with_peers:
        # A stream that differs only in learnd's settings gives the peers the same rows.
        todo += [(p, s, seed, None) for s in streams if s not in STREAM_SETTINGS
                 for p in peers.PEERS for seed in seeds]
    # The longest first, so the pool's last minutes are not one process alone.
    todo.sort(key=lambda j: j[0] not in ("population", "river_arf"))
    results = run_jobs(_job, todo, jobs)
    table = {}
    for r in results:
        table.setdefault(r["stream"], {}).setdefault(r["learner"], []).append(r)
    return table, results


def summarize(table):
    """Per stream: mean and std of each learner, the best grid configuration in
    hindsight, the best peer, and the population's margins."""
    out = {}
    for stream, by in table.items():
        means = {lr: float(np.mean([r["accuracy"] for r in rs])) for lr, rs in by.items()}
        stds = {lr: float(np.std([r["accuracy"] for r in rs], ddof=1)) if len(rs) > 1 else 0.0
                for lr, rs in by.items()}
        grid = {lr: m for lr, m in means.items() if lr.startswith("grid ")}
        best_grid = max(grid, key=grid.get)
        peer = {lr: m for lr, m in means.items() if lr in peers.PEERS}
        best_peer = max(peer, key=peer.get) if peer else None
        pop = means["population"]
        out[stream] = {
            "means": means, "stds": stds, "best_grid": best_grid, "best_peer": best_peer,
            "population_minus_best_grid": pop - grid[best_grid],
            "population_minus_defaults": pop - means["defaults"],
            "population_minus_best_peer": None if best_peer is None else pop - peer[best_peer],
            "champions": [r.get("champion") for r in by["population"]],
            "decisions": [r.get("decisions") for r in by["population"]],
        }
    return out


def format_table(summary):
    lines = []
    for stream, s in summary.items():
        m, sd = s["means"], s["stds"]
        lines.append(f"{stream}")
        order = (["defaults", "population", s["best_grid"]]
                 + sorted((lr for lr in m if lr in peers.PEERS), key=lambda lr: -m[lr]))
        for lr in order:
            tag = "  (best in hindsight)" if lr == s["best_grid"] else ""
            lines.append(f"  {lr:<36} {m[lr]:.4f} ± {sd[lr]:.4f}{tag}")
        worst_grid = min((lr for lr in m if lr.startswith("grid ")), key=m.get)
        lines.append(f"  {'grid, worst configuration':<36} {m[worst_grid]:.4f}  ({worst_grid[5:]})")
        lines.append(f"  population - best in hindsight {s['population_minus_best_grid']:+.4f}; "
                     f"- defaults {s['population_minus_defaults']:+.4f}"
                     + ("" if s["population_minus_best_peer"] is None
                        else f"; - best peer ({s['best_peer']}) {s['population_minus_best_peer']:+.4f}"))
        lines.append(f"  population decisions per run {s['decisions']}; champions' draws: "
                     + "; ".join(", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in (c or {}).items() if k in ("lr", "width", "depth", "replay_recency"))
                                 for c in s["champions"]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS + MORE_STREAMS)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--no-peers", action="store_true", help="learnd only")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes (default 1)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    table, results = run(args.streams, args.seeds, not args.no_peers, args.jobs)
    summary = summarize(table)
    print(format_table(summary))
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "search", "seeds": args.seeds, "grid": {k: list(v) for k, v in GRID.items()},
                       "summary": summary, "runs": results}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
