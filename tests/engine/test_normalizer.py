"""Input normalization: all-time Welford mean and biased variance of the training inputs,
updated with each batch before its step, applied alike at inference."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from learnd.engine import Model

from . import reference as ref
from .helpers import batch, targets


def model_for(dtype="float64", **kw):
    settings = dict(hidden=(4,), task="regression", dtype=dtype, seed=5, batch_norm=False)
    settings.update(kw)
    return Model(**settings)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_running_mean_and_biased_variance_match_numpy_over_all_batches(rng, dtype):
    model = model_for(dtype)
    seen = []
    scale = np.array([1.0, 1e3, 1e-3, 5.0])
    # a far offset (as far as the dtype resolves std 1) defeats sum-of-squares
    offset = np.array([1e8 if dtype == "float64" else 1e4, -50.0, 0.0, 3.0])
    for m in (2, 9, 1, 30, 4, 17, 3):                 # batch norm is off: 1 row is fine
        X = (rng.normal(size=(m, 4)) * scale + offset).astype(dtype)
        seen.append(X.astype(np.float64))
        model.partial_fit(X, rng.normal(size=m))
        allX = np.concatenate(seen)
        norm = model.normalizer
        assert norm.count == len(allX)
        assert_allclose(norm.mean, allX.mean(axis=0), rtol=1e-13)
        assert_allclose(norm.m2 / norm.count, allX.var(axis=0), rtol=1e-7)
        assert_allclose(norm.shift, allX.mean(axis=0), rtol=1e-6 if dtype == "float32" else 1e-13)
        assert_allclose(norm.inv_scale, 1 / allX.std(axis=0), rtol=1e-6 if dtype == "float32" else 1e-7)


def test_each_step_trains_with_statistics_that_include_its_batch(rng):
    model = model_for(input_dim=3)
    X = rng.normal(size=(8, 3)) * [2, 3, 4] + [10, -5, 0]
    y = rng.normal(size=8)
    P = ref.params64(model)
    loss = model.partial_fit(X, y)
    J, _, _ = ref.forward_backward(ref.Net(model.spec), P, X, targets("regression", y, 1),
                                   shift=X.mean(axis=0), inv_scale=1 / X.std(axis=0))
    assert loss == pytest.approx(J, rel=1e-12)


def test_inference_uses_the_training_statistics(rng):
    model = model_for()
    train = [rng.normal(size=(16, 3)) * [2, 3, 4] + [10, -5, 0] for _ in range(5)]
    for X in train:
        model.partial_fit(X, rng.normal(size=16))
    allX = np.concatenate(train)
    X = rng.normal(size=(5, 3)) * 7
    expected = ref.predict_proba(ref.Net(model.spec), ref.params64(model), {}, X,
                                 allX.mean(axis=0), 1 / allX.std(axis=0))
    assert_allclose(model.predict_proba(X), expected, rtol=1e-10)


def test_before_any_data_inputs_pass_unchanged(rng):
    model = model_for(input_dim=3)
    assert np.array_equal(model.normalizer.shift, np.zeros(3))
    assert np.array_equal(model.normalizer.inv_scale, np.ones(3))
    X = rng.normal(size=(4, 3)) * 100 + 50
    expected = ref.predict_proba(ref.Net(model.spec), ref.params64(model), {}, X)
    assert_allclose(model.predict_proba(X), expected, rtol=1e-12)


@pytest.mark.parametrize("spread", [0.0, 1e-10])
def test_a_feature_with_std_below_1e_8_is_only_centred(rng, spread):
    model = model_for()
    for _ in range(3):
        X = rng.normal(size=(10, 3))
        X[:, 1] = 7.0 + spread * rng.normal(size=10)
        model.partial_fit(X, rng.normal(size=10))
    norm = model.normalizer
    assert norm.shift[1] == pytest.approx(7.0, abs=1e-9)
    assert norm.inv_scale[1] == 1.0
    assert np.all(np.isfinite(model.predict_proba(np.array([[0.0, 8.0, 0.0]]))))
    Xq = np.array([[0.1, 7.5, -0.2]])
    expected = ref.predict_proba(ref.Net(model.spec), ref.params64(model), {}, Xq,
                                 norm.shift, norm.inv_scale)
    assert_allclose(model.predict_proba(Xq), expected, rtol=1e-12)


def test_normalization_off_leaves_inputs_raw(rng):
    model = model_for(normalize_inputs=False)
    for _ in range(3):
        model.partial_fit(*batch("regression", 8, 3, rng, n_outputs=1, scale=5, offset=20))
    assert np.array_equal(model.normalizer.shift, np.zeros(3))
    assert np.array_equal(model.normalizer.inv_scale, np.ones(3))
    X, y = batch("regression", 8, 3, rng, n_outputs=1, scale=5, offset=20)
    P = ref.params64(model)
    J, _, _ = ref.forward_backward(ref.Net(model.spec), P, X, targets("regression", y, 1))
    assert model.partial_fit(X, y) == pytest.approx(J, rel=1e-12)


def test_normalization_makes_the_scale_of_inputs_irrelevant(rng):
    """Scaling and shifting every feature changes nothing a user sees."""
    X = [rng.normal(size=(16, 3)) for _ in range(6)]
    y = [rng.integers(0, 2, size=16) for _ in range(6)]
    a = Model(hidden=(5,), task="binary", dtype="float64", seed=1)
    b = Model(hidden=(5,), task="binary", dtype="float64", seed=1)
    for Xi, yi in zip(X, y):
        la = a.partial_fit(Xi, yi)
        lb = b.partial_fit(Xi * [1e3, 1e-3, 2] + [5e4, -7, 1], yi)
        assert la == pytest.approx(lb, rel=1e-7)
    Xq = rng.normal(size=(4, 3))
    assert_allclose(a.predict_proba(Xq), b.predict_proba(Xq * [1e3, 1e-3, 2] + [5e4, -7, 1]),
                    rtol=1e-6)


@pytest.mark.parametrize("case", range(12))
def test_statistics_do_not_depend_on_how_the_stream_is_cut(seed, case):
    draw = np.random.default_rng([seed, case])
    sizes = draw.integers(1, 13, size=draw.integers(1, 9))
    offset, scale = draw.uniform(-1e6, 1e6), 10 ** draw.uniform(-3, 3)
    data = draw.normal(size=(sizes.sum(), 2)) * scale + offset
    model = model_for(input_dim=2, optimizer="sgd", lr=1e-12)
    start = 0
    for m in sizes:
        model.partial_fit(data[start:start + m], np.zeros(m))
        start += m
    norm = model.normalizer
    assert norm.count == len(data)
    assert_allclose(norm.mean, data.mean(axis=0), rtol=1e-12, atol=1e-9 * scale)
    assert_allclose(norm.m2 / norm.count, data.var(axis=0), rtol=1e-8, atol=1e-12 * scale ** 2)
