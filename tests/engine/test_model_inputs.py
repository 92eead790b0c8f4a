"""What Model accepts: every label format DESIGN lists gives the same step; and everything
it must refuse raises EngineError saying what was expected, with the model unchanged."""
import numpy as np
import pytest

from learnd.engine import EngineError, Model

from .helpers import assert_same_state, batch, full_state

M, N = 6, 5


def trained(task="multiclass", n_outputs=3, **kw):
    settings = dict(hidden=(4, 3), task=task, n_outputs=n_outputs, keep_prob=0.8, batch_norm=True, seed=1)
    settings.update(kw)
    model = Model(**settings)
    rng = np.random.default_rng(0)
    for _ in range(2):
        model.partial_fit(*batch(task, M, N, rng, n_outputs=n_outputs))
    return model


def good_X():
    return np.random.default_rng(1).normal(size=(M, N))


# -- accepted formats give identical steps ------------------------------------------------------
def step_result(task, n_outputs, X, y, **kw):
    model = Model(hidden=(4,), task=task, n_outputs=n_outputs, seed=3, dtype="float64", **kw)
    loss = model.partial_fit(X, y)
    return loss, full_state(model)


def assert_same_step(task, n_outputs, X, variants):
    first = step_result(task, n_outputs, X, variants[0])
    for y in variants[1:]:
        loss, state = step_result(task, n_outputs, X, y)
        assert loss == first[0]
        assert_same_state(first[1], state)


def test_multiclass_ids_and_one_hot_rows_are_the_same_labels():
    ids = np.array([0, 2, 1, 1, 0, 2])
    assert_same_step("multiclass", 3, good_X(),
                     [ids, ids.astype(np.int32), ids.astype(np.uint8), ids.astype(np.float64),
                      list(ids), np.eye(3)[ids], np.eye(3, dtype=np.float32)[ids],
                      np.eye(3, dtype=int)[ids], ids.astype(">i8")])


def test_binary_labels_as_ints_bools_floats_and_columns():
    y = np.array([0, 1, 1, 0, 1, 0])
    assert_same_step("binary", 1, good_X(),
                     [y, y.astype(bool), y.astype(np.float32), y.astype(np.float16),
                      y.reshape(-1, 1), y.astype(float).reshape(-1, 1), list(y)])


def test_regression_single_output_as_vector_or_column():
    y = np.random.default_rng(2).normal(size=M)
    assert_same_step("regression", 1, good_X(), [y, y.reshape(-1, 1), y.astype(">f8")])


def test_inputs_of_other_numeric_dtypes_are_cast():
    X = np.round(good_X() * 10)
    y = np.array([0, 2, 1, 1, 0, 2])
    for variant in (X.astype(np.int64), X.astype(np.float32), X.astype(np.float16),
                    X.astype(">f8"), np.asfortranarray(X), X.tolist()):
        loss, state = step_result("multiclass", 3, variant, y)
        ref_loss, ref_state = step_result("multiclass", 3, X, y)
        assert loss == ref_loss
        assert_same_state(ref_state, state)
    wide = np.zeros((M, 2 * N))
    wide[:, ::2] = X
    assert step_result("multiclass", 3, wide[:, ::2], y)[0] == step_result("multiclass", 3, X, y)[0]


# -- refused inputs ------------------------------------------------------------------------------
def ok_y():
    return np.array([0, 1, 2, 0, 1, 2])


