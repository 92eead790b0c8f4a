"""Augmentation: the kernels against NumPy references that replay the same draws, the
samplers' moments, and in the model: training rows only, reproducible, checkpointed."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from learnd.engine import EngineError, Model
from learnd.engine.kernels.augment import add_noise, mixup, shift_flip
from learnd.engine.kernels.rng import next_below, next_beta, next_gamma, next_normal, next_uniform, seed_state

from .helpers import assert_same_state, batch, full_state


def reference_shift_flip(X, shape, max_shift, flip, state):
    """np.pad(edge) and slicing, with the kernel's draws replayed from a copy of its state."""
    H, W, C = shape
    out = np.empty_like(X)
    for i in range(X.shape[0]):
        dy = next_below(state, 2 * max_shift + 1) - max_shift
        dx = next_below(state, 2 * max_shift + 1) - max_shift
        mirror = flip and next_uniform(state) < 0.5
        img = X[i].reshape(H, W, C)
        k = max_shift
        padded = np.pad(img, ((k, k), (k, k), (0, 0)), mode="edge")
        moved = padded[k - dy:k - dy + H, k - dx:k - dx + W]
        out[i] = (moved[:, ::-1] if mirror else moved).reshape(-1)
    return out


@pytest.mark.parametrize("shape", [(8, 8, 1), (5, 7, 3)])
@pytest.mark.parametrize("flip", [False, True])
def test_shift_flip_matches_the_reference(rng, shape, flip):
    X = rng.normal(size=(30, int(np.prod(shape))))
    out = np.empty_like(X)
    state = seed_state(4)
    expected = reference_shift_flip(X, shape, 2, flip, state.copy())
    shift_flip(X, shape[0], shape[1], shape[2], 2, flip, state, out)
    assert np.array_equal(out, expected)
    moved = np.any(out != X, axis=1).mean()
    assert moved > 0.8               # with shifts in [-2, 2]^2 only 1 in 25 rows stays put


def test_mixup_matches_the_reference_and_keeps_one_hot_rows_summing_to_one(rng):
    X = rng.normal(size=(50, 6))
    Y = np.eye(4)[rng.integers(0, 4, size=50)]
    out, Y_out = np.empty_like(X), np.empty_like(Y)
    state = seed_state(8)
    replay = state.copy()
    mixup(X, Y, 0.4, state, out, Y_out)
    for i in range(50):
        j = next_below(replay, 50)
        lam = next_beta(replay, 0.4, 0.4)
        assert_allclose(out[i], lam * X[i] + (1 - lam) * X[j], rtol=1e-12)
        assert_allclose(Y_out[i], lam * Y[i] + (1 - lam) * Y[j], rtol=1e-12)
    assert_allclose(Y_out.sum(axis=1), 1.0)
    assert np.array_equal(state, replay)


def test_noise_is_gaussian_in_normalized_units(rng):
    X = rng.normal(size=(20000, 3)) * np.array([1.0, 100.0, 0.01])
    inv_scale = 1.0 / X.std(axis=0)
    out = np.empty_like(X)
    add_noise(X, inv_scale, 0.3, seed_state(2), out)
    z = (out - X) * inv_scale
    assert_allclose(z.mean(axis=0), 0.0, atol=0.01)
    assert_allclose(z.std(axis=0), 0.3, rtol=0.02)


def test_samplers_have_the_right_moments():
    state = seed_state(3)
    normal = np.array([next_normal(state) for _ in range(40000)])
    assert abs(normal.mean()) < 0.02 and abs(normal.std() - 1) < 0.02
    for shape in (0.3, 2.5):
        g = np.array([next_gamma(state, shape) for _ in range(40000)])
        assert abs(g.mean() - shape) < 0.03 * max(shape, 1) and abs(g.var() - shape) < 0.06 * max(shape, 1)
    a = 0.4
    b = np.array([next_beta(state, a, a) for _ in range(40000)])
    assert abs(b.mean() - 0.5) < 0.01
    assert abs(b.var() - 1 / (4 * (2 * a + 1))) < 0.01      # Beta(a, a): 1 / (4 (2a + 1))


AUGMENTED = dict(input_shape=(4, 4), augment_shift=1, augment_flip=True, augment_mixup_alpha=0.3,
                 augment_noise_std=0.2)


def model_with(**kw):
    return Model(hidden=(10,), task="multiclass", n_outputs=3, dtype="float64", seed=4, **kw)


def test_only_training_rows_are_augmented(rng):
    augmented, plain = model_with(**AUGMENTED), model_with()
    for _ in range(5):
        X, y = batch("multiclass", 16, 16, rng)
        X_copy = X.copy()
        augmented.partial_fit(X, y)
        assert np.array_equal(X, X_copy)        # the caller's rows are not written
    plain_state = augmented.get_state()
    plain_state["meta"]["spec"].update({k: v for k, v in model_with().spec.to_dict().items()
                                        if k in AUGMENTED})
    plain = Model.from_state(plain_state)
    X, y = batch("multiclass", 40, 16, rng)
    X_copy = X.copy()
    # Held-out and predict rows: the same outputs as the same weights without augmentation.
    assert np.array_equal(augmented.predict_proba(X), plain.predict_proba(X))
    assert augmented.evaluate(X, y) == plain.evaluate(X, y)
    assert np.array_equal(augmented.adversarial(X, y, 0.1), plain.adversarial(X, y, 0.1))
    assert np.array_equal(X, X_copy)
    # The step's outputs for progressive validation are those of the rows as given.
    before = augmented.predict_proba(X[:16])
    augmented.partial_fit(X[:16], y[:16])
    assert np.array_equal(augmented.last_batch_outputs(), before)


def test_augmentation_changes_what_the_step_learns(rng):
    augmented, plain = model_with(**AUGMENTED), model_with()
    X, y = batch("multiclass", 16, 16, rng)
    assert augmented.partial_fit(X, y) != plain.partial_fit(X, y)
    assert not np.array_equal(augmented.params["W1"], plain.params["W1"])


def test_augmentation_is_reproducible_and_resumes_from_a_checkpoint(rng, tmp_path):
    a, b = model_with(**AUGMENTED), model_with(**AUGMENTED)
    batches = [batch("multiclass", 16, 16, rng) for _ in range(8)]
    for X, y in batches[:4]:
        a.partial_fit(X, y)
        b.partial_fit(X, y)
    assert_same_state(full_state(a), full_state(b))
    a.save(tmp_path / "a.npz")
    resumed = Model.load(tmp_path / "a.npz")
    for X, y in batches[4:]:
        a.partial_fit(X, y)
        resumed.partial_fit(X, y)
    assert_same_state(full_state(a), full_state(resumed))


def test_image_settings_are_validated():
    with pytest.raises(EngineError, match="need input_shape"):
        model_with(augment_shift=2)
    with pytest.raises(EngineError, match="input_shape"):
        model_with(input_shape=(8,))
    with pytest.raises(EngineError, match="smaller than the image"):
        model_with(input_shape=(4, 4), augment_shift=4)
    with pytest.raises(EngineError, match="holds 64 values"):
        model_with(input_shape=(8, 8), input_dim=10)
    model = model_with(input_shape=(8, 8), augment_shift=1)
    with pytest.raises(EngineError, match="holds 64 values"):
        model.partial_fit(np.zeros((4, 10)), [0, 1, 2, 0])
    with pytest.raises(EngineError, match="augment_noise_std"):
        model_with(augment_noise_std=-1)
