"""Drift: the daemon's detector on the progressive error, beside River's ADWIN on the same
error stream, and what each `on_drift` action does to prequential accuracy.

The trainer's loop is run embedded, as the daemon runs it (daemon defaults: the model,
batches of 64, replay steps at ratio 16 as an idle daemon takes them): each batch is
scored by the model before it learns from it, its row errors go to the trainer's
DriftWatch (training/drift.py: ADWIN, rises of the error only) and, one value at a
time, to River's ADWIN (every change it finds, as River reports them); on a detection
the configured action is taken.  River is imported here only.

Streams, each with its true change rows:
- sea_drift: the data set's `concept` column (3 changes, each moving 1.5-4.5% of labels);
- rules: a made stream, inputs uniform in [0, 10]^3, the label's rule switching every
  25 000 rows between x0 + x1 > 10, x1 + x2 > 10, x0 + x2 > 10 and back (about a third
  of the labels change), with 10% label noise;
- flat: the same inputs and one rule throughout (no change; every detection is false).

A detection is a hit when it is the first within `--horizon` rows after a change;
every other detection is a false alarm.  Delays are in rows after the change.

    python benchmarks/drift.py [--rows 100000] [--streams sea_drift,rules,flat] [--actions none,...]
                               [--seed 0] [--json FILE]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from learnd.daemon.config import Config
from learnd.daemon.training.drift import DriftWatch
from learnd.engine.drift import row_errors
from learnd.engine import Model, Replay
from learnd.engine.datasets import HERE, load

BATCH = 64
ACTIONS = ("none", "reset_optimizer", "boost_lr")


def sea(rows):
    X, y, _ = load("sea_drift")
    with np.load(HERE / "sea_drift.npz", allow_pickle=False) as z:
        concept = z["concept"]
    # The transition between concepts is a sigmoid 200 rows wide, so rows of both mix
    # there: a change is the first row of the new concept.
    changes = [int(np.argmax(concept == k)) for k in range(1, int(concept.max()) + 1)]
    changes = [c for c in changes if 0 < c < rows]
    return X[:rows], y[:rows], changes


def rules(rows, seed, switch=True):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 10, (rows, 3)).astype(np.float32)
    period = 25_000
    which = (np.arange(rows) // period) % 3 if switch else np.zeros(rows, dtype=np.int64)
    pairs = np.array([[0, 1], [1, 2], [0, 2]])
    a, b = pairs[which, 0], pairs[which, 1]
    y = (X[np.arange(rows), a] + X[np.arange(rows), b] > 10).astype(np.int64)
    noise = rng.random(rows) < 0.1
    y[noise] = 1 - y[noise]
    changes = list(range(period, rows, period)) if switch else []
    return X, y, changes


def run(X, y, action, replay_ratio, seed):
    """The trainer's loop over the stream; (row errors (n,), our detections, River's, offset).

    The first batch is not scored (there is no model before it): the error stream starts
    at stream row `offset`, and detections are given as stream rows (counted from 1)."""
    from river.drift import ADWIN as RiverADWIN

    cfg = Config(on_drift=action).validate()
    watch = DriftWatch(cfg)
    river = RiverADWIN()
    model = Model(task="binary", n_outputs=1, seed=seed)
    replay = Replay(model, rows=cfg.replay_rows, ratio=replay_ratio, batch_size=BATCH, seed=seed,
                    recency=cfg.replay_recency)
    errors, ours, theirs = [], [], []
    seen = offset = 0
    for i in range(0, X.shape[0] - 1, BATCH):
        xb, Yb = X[i:i + BATCH], y[i:i + BATCH, None].astype(np.float32)
        if model.network is None:
            offset = i + xb.shape[0]
        else:
            e = row_errors("binary", model.predict_proba(xb), Yb)
            errors.append(e)
            found = watch.observe(e)
            ours += [offset + p for p in found]
            for k, v in enumerate(e):           # River's detector takes one value at a time
                river.update(float(v))
                if river.drift_detected:
                    theirs.append(offset + seen + k + 1)
            seen += e.shape[0]
            models = {0: model}
            if found and action == "reset_optimizer":
                model.reset_optimizer()
            elif found and action == "boost_lr":
                watch.start_boost(models, seen)
        model.partial_fit(xb, Yb)
        if watch.boost is not None:
            watch.apply_boost({0: model}, seen)
        replay.add(xb, Yb)
        for _ in range(replay_ratio):
            replay.step()
    return np.concatenate(errors), ours, theirs, offset


def detection_figures(detections, changes, rows, horizon):
    """Delays (rows) of the first detection after each change within horizon (None: missed),
    and false alarms per 100k rows."""
    delays, hits = [], set()
    for c in changes:
        after = [d for d in detections if c < d <= c + horizon]
        delays.append(after[0] - c if after else None)
        if after:
            hits.add(after[0])
    false = len([d for d in detections if d not in hits])
    return {"delays": delays, "false_alarms": false, "false_per_100k": 1e5 * false / rows,
            "detections": len(detections)}


def accuracy_figures(errors, offset, changes, after=5000):
    """Prequential accuracy overall and over the `after` rows following each change."""
    out = {"prequential_accuracy": float(1 - errors.mean())}
    post = [errors[max(c - offset, 0):c - offset + after] for c in changes]
    if post:
        out["accuracy_after_changes"] = float(1 - np.concatenate(post).mean())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--horizon", type=int, default=10_000, help="rows after a change a hit may come")
    parser.add_argument("--replay-ratio", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="the made streams' draws and the models' seed")
    parser.add_argument("--streams", default="sea_drift,rules,flat", help="comma-separated, of sea_drift, rules, flat")
    parser.add_argument("--actions", default=",".join(ACTIONS), help="comma-separated on_drift actions")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    makers = {"sea_drift": lambda: sea(args.rows), "rules": lambda: rules(args.rows, args.seed),
              "flat": lambda: rules(args.rows, args.seed, switch=False)}
    streams = {name: makers[name]() for name in args.streams.split(",")}
    results = {}
    for name, (X, y, changes) in streams.items():
        results[name] = {"changes": changes}
        for action in args.actions.split(","):
            errors, ours, theirs, offset = run(X, y, action, args.replay_ratio, args.seed)
            n = errors.shape[0]
            r = {"accuracy": accuracy_figures(errors, offset, changes)}
            r["learnd"] = detection_figures(ours, changes, n, args.horizon)
            if action == "none":    # the error stream both detectors read is the same only without actions
                r["river_adwin"] = detection_figures(theirs, changes, n, args.horizon)
            results[name][action] = r
            det = r["learnd"]
            line = (f"{name:9} on_drift={action:15} prequential accuracy {r['accuracy']['prequential_accuracy']:.4f}"
                    + (f", after changes {r['accuracy']['accuracy_after_changes']:.4f}"
                       if "accuracy_after_changes" in r["accuracy"] else "")
                    + f" | learnd: delays {det['delays']}, false/100k {det['false_per_100k']:.1f}")
            if "river_adwin" in r:
                rv = r["river_adwin"]
                line += f" | river ADWIN: delays {rv['delays']}, false/100k {rv['false_per_100k']:.1f}"
            print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
