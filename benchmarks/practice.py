"""The course's practice, measured: adversarial robustness, transfer learning and data
augmentation, each against the same network trained without it, on held-out rows.

Every run trains ``Model(hidden=(64, 64), task=..., seed=s)`` (other settings at their
defaults) for a fixed number of passes over its training rows, reshuffled each pass by
the seed, in mini-batches of 32, and scores the held-out last 20% of the shipped data
set (engine/datasets), which no run trains on.  Figures are means and sample standard
deviations (ddof=1) over the seeds.

    python -m benchmarks.practice robustness     # digits and breast cancer, FGSM
    python -m benchmarks.practice transfer       # digits 0-4 -> 5-9, 10/20/50 rows per class
    python -m benchmarks.practice augment        # digits with 100 and 300 training rows
    python -m benchmarks.practice all --json out.json

robustness: inputs are scaled to [0, 1] (digits / 16; breast cancer by the training
rows' minimum and maximum), so epsilon is a share of each feature's range, as for
images.  "attacked" is the error on FGSM examples of the held-out rows made from the
scored model itself (white box) at the evaluation epsilon.
transfer: the source trains on the training rows of digits 0-4; the target task is
digits 5-9 (labels 0-4) from k rows per class drawn from the training rows; "frozen"
reinitializes the head and freezes layers 1-2, "fine-tuned" trains every layer from
the source's weights, "scratch" is a fresh network.  Also (transfer_parity) the case
the course makes for transfer: the source learns all ten digits from the first half of
the training rows, the target is odd/even from k rows per parity of the second half.
augment: the first N training rows of digits (input_shape (8, 8)); shifts of 1 pixel,
noise of 0.2 normalized units, mixup alpha 0.2, and all three; scored on the held-out
rows as they are (centred, like the training rows) and moved by one pixel.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from learnd import Model  # noqa: E402
from learnd.engine.datasets import split  # noqa: E402

HIDDEN = (64, 64)
BATCH = 32
SEEDS = (0, 1, 2, 3, 4)


def train(model, X, y, passes, seed):
    """`passes` shuffled passes over (X, y) in batches of BATCH (a last batch of one
    row joins the one before it)."""
    rng = np.random.default_rng(seed)
    n = len(X)
    for _ in range(passes):
        order = rng.permutation(n)
        edges = list(range(0, n, BATCH)) + [n]
        if len(edges) > 2 and edges[-1] - edges[-2] == 1:
            del edges[-2]
        for a, b in zip(edges[:-1], edges[1:]):
            idx = order[a:b]
            model.partial_fit(X[idx], y[idx])
    return model


def error(model, X, y):
    return float(model.evaluate(X, y)["error"])


def summary(values):
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "runs": [float(x) for x in v]}


# -- adversarial robustness ---------------------------------------------------------------
def unit_scaled(name):
    Xtr, ytr, Xte, yte = split(name)
    if name == "digits":
        lo, span = 0.0, 16.0
    else:
        lo = Xtr.min(axis=0)
        span = np.maximum(Xtr.max(axis=0) - lo, 1e-12)
    return ((Xtr - lo) / span).astype(np.float32), ytr, ((Xte - lo) / span).astype(np.float32), yte


ROBUSTNESS = {   # name: (task, n_outputs, passes, train epsilon, evaluation epsilons)
    "digits": ("multiclass", 10, 20, 0.1, (0.05, 0.1, 0.2)),
    "breast_cancer": ("binary", 1, 30, 0.05, (0.02, 0.05, 0.1)),
}


def robustness(seeds):
    out = {}
    for name, (task, k, passes, eps_train, eps_eval) in ROBUSTNESS.items():
        Xtr, ytr, Xte, yte = unit_scaled(name)
        rows = {}
        for label, extra in (("standard", {}),
                             (f"adversarial eps={eps_train}", {"adversarial_epsilon": eps_train,
                                                               "adversarial_fraction": 0.5})):
            figures = {"clean": []}
            figures.update({f"attacked eps={e}": [] for e in eps_eval})
            for s in seeds:
                model = train(Model(hidden=HIDDEN, task=task, n_outputs=k, seed=s, **extra),
                              Xtr, ytr, passes, s)
                figures["clean"].append(error(model, Xte, yte))
                for e in eps_eval:
                    figures[f"attacked eps={e}"].append(error(model, model.adversarial(Xte, yte, e), yte))
            rows[label] = {key: summary(v) for key, v in figures.items()}
        out[name] = rows
    return out


# -- transfer ----------------------------------------------------------------------------------
TRANSFER_SOURCE_PASSES = 20
TRANSFER_TARGET_STEPS = 300      # optimizer steps on the target rows, whatever their number


def transfer(seeds, per_class=(10, 20, 50)):
    Xtr, ytr, Xte, yte = split("digits")
    src = ytr < 5
    target_test = yte >= 5
    X_test, y_test = Xte[target_test], yte[target_test] - 5
    out = {str(k): {"scratch": [], "transfer frozen 1-2": [], "transfer fine-tuned": []} for k in per_class}
    for s in seeds:
        source = train(Model(hidden=HIDDEN, task="multiclass", n_outputs=5, seed=s),
                       Xtr[src], ytr[src], TRANSFER_SOURCE_PASSES, s)
        rng = np.random.default_rng(1000 + s)
        for k in per_class:
            idx = np.concatenate([rng.choice(np.flatnonzero(ytr == c), k, replace=False) for c in range(5, 10)])
            X, y = Xtr[idx], ytr[idx] - 5
            passes = max(1, TRANSFER_TARGET_STEPS * BATCH // len(X))
            models = {
                "scratch": Model(hidden=HIDDEN, task="multiclass", n_outputs=5, seed=100 + s),
                "transfer frozen 1-2": Model.from_pretrained(source, n_outputs=5, reinit_layers=1,
                                                             freeze_layers=(1, 2), seed=100 + s),
                "transfer fine-tuned": Model.from_pretrained(source, n_outputs=5, reinit_layers=1,
                                                             seed=100 + s),
            }
            for label, model in models.items():
                out[str(k)][label].append(error(train(model, X, y, passes, s), X_test, y_test))
    return {k: {label: summary(v) for label, v in rows.items()} for k, rows in out.items()}


def transfer_parity(seeds, per_class=(5, 10, 25)):
    """The course's case for transfer: a source trained on more, and more general, data.
    Source: all ten digits from the first half of the training rows; target: odd or even
    (binary) from k rows per parity drawn from the second half; held-out parity error."""
    Xtr, ytr, Xte, yte = split("digits")
    half = len(Xtr) // 2
    X_rest, y_rest = Xtr[half:], ytr[half:]
    out = {str(k): {"scratch": [], "transfer frozen 1-2": [], "transfer fine-tuned": []} for k in per_class}
    for s in seeds:
        source = train(Model(hidden=HIDDEN, task="multiclass", n_outputs=10, seed=s),
                       Xtr[:half], ytr[:half], TRANSFER_SOURCE_PASSES, s)
        rng = np.random.default_rng(1000 + s)
        for k in per_class:
            idx = np.concatenate([rng.choice(np.flatnonzero(y_rest % 2 == c), k, replace=False) for c in (0, 1)])
            X, y = X_rest[idx], y_rest[idx] % 2
            passes = max(1, TRANSFER_TARGET_STEPS * BATCH // len(X))
            models = {
                "scratch": Model(hidden=HIDDEN, task="binary", seed=100 + s),
                "transfer frozen 1-2": Model.from_pretrained(source, task="binary", freeze_layers=(1, 2),
                                                             seed=100 + s),
                "transfer fine-tuned": Model.from_pretrained(source, task="binary", seed=100 + s),
            }
            for label, model in models.items():
                out[str(k)][label].append(error(train(model, X, y, passes, s), Xte, yte % 2))
    return {k: {label: summary(v) for label, v in rows.items()} for k, rows in out.items()}


# -- augmentation ------------------------------------------------------------------------------
AUGMENT_PASSES = 60
AUGMENTS = {
    "none": {},
    "shift 1px": {"augment_shift": 1},
    "noise 0.2": {"augment_noise_std": 0.2},
    "mixup 0.2": {"augment_mixup_alpha": 0.2},
    "shift + noise + mixup": {"augment_shift": 1, "augment_noise_std": 0.2, "augment_mixup_alpha": 0.2},
}


def shifted_copy(X, shape, seed):
    """Every row moved by one pixel in a random direction (dy, dx not both 0), the edge
    repeated: held-out digits that are no longer centred."""
    rng = np.random.default_rng(seed)
    H, W = shape
    out = np.empty_like(X)
    moves = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for i, row in enumerate(X):
        dy, dx = moves[rng.integers(len(moves))]
        img = np.pad(row.reshape(H, W), 1, mode="edge")
        out[i] = img[1 - dy:1 - dy + H, 1 - dx:1 - dx + W].reshape(-1)
    return out


def augment(seeds, sizes=(100, 300)):
    Xtr, ytr, Xte, yte = split("digits")
    X_shifted = shifted_copy(Xte, (8, 8), 7)
    out = {}
    for n in sizes:
        rows = {}
        for label, extra in AUGMENTS.items():
            errors, shifted = [], []
            for s in seeds:
                model = Model(hidden=HIDDEN, task="multiclass", n_outputs=10, seed=s, input_shape=(8, 8), **extra)
                train(model, Xtr[:n], ytr[:n], AUGMENT_PASSES, s)
                errors.append(error(model, Xte, yte))
                shifted.append(error(model, X_shifted, yte))
            rows[label] = {"held-out": summary(errors), "held-out shifted 1px": summary(shifted)}
        out[str(n)] = rows
    return out


def print_table(title, table):
    print(f"\n{title}")
    for group, rows in table.items():
        print(f"  {group}")
        for label, figures in rows.items():
            if "mean" in figures:
                print(f"    {label:<28} error {figures['mean']:.4f} ± {figures['std']:.4f}")
            else:
                cells = "  ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in figures.items())
                print(f"    {label:<28} {cells}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("robustness", "transfer", "augment", "all"))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    results = {}
    runs = (("robustness", "robustness", robustness, "held-out error, clean and under FGSM"),
            ("transfer", "transfer", transfer, "digits 5-9 held-out error, by rows per class"),
            ("transfer", "transfer_parity", transfer_parity,
             "digits parity held-out error (source: all ten digits), by rows per parity"),
            ("augment", "augment", augment, "digits held-out error, by training rows"))
    for what, key, fn, title in runs:
        if args.what in (what, "all"):
            results[key] = fn(tuple(args.seeds))
            print_table(title, results[key])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
