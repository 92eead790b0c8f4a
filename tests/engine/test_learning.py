"""The engine learns real data: held-out scores on the shipped data sets, and prequential
(test-then-train) accuracy on a drifting stream."""
import numpy as np
import pytest

from learnd.engine import Model
from learnd.engine.datasets import load, split

from .helpers import OPTIMIZERS


def train_epochs(model, X, y, epochs, seed, batch_size=64):
    order = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = order.permutation(len(X))
        for start in range(0, len(X), batch_size):
            rows = perm[start:start + batch_size]
            if len(rows) >= 2:                      # batch norm needs 2 rows
                model.partial_fit(X[rows], y[rows])


def test_digits_held_out_accuracy_with_default_settings(seed):
    X, y, X_test, y_test = split("digits")
    model = Model(task="multiclass", n_outputs=10)  # hidden (256, 128), relu, adam 1e-3, BN
    train_epochs(model, X, y, epochs=8, seed=seed)
    accuracy = model.evaluate(X_test, y_test)["accuracy"]
    print(f"digits held-out accuracy: {accuracy:.4f}")
    assert accuracy >= 0.95
    assert np.mean(model.predict(X_test) == y_test) == pytest.approx(accuracy)


def test_sea_drift_prequential_accuracy():
    """One pass over the stream in batches of 64: predict each batch, then train on it.
    Raw inputs in [0, 10]; the model's own running normalization scales them. The noise
    (10% flipped labels) caps any model at about 0.90."""
    X, y, _ = load("sea_drift")
    model = Model(hidden=(64, 32), task="binary", lr=1e-2, input_dim=3, seed=0)
    hits = np.empty(len(X), dtype=bool)
    for start in range(0, len(X), 64):
        Xb, yb = X[start:start + 64], y[start:start + 64]
        hits[start:start + 64] = model.predict(Xb)[:, 0] == yb
        model.partial_fit(Xb, yb)
    accuracy = hits.mean()
    print(f"sea_drift prequential accuracy: {accuracy:.4f}")
    assert accuracy >= 0.88
    # it recovers after each drift: the last 5000 rows of every concept
    for end in (25000, 50000, 75000, 100000):
        assert hits[end - 5000:end].mean() >= 0.87


def test_breast_cancer_held_out_accuracy(seed):
    X, y, X_test, y_test = split("breast_cancer")
    model = Model(task="binary")
    train_epochs(model, X, y, epochs=5, seed=seed)
    accuracy = model.evaluate(X_test, y_test)["accuracy"]
    print(f"breast_cancer held-out accuracy: {accuracy:.4f}")
    assert accuracy >= 0.95


def test_diabetes_held_out_r2(seed):
    X, y, X_test, y_test = split("diabetes")
    mean, std = y.mean(), y.std()
    model = Model(hidden=(16,), task="regression")
    train_epochs(model, X, (y - mean) / std, epochs=60, seed=seed, batch_size=32)
    pred = model.predict(X_test)[:, 0] * std + mean
    r2 = 1 - np.mean((pred - y_test) ** 2) / np.var(y_test)
    print(f"diabetes held-out R^2: {r2:.3f}")
    assert r2 >= 0.35


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_learns_well_separated_classes(rng, optimizer):
    centres = np.eye(3, 4) * 4
    y = rng.integers(0, 3, size=600)
    X = centres[y] + rng.normal(size=(600, 4))
    lr = {"sgd": 0.1, "momentum": 0.1, "rmsprop": 1e-2, "adam": 1e-2}[optimizer]
    model = Model(hidden=(16,), task="multiclass", n_outputs=3, optimizer=optimizer, lr=lr,
                  input_dim=4, seed=1)
    before = model.evaluate(X, y)
    train_epochs(model, X, y, epochs=5, seed=2, batch_size=32)
    after = model.evaluate(X, y)
    assert after["loss"] < 0.3 * before["loss"]
    assert after["accuracy"] >= 0.95
