"""State: get_state / from_state / save / load resume bit for bit; unreadable files raise
EngineError; a non-finite step changes nothing and is counted; snapshots are immutable."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

from learnd.engine import EngineError, Model, Snapshot

from .helpers import OPTIMIZERS, assert_same_state, batch, full_state


def rich_model(optimizer="adam", dtype="float32", **kw):
    """Every kind of state at once: BN running stats, dropout RNG, normalizer, moments,
    a schedule that depends on samples_seen."""
    settings = dict(hidden=(12, 8), activation=("relu", "tanh"), task="multiclass", n_outputs=4,
                    batch_norm=True, keep_prob=(0.8, 0.6), l2=1e-3, optimizer=optimizer,
                    lr=0.01, schedule="inverse_time", decay_rate=0.5, epoch_size=50,
                    dtype=dtype, seed=9)
    settings.update(kw)
    return Model(**settings)


def stream(rng, n, m=10):
    return [batch("multiclass", m, 5, rng, n_outputs=4, scale=3.0, offset=1.0) for _ in range(n)]


def continue_and_compare(original, restored, batches):
    for X, y in batches:
        assert original.partial_fit(X, y) == restored.partial_fit(X, y)
        assert_same_state(full_state(original), full_state(restored))
    X = batches[0][0]
    assert np.array_equal(original.predict_proba(X), restored.predict_proba(X))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_from_state_continues_bit_for_bit(rng, optimizer):
    model = rich_model(optimizer)
    for X, y in stream(rng, 7):
        model.partial_fit(X, y)
    state = model.get_state()
    restored = Model.from_state(state)
    assert_same_state(full_state(model), full_state(restored))
    continue_and_compare(model, restored, stream(rng, 6))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_and_load_continue_bit_for_bit(tmp_path, rng, dtype):
    model = rich_model(dtype=dtype)
    for X, y in stream(rng, 6):
        model.partial_fit(X, y)
    model.nonfinite_steps = 2                  # counters travel too
    path = tmp_path / "model.npz"
    model.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]     # no temporary left
    loaded = Model.load(path)
    assert loaded.nonfinite_steps == 2 and loaded.samples_seen == model.samples_seen
    assert loaded.learning_rate == model.learning_rate
    assert_same_state(full_state(model), full_state(loaded))
    continue_and_compare(model, loaded, stream(rng, 5))


def test_state_before_any_data_round_trips(tmp_path, rng):
    model = rich_model()
    model.save(tmp_path / "fresh.npz")
    loaded = Model.load(tmp_path / "fresh.npz")
    assert loaded.network is None
    continue_and_compare(model, loaded, stream(rng, 3))


def test_get_state_is_a_copy(rng):
    model = rich_model()
    for X, y in stream(rng, 2):
        model.partial_fit(X, y)
    before = full_state(model)
    state = model.get_state()
    for group in ("param", "stat", "opt", "norm"):
        for arr in state[group].values():
            arr[...] = 0
    state["rng"][...] = 0
    assert_same_state(before, full_state(model))


@pytest.fixture
def saved(tmp_path, rng):
    model = rich_model()
    for X, y in stream(rng, 3):
        model.partial_fit(X, y)
    path = tmp_path / "model.npz"
    model.save(path)
    return path


def _rewrite(path, edit):
    """Re-zip the .npz after edit(dict of member bytes)."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    edit(members)
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


def _npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _set_meta(members, **changes):
    meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
    meta.update(changes)
    members["meta.npy"] = _npy(np.array(json.dumps(meta)))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "no_meta", "wrong_format",
                                    "wrong_version", "bad_json", "wrong_shape", "missing_array",
                                    "missing_moment"])
def test_unreadable_model_file_raises_engine_error(saved, damage):
    data = saved.read_bytes()
    if damage == "truncated":
        saved.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        saved.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        saved.write_bytes(b"")
    elif damage == "no_meta":
        _rewrite(saved, lambda m: m.pop("meta.npy"))
    elif damage == "wrong_format":
        _rewrite(saved, lambda m: _set_meta(m, format="something.else"))
    elif damage == "wrong_version":
        _rewrite(saved, lambda m: _set_meta(m, version=99))
    elif damage == "bad_json":
        _rewrite(saved, lambda m: m.update({"meta.npy": _npy(np.array("{not json"))}))
    elif damage == "wrong_shape":
        _rewrite(saved, lambda m: m.update({"param/W1.npy": _npy(np.zeros((3, 3), np.float32))}))
    elif damage == "missing_array":
        _rewrite(saved, lambda m: m.pop("stat/running_var2.npy"))
    elif damage == "missing_moment":
        _rewrite(saved, lambda m: m.pop("opt/v.npy"))
    with pytest.raises(EngineError):
        Model.load(saved)


