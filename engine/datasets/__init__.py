"""Real data sets that ship with learnd, for tests, benchmarks and the demo.

Copies of scikit-learn's digits, breast_cancer and diabetes (shuffled with a fixed
seed) and river's SEA concept-drift stream; each NAME.json beside NAME.npz gives the
source, licence, row order and `heldout.start`, where the held-out last 20% begins.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
NAMES = ("digits", "breast_cancer", "diabetes", "sea_drift")


def load(name):
    """(X, y, meta) of a shipped data set: X float32 (m, n), y int64 or float32 (m,)."""
    if name not in NAMES:
        raise ValueError(f"unknown data set {name!r}; shipped: {', '.join(NAMES)}")
    with np.load(HERE / f"{name}.npz", allow_pickle=False) as z:
        X, y = z["X"], z["y"]
    meta = json.loads((HERE / f"{name}.json").read_text())
    return X, y, meta


def split(name):
    """(X_train, y_train, X_heldout, y_heldout): the first 80% and the held-out rest."""
    X, y, meta = load(name)
    start = meta["heldout"]["start"]
    return X[:start], y[:start], X[start:], y[start:]
