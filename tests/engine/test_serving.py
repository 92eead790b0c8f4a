"""Serving weights (kernels.serving): the fold of batch norm and the input normalizer's
scale into W and b against a plain NumPy fold, the fused bias + activation pass against
the reference activations, and predictions from folded weights against the NumPy
reference network (unfolded, float64): equal up to rounding in float64, within the
documented tolerance in float32, also for inputs far from zero."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from learnd.engine import Model, Snapshot
from learnd.engine.ensemble import Ensemble
from learnd.engine.kernels.activations import ACTIVATIONS
from learnd.engine.kernels.serving import bias_activation, serving_layout

from . import reference as ref
from .helpers import ACTIVATIONS as ACTIVATION_NAMES
from .helpers import N_OUTPUTS, TASKS, batch, moved_model

# docs/performance.md quotes these: float32 predictions from folded weights against the
# unfolded float64 reference (the unfolded float32 pass measured 3e-7 and 5e-7 there).
FLOAT32_PROBA_ATOL = 2e-6
FLOAT32_VALUE_RTOL = 4e-6


def numpy_fold(model):
    """[(W', b')] per layer in float64, by the formulas in kernels/serving.py."""
    net = ref.Net(model.spec)
    P, S = ref.params64(model), ref.stats64(model)
    inv_scale = model.normalizer.inv_scale.astype(np.float64)
    layers = []
    for l in range(1, net.L + 1):
        W = P[f"W{l}"].copy()
        b = P.get(f"b{l}", np.zeros(W.shape[0])).copy()
        if net.is_bn(l):
            s = P[f"gamma{l}"] / np.sqrt(S[f"running_var{l}"] + net.bn_eps)
            W = W * s[:, None]
            b = s * (b - S[f"running_mean{l}"]) + P[f"beta{l}"]
        if l == 1:
            W = W * inv_scale[None, :]
        layers.append((W, b))
    return layers


def exact_proba(model, X):
    """The NumPy reference network in float64, unfolded, mapped to target units."""
    P = ref.predict_proba(ref.Net(model.spec), ref.params64(model), ref.stats64(model), X,
                          model.normalizer.shift.astype(np.float64),
                          model.normalizer.inv_scale.astype(np.float64))
    return P * model.targets.out_scale.astype(np.float64) + model.targets.out_shift.astype(np.float64)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_the_fold_matches_numpy(rng, batch_norm):
    model = moved_model("tanh", "multiclass", batch_norm, rng, steps=5)
    snap = model.snapshot()
    table, n = serving_layout(model.network.layout.infer_table)
    assert np.array_equal(snap.served, table) and snap.folded.size == n
    for l, (W, b) in enumerate(numpy_fold(model)):
        n_out, n_in = W.shape
        w0, b0 = int(table[l, 2]), int(table[l, 3])
        assert_allclose(snap.folded[w0:w0 + n_out * n_in].reshape(n_out, n_in), W, rtol=1e-12, atol=1e-14)
        assert_allclose(snap.folded[b0:b0 + n_out], b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ACTIVATION_NAMES)
def test_bias_activation_matches_the_reference(rng, kind):
    Z = rng.normal(size=(7, 5)) * 3
    b = rng.normal(size=5)
    out = Z.copy()
    bias_activation(out, b, ACTIVATIONS[kind])
    assert_allclose(out, ref.act_forward(kind, Z + b), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_folded_predictions_equal_the_unfolded_ones_in_float64(rng, activation, task, batch_norm):
    model = moved_model(activation, task, batch_norm, rng, steps=5,
                        normalize_targets=task == "regression")
    X, _ = batch(task, 9, 5, rng, scale=2.0, offset=1.0)
    P = model.predict_proba(X)
    assert_allclose(P, exact_proba(model, X), rtol=1e-11, atol=1e-13)
    snap = model.snapshot()
    out = np.empty_like(P)
    assert np.array_equal(snap.predict_into(X, out, snap.new_workspace()), P)


@pytest.mark.parametrize("offset", [40.0, 2e4], ids=["offset-40", "offset-2e4"])
@pytest.mark.parametrize("task", TASKS)
def test_float32_folded_predictions_stay_within_the_documented_tolerance(rng, task, offset):
    """A digits-sized network with batch norm, on inputs far from zero relative to their
    spread (5): the shift is subtracted before the first layer, never folded into it."""
    K = N_OUTPUTS[task]
    model = Model(hidden=(128, 64), task=task, n_outputs=K, batch_norm=True, dtype="float32", seed=5,
                  normalize_targets=task == "regression")
    for _ in range(30):
        X, y = batch(task, 64, 64, rng, scale=5.0, offset=offset)
        model.partial_fit(X, y)
    X, _ = batch(task, 500, 64, rng, scale=5.0, offset=offset)
    folded, exact = model.predict_proba(X.astype(np.float32)), exact_proba(model, X.astype(np.float32))
    if task == "regression":
        assert np.abs(folded - exact).max() <= FLOAT32_VALUE_RTOL * np.abs(exact).max()
    else:
        assert np.abs(folded - exact).max() <= FLOAT32_PROBA_ATOL


def test_training_and_direct_writes_refold(rng):
    model = moved_model("relu", "binary", True, rng, steps=2)
    X, y = batch("binary", 8, 5, rng)
    before = model.predict_proba(X)
    model.partial_fit(X, y)
    after = model.predict_proba(X)
    assert not np.array_equal(before, after)
    assert_allclose(after, exact_proba(model, X), rtol=1e-11, atol=1e-13)
    model.rehearse(X, y)
    assert_allclose(model.predict_proba(X), exact_proba(model, X), rtol=1e-11, atol=1e-13)
    # Writing the parameters directly is seen once refold() is called.
    model.network.params["W1"][...] *= 2.0
    model.refold()
    assert_allclose(model.predict_proba(X), exact_proba(model, X), rtol=1e-11, atol=1e-13)


def test_the_buffer_carries_the_folded_weights_and_the_ensemble_averages_them(rng):
    models = [moved_model("tanh", "multiclass", bn, rng, steps=3, seed=s)
              for s, bn in ((1, True), (2, False))]
    X, _ = batch("multiclass", 6, 5, rng)
    snaps = [m.snapshot() for m in models]
    for model, snap in zip(models, snaps):
        back = Snapshot.from_buffer(snap.to_bytes())
        assert np.array_equal(back.folded, snap.folded) and np.array_equal(back.served, snap.served)
        out = np.empty((6, 3))
        assert np.array_equal(back.predict_into(X, out, back.new_workspace()), model.predict_proba(X))
    ens = Ensemble(snaps)
    out = np.empty((6, 3))
    ens.predict_into(X, out, ens.new_workspace())
    mean = (models[0].predict_proba(X) + models[1].predict_proba(X)) / 2
    assert_allclose(out, mean, rtol=1e-14, atol=1e-15)