def _damage_state(state, damage):
    if damage == "no counters":
        del state["meta"]["counters"]
    elif damage == "no spec":
        del state["meta"]["spec"]
    elif damage == "bad spec":
        state["meta"]["spec"]["activation"] = "softplus"
    elif damage == "rng shape":
        state["rng"] = state["rng"][:3]
    elif damage == "normalizer shape":
        state["norm"]["mean"] = np.zeros(7)
    elif damage == "moment shape":
        state["opt"]["v"] = state["opt"]["v"][:5]
    elif damage == "param of strings":
        state["param"]["W1"] = np.full(state["param"]["W1"].shape, "x")
    elif damage == "step count not a number":
        state["meta"]["optimizer_t"] = "three"
    elif damage == "missing moment":
        del state["opt"]["s"]
    elif damage == "extra array":
        state["param"]["W9"] = np.zeros(3)


@pytest.mark.parametrize("damage", ["no counters", "no spec", "bad spec", "rng shape",
                                    "normalizer shape", "moment shape", "param of strings",
                                    "step count not a number", "missing moment", "extra array"])
def test_inconsistent_state_raises_engine_error(rng, damage):
    model = rich_model()
    for X, y in stream(rng, 2):
        model.partial_fit(X, y)
    state = model.get_state()
    _damage_state(state, damage)
    with pytest.raises(EngineError):
        Model.from_state(state)


def test_inconsistent_file_raises_engine_error(saved):
    _rewrite(saved, lambda m: _set_meta(m, counters=None))
    with pytest.raises(EngineError, match="not a usable learnd model state"):
        Model.load(saved)


# -- non-finite steps --------------------------------------------------------------------------
def _bad_batch(kind, model, rng):
    X, y = rng.normal(size=(8, 5)), rng.normal(size=8)
    if kind == "gradient":
        y[:] = 3e38         # J (summed in float64) stays finite; the float32 gradient overflows
    elif kind == "loss":
        X[2, :] = 3e38 * np.sign(model.params["W1"][0])   # normalization off: Z1 overflows
    else:
        X[2, 1] = 5e19      # J and gradient finite, but the float32 batch variance overflows
    return X, y


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("kind", ["gradient", "loss", "batch_stats"])
def test_non_finite_step_changes_nothing_and_is_counted(rng, optimizer, kind):
    # (linear hidden units for "loss": relu maps NaN to 0 and would hide the overflow
    # from J, leaving only the gradient to catch it)
    model = Model(hidden=(6, 4), task="regression", keep_prob=0.7, optimizer=optimizer,
                  dtype="float32", seed=2, init="he", lr=1e-3, normalize_inputs=kind == "gradient",
                  batch_norm=kind != "loss", activation="linear" if kind == "loss" else "relu")
    good = [batch("regression", 8, 5, rng, n_outputs=1) for _ in range(4)]
    for X, y in good[:2]:
        model.partial_fit(X, y)
    twin = Model.from_state(model.get_state())
    before = full_state(model)
    loss = model.partial_fit(*_bad_batch(kind, model, rng))
    assert np.isfinite(loss) == (kind != "loss")
    assert model.nonfinite_steps == 1
    after = full_state(model)
    after["meta"]["counters"]["nonfinite_steps"] = 0
    assert_same_state(before, after)       # params, stats, moments, t, normalizer, rng
    # and training goes on exactly as if the bad batch had never come
    for X, y in good[2:]:
        assert model.partial_fit(X, y) == twin.partial_fit(X, y)
    twin.nonfinite_steps = 1
    assert_same_state(full_state(model), full_state(twin))
    assert np.all(np.isfinite(model.predict_proba(good[0][0])))


def test_non_finite_from_a_huge_weight_changes_nothing(rng):
    model = Model(hidden=(4,), task="regression", dtype="float64", batch_norm=False, seed=3,
                  input_dim=5)
    model.partial_fit(*batch("regression", 8, 5, rng, n_outputs=1))
    model.params["W2"][0, 0] = 1e200               # the output overflows when squared
    before = full_state(model)
    loss = model.partial_fit(*batch("regression", 8, 5, rng, n_outputs=1))
    assert not np.isfinite(loss) and model.nonfinite_steps == 1
    before["meta"]["counters"]["nonfinite_steps"] = 1
    assert_same_state(before, full_state(model))


# -- snapshots ---------------------------------------------------------------------------------
def test_snapshot_is_immutable_and_independent_of_later_training(rng):
    model = rich_model()
    batches = stream(rng, 4)
    for X, y in batches[:2]:
        model.partial_fit(X, y)
    snap = model.snapshot(version=7)
    assert isinstance(snap, Snapshot) and snap.version == 7
    X = batches[0][0].astype(np.float32)
    expected = model.predict_proba(X)
    work = snap.new_workspace()
    out = np.empty_like(expected)
    assert np.array_equal(snap.predict_into(X, out, work), expected)
    for X2, y2 in batches[2:]:
        model.partial_fit(X2, y2)
    assert not np.array_equal(model.predict_proba(X), expected)
    assert np.array_equal(snap.predict_into(X, out, work), expected)
    with pytest.raises(ValueError):
        snap.params[0] = 1.0
    with pytest.raises(EngineError, match="not seen data"):
        Model(hidden=(3,)).snapshot()