BAD_FIT = {
    "X 1-D": (lambda: (good_X()[0], ok_y()[:1]), r"X must be 2-D \(m, n_features\), got shape \(5,\)"),
    "X 3-D": (lambda: (good_X()[None], ok_y()), "X must be 2-D"),
    "X strings": (lambda: (good_X().astype(str), ok_y()), "X must hold numbers, got dtype <U"),
    "X complex": (lambda: (good_X().astype(complex), ok_y()), "X must hold numbers"),
    "X ragged": (lambda: ([[1.0, 2.0], [3.0]], ok_y()[:2]), "X must be a 2-D array of numbers"),
    "X too few features": (lambda: (good_X()[:, :4], ok_y()), "X must have 5 features per row, got 4"),
    "X too many features": (lambda: (np.ones((M, 6)), ok_y()), "X must have 5 features per row, got 6"),
    "X NaN": (lambda: (np.where(np.eye(M, N, dtype=bool), np.nan, good_X()), ok_y()),
              "X must be finite; got 5 NaN or Inf values"),
    "X Inf": (lambda: (np.full((M, N), np.inf), ok_y()), "X must be finite"),
    "empty batch": (lambda: (np.empty((0, N)), np.empty(0, int)), r"empty batch \(0 rows\)"),
    "one row with batch norm": (lambda: (good_X()[:1], ok_y()[:1]),
                                "with batch norm a training batch needs at least 2 rows, got 1"),
    "y too short": (lambda: (good_X(), ok_y()[:4]),
                    r"y must have one label row per input row \(6\), got shape \(4,\)"),
    "y scalar": (lambda: (good_X(), 1), "one label row per input row"),
    "class id too large": (lambda: (good_X(), np.array([0, 1, 3, 0, 1, 2])),
                           r"multiclass label 3 at row 2 is outside \[0, 3\)"),
    "class id negative": (lambda: (good_X(), np.array([0, 1, 2, -1, 1, 2])), r"outside \[0, 3\)"),
    "class id not integer": (lambda: (good_X(), np.array([0, 1, 2, 0.5, 1, 2])),
                             "multiclass labels must be integer class ids"),
    "class id NaN": (lambda: (good_X(), np.array([0, 1, 2, np.nan, 1, 2])), "integer class ids"),
    "class ids as bools": (lambda: (good_X(), np.ones(M, bool)), "integer class ids, got bools"),
    "one-hot row not summing to 1": (lambda: (good_X(), np.eye(3)[ok_y()] * 0.5),
                                     "multiclass label row 0 is not one-hot"),
    "one-hot with wrong width": (lambda: (good_X(), np.eye(4)[ok_y()]),
                                 r"multiclass labels must have shape \(6,\) class ids or "
                                 r"\(6, 3\) one-hot rows, got \(6, 4\)"),
    "y strings": (lambda: (good_X(), np.array(list("abcabc"))), "y must hold numbers or bools"),
    "weights wrong shape": (lambda: (good_X(), ok_y(), np.ones(5)),
                            r"sample_weight must have shape \(6,\), got \(5,\)"),
    "weights negative": (lambda: (good_X(), ok_y(), np.array([1, 1, -1, 1, 1, 1.0])),
                         "sample_weight must be finite and >= 0"),
    "weights NaN": (lambda: (good_X(), ok_y(), np.array([1, 1, np.nan, 1, 1, 1.0])),
                    "sample_weight must be finite"),
    "weights Inf": (lambda: (good_X(), ok_y(), np.full(M, np.inf)), "sample_weight must be finite"),
    "weights all zero": (lambda: (good_X(), ok_y(), np.zeros(M)), "must not be all zero"),
    "weights strings": (lambda: (good_X(), ok_y(), np.array(list("abcdef"))),
                        "sample_weight must hold numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIT))
def test_bad_training_input_raises_and_changes_nothing(case):
    make, message = BAD_FIT[case]
    model = trained()
    before = full_state(model)
    with pytest.raises(EngineError, match=message):
        model.partial_fit(*make())
    assert_same_state(before, full_state(model))
    model.partial_fit(good_X(), ok_y())                 # and it still trains


BAD_LABELS = [
    ("binary", 1, np.array([0, 1, 2, 0, 1, 0]), r"binary labels must be 0 or 1; row 2 has \[2\]"),
    ("binary", 1, np.array([0, 1, -1, 0, 1, 0]), "binary labels must be 0 or 1"),
    ("binary", 1, np.array([0, 1, 0.5, 0, 1, 0]), "binary labels must be 0 or 1"),
    # every integer width goes through the same kernel: unsigned, narrow, wide
    ("binary", 1, np.array([0, 1, 1, 0, 255, 0], np.uint8), r"binary labels must be 0 or 1; row 4 has \[255\]"),
    ("binary", 1, np.array([[0], [1], [1], [-3], [1], [0]], np.int32), r"row 3 has \[-3\]"),
    ("binary", 1, np.array([0, 1, np.nan, 0, 1, 0]), "binary labels must be 0 or 1"),
    ("binary", 1, np.zeros((M, 2)), r"binary labels must have shape \(6,\) or \(6, 1\), got \(6, 2\)"),
    ("multilabel", 3, np.full((M, 3), 0.5), r"multilabel labels must be 0, 1 or NaN; row 0"),
    ("multilabel", 3, np.full((M, 3), 2), "multilabel labels must be 0, 1 or NaN"),
    ("multilabel", 3, np.eye(M, 3, k=-5, dtype=np.int8) * 2, r"multilabel labels must be 0, 1 or NaN; row 5"),
    ("multilabel", 3, np.zeros(M), r"multilabel labels must have shape \(6, 3\), got \(6,\)"),
    ("regression", 2, np.full((M, 2), np.nan), "regression targets must be finite"),
    ("regression", 2, np.full((M, 2), -np.inf), "regression targets must be finite"),
    ("regression", 2, np.zeros((M, 2), bool), "regression targets must be numbers, got bools"),
    ("regression", 2, np.zeros(M), r"regression labels must have shape \(6, 2\), got \(6,\)"),
]


@pytest.mark.parametrize("task, K, y, message", BAD_LABELS,
                         ids=[f"{t}-{i}" for i, (t, *_) in enumerate(BAD_LABELS)])
def test_bad_labels_for_each_task_raise_and_change_nothing(task, K, y, message):
    model = trained(task, K)
    before = full_state(model)
    with pytest.raises(EngineError, match=message):
        model.partial_fit(good_X(), y)
    assert_same_state(before, full_state(model))
    with pytest.raises(EngineError, match=message):
        model.evaluate(good_X(), y)
    with pytest.raises(EngineError, match=message):
        model.gradient_check(good_X(), y)
    assert_same_state(before, full_state(model))


def test_a_refused_first_batch_leaves_the_model_unbuilt():
    model = Model(hidden=(4,), task="multiclass", n_outputs=3)
    with pytest.raises(EngineError, match="outside"):
        model.partial_fit(good_X(), np.array([0, 1, 2, 3, 0, 1]))
    assert model.network is None and model.spec.input_dim is None
    model.partial_fit(good_X()[:, :2], ok_y())                     # any width is still welcome
    assert model.spec.input_dim == 2


@pytest.mark.parametrize("X, message", [
    (np.ones((2, 4)), "X must have 5 features per row, got 4"),
    (np.array([[np.nan] * 5]), "X must be finite"),
    (np.empty((0, 5)), "empty batch"),
    (np.ones(5), "X must be 2-D"),
    (np.array([["a"] * 5]), "X must hold numbers"),
])
def test_bad_prediction_input_raises(X, message):
    model = trained()
    before = full_state(model)
    for call in (model.predict, model.predict_proba):
        with pytest.raises(EngineError, match=message):
            call(X)
    assert_same_state(before, full_state(model))


@pytest.mark.parametrize("rows", [1, 4, 9], ids=["1-row", "4-rows", "9-rows"])
def test_non_finite_rows_in_the_models_dtype_are_refused_and_out_kept(rows):
    """A C-contiguous batch in the model's dtype skips the Python checks; the serving
    kernel counts its NaN and Inf and leaves `out` as it was (few-row and BLAS paths)."""
    model = trained()
    before = full_state(model)
    X = np.random.default_rng(2).normal(size=(rows, N)).astype(np.float32)
    X[-1, 0], X[0, -1] = np.nan, -np.inf
    out = np.full((rows, 3), 7.0, dtype=np.float32)
    with pytest.raises(EngineError, match="X must be finite; got 2 NaN or Inf values"):
        model.predict_proba(X, out=out)
    assert np.all(out == 7.0)
    assert_same_state(before, full_state(model))
    X[-1, 0], X[0, -1] = 0.5, 0.5
    assert np.allclose(model.predict_proba(X).sum(axis=1), 1.0, atol=1e-6)


def test_prediction_before_any_data_and_bad_out_buffer():
    with pytest.raises(EngineError, match="has not seen data yet"):
        Model(hidden=(3,)).predict(np.ones((2, 4)))
    model = trained()
    X = good_X()
    for out in (np.empty((M, 2), np.float32), np.empty((M, 3), np.float64),
                np.empty((3, M), np.float32).T):
        with pytest.raises(EngineError, match=r"out must be a C-contiguous float32 array of shape \(6, 3\)"):
            model.predict_proba(X, out=out)
    out = np.empty((M, 3), np.float32)
    assert model.predict_proba(X, out=out) is out
    assert np.array_equal(out, model.predict_proba(X))


@pytest.mark.parametrize("settings, message", [
    (dict(activation="softplus"), "activation must be one of relu, leaky_relu, tanh, sigmoid, linear"),
    (dict(activation=("relu",)), "activation gives 1 values for 2 hidden layers"),
    (dict(task="ranking"), "task must be one of"),
    (dict(task="multilabel"), "task 'multilabel' needs n_outputs"),
    (dict(task="binary", n_outputs=2), "task 'binary' has 1 output"),
    (dict(task="multiclass", n_outputs=1), "needs n_outputs >= 2"),
    (dict(n_outputs=0), "n_outputs must be a positive int"),
    (dict(n_outputs=2.5), "n_outputs must be a positive int"),
    (dict(input_dim=-3), "input_dim must be a positive int"),
    (dict(hidden=(4, 0)), "hidden layer sizes must be >= 1"),
    (dict(hidden="wide"), "hidden must be a sequence of layer sizes"),
    (dict(init="orthogonal"), "init must be one of he, xavier, glorot, random, zeros"),
    (dict(optimizer="lbfgs"), "optimizer must be one of sgd, momentum, rmsprop, adam"),
    (dict(dtype="float16"), "dtype must be one of float32, float64"),
    (dict(lr=0), "lr must be > 0"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(l2=-1), "l2 must be >= 0"),
    (dict(l1="a lot"), "l1 must be a finite number"),
    (dict(clip_norm=0), "clip_norm must be > 0"),
    (dict(beta1=1.0), r"beta1 must be in \[0.0, 1.0\)"),
    (dict(beta2=-0.1), "beta2 must be in"),
    (dict(bn_beta=1.0), "bn_beta must be in"),
    (dict(bn_eps=0), "bn_eps must be > 0"),
    (dict(eps=-1e-8), "eps must be > 0"),
    (dict(seed=-1), "seed must be a non-negative int"),
    (dict(seed=1.5), "seed must be a non-negative int"),
])
def test_bad_settings_are_refused_with_the_expectation(settings, message):
    with pytest.raises(EngineError, match=message):
        Model(**{"hidden": (4, 3), **settings})


def test_live_settings_are_checked_before_anything_changes():
    model = trained()
    before = full_state(model)
    spec_before = model.spec.to_dict()
    for settings, message in ((dict(lr=-1.0), "lr must be > 0"),
                              (dict(l2=float("inf")), "l2 must be a finite number"),
                              (dict(hidden=(8,)), r"cannot change \['hidden'\] on a live model"),
                              (dict(learning_rate=0.1), "live settings are lr, l2")):
        with pytest.raises(EngineError, match=message):
            model.set(**settings)
    assert model.spec.to_dict() == spec_before
    assert_same_state(before, full_state(model))
    model.set(lr=0.5, l2=0.01, clip_norm=1.0)
    assert model.learning_rate == 0.5 and model.spec.l2 == 0.01 and model.spec.clip_norm == 1.0


def test_engine_error_is_a_value_error():
    assert issubclass(EngineError, ValueError)
