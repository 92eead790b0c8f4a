"""Initialization: DESIGN's distributions for he / xavier / glorot / random / zeros, the
starting values of the other arrays, names and shapes for any depth, and the symmetry
that zeros never breaks."""
import numpy as np
import pytest

from learnd.engine import Model

from .helpers import batch

N0, N1, N2 = 300, 400, 250


def std_for(init, n_in, n_out):
    return {"he": np.sqrt(2 / n_in), "xavier": np.sqrt(1 / n_in),
            "glorot": np.sqrt(2 / (n_in + n_out)), "random": 0.01}[init]


@pytest.mark.parametrize("init", ["he", "xavier", "glorot", "random"])
def test_weights_are_drawn_from_designs_normal(seed, init):
    model = Model(hidden=(N1,), task="multiclass", n_outputs=N2, init=init, input_dim=N0,
                  seed=seed, batch_norm=False, dtype="float64")
    for W, n_in, n_out in ((model.params["W1"], N0, N1), (model.params["W2"], N1, N2)):
        assert W.shape == (n_out, n_in)
        expected = std_for(init, n_in, n_out)
        z = W / expected
        assert abs(z.mean()) < 0.01
        assert abs(z.std() - 1) < 0.01
        # normal, not uniform: 68.3% within one sd (a uniform of that sd gives 57.7%)
        assert abs(np.mean(np.abs(z) < 1) - 0.6827) < 0.01


def test_zeros_init_and_the_other_arrays_start_where_design_says():
    model = Model(hidden=(4, 3), init="zeros", batch_norm=True, input_dim=5)
    for name, value in model.params.items():
        start = 1.0 if name.startswith(("gamma", "running_var")) else 0.0
        assert np.all(value == start), name
    model = Model(hidden=(4, 3), init="he", batch_norm=False, input_dim=5)
    for name in ("b1", "b2", "b3"):
        assert np.all(model.params[name] == 0.0)


def test_the_seed_fixes_the_weights():
    a, b, c = (Model(hidden=(6,), input_dim=4, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.params["W1"], b.params["W1"])
    assert not np.array_equal(a.params["W1"], c.params["W1"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hidden", [(), (7,), (7, 6, 5, 4)])
def test_names_shapes_and_dtype_for_any_depth(hidden, dtype):
    model = Model(hidden=hidden, task="multiclass", n_outputs=3, input_dim=8, batch_norm=False,
                  dtype=dtype)
    sizes = (8, *hidden, 3)
    expected = {}
    for l in range(1, len(sizes)):
        expected[f"W{l}"] = (sizes[l], sizes[l - 1])
        expected[f"b{l}"] = (sizes[l],)
    assert {k: v.shape for k, v in model.params.items()} == expected
    assert all(v.dtype == np.dtype(dtype) for v in model.params.values())


def test_input_dim_comes_from_the_first_batch(rng):
    model = Model(hidden=(4,), task="binary")
    assert model.params == {} and model.spec.input_dim is None
    model.partial_fit(*batch("binary", 5, 7, rng))
    assert model.spec.input_dim == 7 and model.params["W1"].shape == (4, 7)


def train(model, rng, steps=40):
    for _ in range(steps):
        X, y = batch("multiclass", 32, 6, rng, n_outputs=4, scale=2.0)
        model.partial_fit(X, y)
    return model


def row_spread(W):
    """How far the rows (hidden units) of W are from all being the same row."""
    return np.abs(W - W[0]).max()


@pytest.mark.parametrize("activation, batch_norm", [("sigmoid", False), ("relu", True)])
def test_zeros_init_never_breaks_symmetry(rng, activation, batch_norm):
    model = train(Model(hidden=(8,), activation=activation, task="multiclass", n_outputs=4,
                        init="zeros", batch_norm=batch_norm, lr=0.05, seed=1), rng)
    W1, W2 = model.params["W1"], model.params["W2"]
    assert row_spread(W1) <= 1e-6 * max(np.abs(W1).max(), 1e-30)  # hidden units identical
    assert row_spread(W2.T) <= 1e-6 * max(np.abs(W2).max(), 1e-30)
    if activation == "sigmoid":
        assert np.abs(W1).max() > 1e-3        # it learned something, all units alike


def test_he_init_units_differ_after_training(rng):
    model = train(Model(hidden=(8,), activation="relu", task="multiclass", n_outputs=4,
                        init="he", batch_norm=True, lr=0.05, seed=1), rng)
    W1 = model.params["W1"]
    diffs = [np.abs(W1[i] - W1[j]).max() for i in range(8) for j in range(i)]
    assert min(diffs) > 1e-2
