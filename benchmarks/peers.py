"""One pass against the learners a user would pick instead: the learnd daemon on its
defaults against River, Vowpal Wabbit and scikit-learn, prequential accuracy.

    python -m benchmarks.peers [--streams NAME ...] [--seeds 0 1 2 3 4] [--rate 2000]
                               [--no-daemon] [--peers NAME ...] [--json PATH]

Protocol.  Each stream is sent once, in file order, in batches of 64 rows, at `--rate`
rows per second (a realistic pace: a few thousand rows/s).  learnd: a fresh
`learnd serve` on its defaults (only `seed` set), fed from this process with a Producer
(split "train": every row is learned; the first batch's header gives the number of
classes) and asked for a prediction of every batch just
before that batch is sent.  The first batch is not scored, for any learner: no model
exists before it; learnd is sent the next batch once it serves the model of the first.  The peers see the same rows in the same order, learning as they do:
each batch is predicted, then learned row by row (River's learn_one, Vowpal Wabbit's
learn), or in one partial_fit (scikit-learn's MLP, on inputs z-scored with running
all-time statistics).  So every learner predicts a row knowing exactly the rows before
its batch.  Figures are means (and sample standard deviations) over seeds: the seed of
each learner's own randomness; the streams themselves are fixed.

Peers (benchmark-only: ``pip install '.[bench]'``; the package never imports them):
River ARFClassifier, HoeffdingAdaptiveTreeClassifier and StandardScaler | logistic
regression (one-vs-rest for more than two classes); Vowpal Wabbit linear (``--oaa K``)
and with a hidden layer (``--oaa K --nn 32``); scikit-learn MLPClassifier((64, 64)).

Streams: the shipped digits, breast_cancer and sea_drift (its first 20,000 rows), and
three made here with fixed seeds (`make_stream`): `teacher_large`, 40,000 rows of 200
features labelled by a random two-layer network (5 classes); `sudden_drift`, 20,000
rows of 10 features whose labelling hyperplane is replaced at rows 7,000 and 14,000;
`gradual_drift`, 20,000 rows whose hyperplane rotates steadily over the stream.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from benchmarks.harness import run_jobs  # noqa: E402

BATCH = 64
SEEDS = (0, 1, 2, 3, 4)
SHIPPED = {"digits": None, "breast_cancer": None, "sea_drift": 20_000}
MADE = ("teacher_large", "sudden_drift", "gradual_drift")
PEERS = ("river_arf", "river_hat", "river_logreg", "vw_linear", "vw_nn", "sklearn_mlp")


# -- streams ---------------------------------------------------------------------------
def make_stream(name):
    """(X float32 (n, d), y int (n,)) of a made stream; fixed seeds, so always the same."""
    if name == "teacher_large":
        rng = np.random.default_rng(101)
        n, d, k = 40_000, 200, 5
        X = rng.standard_normal((n, d)).astype(np.float32)
        W1 = rng.standard_normal((d, 32)) / np.sqrt(d)
        W2 = rng.standard_normal((32, k)) * 2.0
        logits = np.tanh(X @ W1) @ W2
        return X, logits.argmax(axis=1)
    if name in ("sudden_drift", "gradual_drift"):
        rng = np.random.default_rng(202 if name == "sudden_drift" else 303)
        n, d = 20_000, 10
        X = rng.uniform(-1, 1, (n, d)).astype(np.float32)
        if name == "sudden_drift":
            planes = rng.standard_normal((3, d))
            which = np.minimum(np.arange(n) // 7_000, 2)
            w = planes[which]
        else:
            a, b = rng.standard_normal(d), rng.standard_normal(d)
            t = (np.arange(n) / n)[:, None] * (np.pi / 2)   # a quarter turn from a to b
            w = np.cos(t) * a + np.sin(t) * b
        y = (np.einsum("ij,ij->i", X, w) > 0).astype(int)
        flip = rng.random(n) < 0.05                           # 5% label noise
        return X, np.where(flip, 1 - y, y)
    raise KeyError(name)


def load_stream(name):
    """(X, y, n_classes) of a stream, shipped or made."""
    if name in SHIPPED:
        from learnd.engine.datasets import load
        X, y, _ = load(name)
        limit = SHIPPED[name] or len(y)
        X, y = X[:limit], y[:limit]
    else:
        X, y = make_stream(name)
    y = np.asarray(y).astype(int)
    return np.ascontiguousarray(X, dtype=np.float32), y, int(y.max()) + 1


def _batches(n):
    return [(a, min(a + BATCH, n)) for a in range(0, n, BATCH) if min(a + BATCH, n) - a >= 2]


# -- learnd, the daemon ----------------------------------------------------------------
def run_daemon(X, y, k, seed, rate, env=None):
    from learnd.clients.client import LearndError, Predictor, Producer
    from learnd.clients.launch import start_daemon, stop_daemon

    hits = scored = 0
    with tempfile.TemporaryDirectory(prefix="learnd-peers-") as state:
        proc, ends, log = start_daemon(state, ["--set", f"seed={seed}"], env)
        try:
            with Producer(ends["ingest"], producer_id="peers", window=64, timeout=30) as prod, \
                    Predictor(ends["predict"], timeout=10) as pred:
                batches = _batches(len(y))
                a, b = batches[0]
                # The header names the classes (the first batch may not hold them all).
                prod.send(X[:b], y[:b], split="train", **({"n_outputs": k} if k > 2 else {}))
                _wait_for_model(pred, X[:2], LearndError)   # as the peers, trained on batch 0
                t0 = time.monotonic() - b / rate
                for a, b in batches[1:]:
                    pause = t0 + a / rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    p = np.asarray(pred.predict(X[a:b]).y).reshape(-1)
                    hits += int(np.sum(p == y[a:b]))
                    scored += b - a
                    prod.send(X[a:b], y[a:b], split="train")
        finally:
            stop_daemon(proc, log)
    return hits / scored


def _wait_for_model(pred, x, error, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return pred.predict(x)
        except error:            # not_ready until the first step is published
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


# -- peers -----------------------------------------------------------------------------
def _river_model(name, k, seed):
    from river import compose, forest, linear_model, multiclass, preprocessing, tree
    if name == "river_arf":
        return forest.ARFClassifier(seed=seed)
    if name == "river_hat":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    lr = linear_model.LogisticRegression()
    return compose.Pipeline(preprocessing.StandardScaler(),
                            multiclass.OneVsRestClassifier(lr) if k > 2 else lr)


def run_river(name, X, y, k, seed):
    model = _river_model(name, k, seed)
    hits = scored = 0
    names = [str(j) for j in range(X.shape[1])]
    rows = [dict(zip(names, map(float, x))) for x in X]
    for i, (a, b) in enumerate(_batches(len(y))):
        if i > 0:
            for j in range(a, b):
                p = model.predict_one(rows[j])
                hits += int(p is not None and int(p) == y[j])
            scored += b - a
        for j in range(a, b):
            model.learn_one(rows[j], int(y[j]))
    return hits / scored


def run_vw(name, X, y, k, seed):
    from vowpalwabbit import Workspace
    args = f"--oaa {k} --quiet --random_seed {seed}" + (" --nn 32" if name == "vw_nn" else "")
    vw = Workspace(args)
    feats = [" ".join(f"f{j}:{v:.6g}" for j, v in enumerate(x)) for x in X]
    hits = scored = 0
    for i, (a, b) in enumerate(_batches(len(y))):
        if i > 0:
            for j in range(a, b):
                hits += int(vw.predict(f"| {feats[j]}") - 1 == y[j])
            scored += b - a
        for j in range(a, b):
            vw.learn(f"{y[j] + 1} | {feats[j]}")
    vw.finish()
    return hits / scored


def run_sklearn(X, y, k, seed):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from benchmarks.learning import RunningScaler
    clf = MLPClassifier(hidden_layer_sizes=(64, 64), random_state=seed)
    scaler = RunningScaler(X.shape[1])
    hits = scored = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, (a, b) in enumerate(_batches(len(y))):
            if i > 0:
                hits += int(np.sum(clf.predict(scaler.transform(X[a:b])) == y[a:b]))
                scored += b - a
            scaler.update(X[a:b])
            clf.partial_fit(scaler.transform(X[a:b]), y[a:b], classes=np.arange(max(k, 2)))
    return hits / scored


def run_peer(name, X, y, k, seed):
    if name.startswith("river_"):
        return run_river(name, X, y, k, seed)
    if name.startswith("vw_"):
        return run_vw(name, X, y, k, seed)
    return run_sklearn(X, y, k, seed)


def _peer_job(job):
    name, stream, seed = job
    X, y, k = load_stream(stream)
    t0 = time.perf_counter()
    return {"learner": name, "stream": stream, "seed": seed, "accuracy": run_peer(name, X, y, k, seed),
            "seconds": time.perf_counter() - t0}


# -- the table -----------------------------------------------------------------------------
def run(streams, seeds, peers, daemon=True, rate=2000.0, jobs=1, env=None):
    results = []
    if daemon:
        for stream in streams:
            X, y, k = load_stream(stream)
            for seed in seeds:
                results.append({"learner": "learnd", "stream": stream, "seed": seed,
                                "accuracy": run_daemon(X, y, k, seed, rate, env)})
    todo = [(p, s, seed) for s in streams for p in peers for seed in seeds]
    results += run_jobs(_peer_job, todo, jobs)
    table = {}
    for r in results:
        table.setdefault(r["stream"], {}).setdefault(r["learner"], []).append(r["accuracy"])
    return table, results


def format_table(table):
    lines = [f"{'stream':<15} {'learner':<13} {'accuracy':>17}"]
    for stream, by in table.items():
        best = max(((np.mean(v), lr) for lr, v in by.items() if lr != "learnd"), default=None)
        for lr, v in by.items():
            sd = np.std(v, ddof=1) if len(v) > 1 else 0.0
            lines.append(f"{stream:<15} {lr:<13} {np.mean(v):>9.4f} ± {sd:.4f}")
        if best is not None and "learnd" in by:
            lines.append(f"{'':<15} learnd - best peer ({best[1]}): {np.mean(by['learnd']) - best[0]:+.4f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", nargs="+", default=[*SHIPPED, *MADE], choices=[*SHIPPED, *MADE])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    ap.add_argument("--no-daemon", action="store_true", help="peers only")
    ap.add_argument("--rate", type=float, default=2000.0, help="rows per second sent to the daemon")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes for the peers")
    ap.add_argument("--daemon-env", nargs="*", default=[], metavar="LEARND_KEY=VALUE",
                    help="settings for the daemon (to choose defaults by measurement)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    env = dict(item.split("=", 1) for item in args.daemon_env) or None
    table, results = run(args.streams, args.seeds, args.peers, not args.no_daemon, args.rate, args.jobs, env)
    print(format_table(table))
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        versions = {}
        for mod in ("river", "vowpalwabbit", "sklearn"):
            try:
                versions[mod] = __import__(mod).__version__
            except (ImportError, AttributeError):
                pass
        with open(args.json, "w") as f:
            json.dump({"benchmark": "peers", "rate": args.rate, "seeds": args.seeds, "table": table,
                       "runs": results, "versions": versions}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
