"""The training step and the predict path allocate nothing once their buffers exist:
what tracemalloc sees is the interpreter's own small objects (call arguments, the
float returned), not a single array, so it does not grow with the batch."""
import tracemalloc

import numpy as np
import pytest

from learnd.engine import Model

LIMIT = 16_000   # bytes; one float32 batch of 1024 x 100 inputs is 409,600


def _peak_growth(fn, repeats=20):
    """Bytes allocated at the peak of `repeats` calls, above what was live before."""
    fn()
    fn()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(repeats):
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


@pytest.mark.parametrize("m", [128, 1024])
def test_partial_fit_and_predict_allocate_no_arrays(m):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, 100)).astype(np.float32)
    y = rng.integers(0, 10, m)
    w = rng.random(m)
    model = Model(hidden=(64, 32), task="multiclass", n_outputs=10, batch_norm=True,
                  keep_prob=0.8, l2=1e-4, clip_norm=1.0)
    assert _peak_growth(lambda: model.partial_fit(X, y)) < LIMIT
    assert _peak_growth(lambda: model.partial_fit(X, y, sample_weight=w)) < LIMIT
    out = np.empty((m, 10), dtype=np.float32)
    assert _peak_growth(lambda: model.predict_proba(X, out=out)) < LIMIT
    snap = model.snapshot()
    ws = snap.new_workspace()
    assert _peak_growth(lambda: snap.predict_into(X, out, ws)) < LIMIT


def test_augmented_and_adversarial_steps_allocate_no_arrays():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((256, 64)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    model = Model(hidden=(32,), task="multiclass", n_outputs=10, input_shape=(8, 8), augment_shift=1,
                  augment_flip=True, augment_mixup_alpha=0.2, augment_noise_std=0.1,
                  adversarial_epsilon=0.1, adversarial_fraction=0.5)
    assert _peak_growth(lambda: model.partial_fit(X, y)) < LIMIT
