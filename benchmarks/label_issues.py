"""Likely mislabeled rows: learnd's confident-learning suspects beside cleanlab's
find_label_issues, on the same rows and the same out-of-sample probabilities.

Two data sets, each with 5% of the labels flipped at random to another class:

- digits (1797 rows, 10 classes): 5-fold, so every row gets probabilities from a model
  that never trained on it (what the daemon's held-out rows have);
- a stream of our own (Gaussian classes, 20 features, 5 classes): a model learns online
  on 40 000 rows (labels flipped too) and scores 5000 held-out rows, as the daemon does.

The figures are the precision and recall of finding the flipped rows.  cleanlab is
imported here only (it is no dependency of learnd).

    python benchmarks/label_issues.py [--seed 0] [--json FILE]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from learnd.daemon.training.error_analysis import suspects
from learnd.engine import Model
from learnd.engine.datasets import load

FLIP = 0.05


def flip(y, n_classes, rng):
    """y with FLIP of its labels changed to another class at random; (noisy, flipped mask)."""
    flipped = rng.random(y.shape[0]) < FLIP
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, n_classes, flipped.sum())) % n_classes
    return noisy, flipped


def train(X, y, n_classes, epochs, seed):
    model = Model(hidden=(128,), task="multiclass", n_outputs=n_classes, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(X.shape[0])
        for i in range(0, X.shape[0], 64):
            rows = order[i:i + 64]
            if rows.shape[0] >= 2:
                model.partial_fit(X[rows], y[rows])
    return model


def scores(found, flipped):
    """(precision, recall, found) of a boolean mask of rows found against the flipped ones."""
    hit = int((found & flipped).sum())
    return {"precision": hit / max(int(found.sum()), 1), "recall": hit / max(int(flipped.sum()), 1),
            "found": int(found.sum()), "flipped": int(flipped.sum())}


def compare(probs, noisy, flipped):
    from cleanlab.filter import find_label_issues

    rows, _, _ = suspects(probs, noisy)
    ours = np.zeros(noisy.shape[0], dtype=bool)
    ours[rows] = True
    theirs = find_label_issues(noisy, probs)
    return {"learnd": scores(ours, flipped), "cleanlab": scores(theirs, flipped),
            "agreement": float((ours == theirs).mean())}


def digits(seed):
    X, y, _ = load("digits")
    X = X.astype(np.float32)
    rng = np.random.default_rng(seed)
    noisy, flipped = flip(y, 10, rng)
    probs = np.empty((y.shape[0], 10))
    folds = rng.permutation(y.shape[0]) % 5
    for k in range(5):
        model = train(X[folds != k], noisy[folds != k], 10, epochs=30, seed=seed + k)
        probs[folds == k] = model.predict_proba(X[folds == k])
    return compare(probs, noisy, flipped)


def own_stream(seed, rows=45_000, held_out=5_000, n_classes=5, dim=20):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.2, (n_classes, dim))
    y = rng.integers(0, n_classes, rows)
    X = (centres[y] + rng.normal(0, 1.0, (rows, dim))).astype(np.float32)
    noisy, flipped = flip(y, n_classes, rng)
    split = rows - held_out
    model = train(X[:split], noisy[:split], n_classes, epochs=1, seed=seed)
    probs = model.predict_proba(X[split:]).astype(np.float64)
    out = compare(probs, noisy[split:], flipped[split:])
    out["held_out_accuracy_on_true_labels"] = float((probs.argmax(axis=1) == y[split:]).mean())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = {"digits": digits(args.seed), "stream": own_stream(args.seed)}
    for name, r in results.items():
        for who in ("learnd", "cleanlab"):
            s = r[who]
            print(f"{name:7} {who:9} precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
                  f"({s['found']} found, {s['flipped']} flipped)")
        print(f"{name:7} the two agree on {100 * r['agreement']:.1f}% of the rows")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
