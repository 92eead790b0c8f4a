"""Standardized regression targets (normalize_targets): the head's Pop-Art rescale keeps
every answer, outputs leave the model in target units everywhere, state round-trips."""
import numpy as np
import pytest

from learnd import Model
from learnd.engine.ensemble import Ensemble
from learnd.engine.network import Snapshot


def stream(n=1024, seed=0):
    """Targets around 400 with a spread of ~50: far from the z-scores a net starts at."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = 400.0 + 50.0 * np.tanh(X[:, 0] + 0.5 * X[:, 1]) + 10.0 * X[:, 2]
    return X, y


def regression(**kw):
    return Model(hidden=(16,), task="regression", normalize_targets=True, **kw)


def test_a_rescale_of_the_head_leaves_every_answer_as_it_was():
    X, y = stream()
    model = regression(normalize_inputs=False, dtype="float64", seed=1)
    model.partial_fit(X[:64], y[:64])
    before = model.predict_proba(X[:100]).copy()
    # New targets with another mean and spread: stage and commit them without a step.
    model.targets.stage(y[64:128, None] * 3.0 - 100.0, preserve=True)
    model.targets.commit()
    assert not np.allclose(model.targets.out_shift, before.mean())   # the statistics moved
    np.testing.assert_allclose(model.predict_proba(X[:100]), before, rtol=1e-12, atol=1e-9)


def test_standardized_targets_learn_a_target_far_from_zero_in_few_steps():
    X, y = stream(4096)

    def late_mse(normalize):
        model = Model(hidden=(16,), task="regression", normalize_targets=normalize, seed=2)
        errors = []
        for i in range(0, len(X), 64):
            if i >= len(X) - 640:
                errors.append(np.mean((model.predict(X[i:i + 64])[:, 0] - y[i:i + 64]) ** 2))
            model.partial_fit(X[i:i + 64], y[i:i + 64])
        return float(np.mean(errors))

    plain, standardized = late_mse(False), late_mse(True)
    # The plain net is still walking its output towards 400 after 64 steps.
    assert standardized < 200.0 < 10_000.0 < plain, (standardized, plain)


def test_gradients_check_with_standardized_targets():
    X, y = stream(200)
    model = regression(dtype="float64", seed=3)
    for i in range(0, 192, 64):
        model.partial_fit(X[i:i + 64], y[i:i + 64])
    report = model.gradient_check(X[:32], y[:32])
    assert report.overall < 1e-7, report


def test_last_batch_outputs_are_in_target_units():
    X, y = stream(256)
    model = regression(dtype="float64", seed=4)
    model.partial_fit(X[:64], y[:64])
    before = model.predict_proba(X[64:128]).copy()
    model.partial_fit(X[64:128], y[64:128])
    # No dropout, no batch norm: the step's forward pass is predict_proba before it, up to
    # the input normalizer's new statistics, which include this batch.
    outputs = model.last_batch_outputs()
    assert abs(float(outputs.mean()) - float(y[64:128].mean())) < 3 * y.std()
    assert np.corrcoef(outputs[:, 0], before[:, 0])[0, 1] > 0.9


def test_snapshots_and_ensembles_answer_in_target_units():
    X, y = stream(512)
    models = []
    for seed, offset in ((5, 0.0), (6, 1000.0)):
        model = regression(seed=seed)
        for i in range(0, 512, 64):
            model.partial_fit(X[i:i + 64], y[i:i + 64] + offset)
        models.append(model)
    Xq = X[:40].astype(np.float32)
    snaps = [m.snapshot() for m in models]
    for model, snap in zip(models, snaps):
        out = np.empty((40, 1), dtype=np.float32)
        snap.predict_into(Xq, out, snap.new_workspace())
        assert np.array_equal(out, model.predict_proba(Xq))
        again = Snapshot.from_buffer(snap.to_bytes())
        out2 = np.empty_like(out)
        again.predict_into(Xq, out2, again.new_workspace())
        assert np.array_equal(out, out2)
    ens = Ensemble(snaps)
    out = np.empty((40, 1), dtype=np.float32)
    ens.predict_into(Xq, out, ens.new_workspace())
    expected = (models[0].predict_proba(Xq) + models[1].predict_proba(Xq)) / 2
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert 800.0 < float(out.mean()) < 1000.0        # (400 + 1400) / 2, in target units


def test_the_state_holds_the_target_statistics_and_resumes_exactly():
    X, y = stream(512)
    model = regression(seed=7)
    for i in range(0, 256, 64):
        model.partial_fit(X[i:i + 64], y[i:i + 64])
    twin = Model.from_state(model.get_state())
    assert np.array_equal(twin.predict_proba(X[:50]), model.predict_proba(X[:50]))
    for i in range(256, 512, 64):
        assert model.partial_fit(X[i:i + 64], y[i:i + 64]) == twin.partial_fit(X[i:i + 64], y[i:i + 64])
    assert np.array_equal(twin.predict_proba(X[:50]), model.predict_proba(X[:50]))


def test_a_state_written_without_target_statistics_loads_as_none_seen():
    X, y = stream(128)
    model = Model(hidden=(4,), task="regression", seed=8)
    model.partial_fit(X[:64], y[:64])
    state = model.get_state()
    del state["target"], state["meta"]["target_count"]
    old = Model.from_state(state)
    assert np.array_equal(old.predict_proba(X[:20]), model.predict_proba(X[:20]))


def test_a_refused_step_leaves_head_and_statistics_as_they_were():
    X, y = stream(128)
    model = regression(normalize_inputs=False, seed=9)
    model.partial_fit(X[:64], y[:64])
    params = {k: v.copy() for k, v in model.params.items()}
    scale, shift = model.targets.out_scale.copy(), model.targets.out_shift.copy()
    huge = np.full((8, 6), 3e38, dtype=np.float32)           # overflows float32 in the forward pass
    model.partial_fit(huge, np.full(8, 1e6))
    assert model.nonfinite_steps == 1
    for k, v in model.params.items():
        assert np.array_equal(v, params[k]), k
    assert np.array_equal(model.targets.out_scale, scale) and np.array_equal(model.targets.out_shift, shift)


@pytest.mark.parametrize("task, y", [("binary", lambda X: (X[:, 0] > 0).astype(int)),
                                     ("multiclass", lambda X: (X[:, 0] > 0).astype(int) + (X[:, 1] > 0))])
def test_label_tasks_ignore_the_setting(task, y):
    X, _ = stream(256)
    kw = dict(hidden=(8,), task=task, n_outputs=None if task == "binary" else 3, seed=10)
    a, b = Model(normalize_targets=True, **kw), Model(**kw)
    for i in range(0, 256, 64):
        assert a.partial_fit(X[i:i + 64], y(X[i:i + 64])) == b.partial_fit(X[i:i + 64], y(X[i:i + 64]))
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
