"""The few-row serving path (kernels.gemv) and half-precision serving weights.

small_dense against a plain NumPy product, for float32, float64 and half weights; the
half widening against NumPy's float16 for every one of the 65536 bit patterns; the
half copy against NumPy's rounding; and a model served in half against the same model
served exact, within the tolerance docs/performance.md quotes."""
import numpy as np
import pytest
from numba import njit

from learnd.engine import Model, Snapshot
from learnd.engine.datasets import split
from learnd.engine.ensemble import Ensemble, snapshot_from_buffer
from learnd.engine.errors import EngineError
from learnd.engine.kernels.gemv import SMALL_BATCH, half_bits_to_float32, small_dense
from learnd.engine.kernels.network import N_IN, N_OUT, OFF_B, OFF_W
from learnd.engine.kernels.serving import half_copy, serving_layout

# docs/performance.md quotes these: a digits network served in half against the same
# network served exact (the measured figures are several times smaller).
HALF_PROBA_ATOL = 2e-3
HALF_CLASS_AGREEMENT = 0.995


@njit(cache=True)
def widen_all(bits, out):
    for i in range(bits.shape[0]):
        out[i] = half_bits_to_float32(bits[i])


def test_half_widening_is_exact_for_every_bit_pattern():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = np.empty(65536, dtype=np.float32)
    widen_all(bits, got)
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))  # -0.0 too


@pytest.mark.parametrize("weights", ["float32", "float64", "half"])
@pytest.mark.parametrize("n_out", [1, 3, 4, 5, 13])
@pytest.mark.parametrize("n_in", [1, 7, 64])
def test_small_dense_matches_numpy(rng, weights, n_out, n_in):
    dtype = np.float64 if weights == "float64" else np.float32
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    if weights == "half":
        W16 = W.astype(np.float16)
        W, W_kernel = W16.astype(np.float32), W16.view(np.uint16)
    else:
        W_kernel = W
    for m in range(1, SMALL_BATCH + 1):
        A = rng.standard_normal((m, n_in)).astype(dtype)
        Z = np.full((m, n_out), np.nan, dtype=dtype)
        small_dense(W_kernel, A, Z)
        exact = A.astype(np.float64) @ W.astype(np.float64).T
        # Sums in another order than NumPy's: rounding of the size of the terms' sum.
        bound = np.abs(A).astype(np.float64) @ np.abs(W).astype(np.float64).T
        eps = np.finfo(dtype).eps
        assert np.all(np.abs(Z - exact) <= 2 * n_in * eps * bound + 1e-30)


def test_half_copy_rounds_weights_to_nearest_and_leaves_biases(rng):
    table = np.array([[5, 3, -1, -1, 0, 1], [3, 2, -1, -1, 0, 2]], dtype=np.int64)
    infer = np.full((2, 16), -1, dtype=np.int64)
    infer[:, :table.shape[1]] = table
    served, n = serving_layout(infer)
    folded = rng.standard_normal(n).astype(np.float32)
    before = folded.copy()
    half = half_copy(folded, served)
    assert half.dtype == np.uint16 and half.shape == folded.shape
    for l in range(2):
        w0, b0 = served[l, OFF_W], served[l, OFF_B]
        nw, nb = served[l, N_IN] * served[l, N_OUT], served[l, N_OUT]
        rounded = before[w0:w0 + nw].astype(np.float16)
        assert np.array_equal(half[w0:w0 + nw], rounded.view(np.uint16))
        assert np.array_equal(folded[w0:w0 + nw], rounded.astype(np.float32))
        assert np.array_equal(folded[b0:b0 + nb], before[b0:b0 + nb])
    # A weight beyond half's range: no half copy, and the weights untouched.
    folded = before.copy()
    folded[served[1, OFF_W]] = 7e4
    kept = folded.copy()
    assert half_copy(folded, served).shape == (0,)
    assert np.array_equal(folded, kept)


@pytest.fixture(scope="module")
def digits_pair():
    """The same digits network trained once and served exact and in half."""
    X, y, Xh, yh = split("digits")
    kw = dict(hidden=(128, 64), task="multiclass", n_outputs=10, batch_norm=True, seed=3)
    exact, half = Model(**kw), Model(serving_precision="half", **kw)
    for _ in range(3):
        for i in range(0, len(X) - 63, 64):
            exact.partial_fit(X[i:i + 64], y[i:i + 64])
            half.partial_fit(X[i:i + 64], y[i:i + 64])
    return exact, half, Xh, yh


def test_half_serving_stays_within_the_documented_tolerance(digits_pair):
    exact, half, Xh, yh = digits_pair
    assert half.serving_half and not exact.serving_half
    P_exact = exact.predict_proba(Xh)
    P_rows = np.concatenate([half.predict_proba(Xh[i:i + 1]) for i in range(len(Xh))])
    P_batch = half.predict_proba(Xh)
    # Training is exact: both models hold the same parameters.
    assert np.array_equal(exact.network.flat_params, half.network.flat_params)
    assert np.abs(P_rows - P_exact).max() <= HALF_PROBA_ATOL
    assert (P_rows.argmax(1) == P_exact.argmax(1)).mean() >= HALF_CLASS_AGREEMENT
    # One row at a time (half weights) and whole batches (the same values in float32)
    # differ by float32 rounding only.
    assert np.abs(P_rows - P_batch).max() <= 1e-5


def test_half_weights_travel_in_snapshots_and_ensembles(digits_pair):
    exact, half, Xh, _ = digits_pair
    x = Xh[:3]
    snap = half.snapshot()
    assert snap.folded_half.shape == snap.folded.shape
    back = Snapshot.from_buffer(snap.to_bytes())
    assert np.array_equal(back.folded_half, snap.folded_half)
    out = np.empty((3, 10), dtype=np.float32)
    assert np.array_equal(back.predict_into(x, out, back.new_workspace()), half.predict_proba(x))
    # An ensemble serves half only when every member does.
    both = Ensemble([snap, half.snapshot()])
    assert both.folded_half.shape == both.folded.shape
    mixed = Ensemble([snap, exact.snapshot()])
    assert mixed.folded_half.shape == (0,)
    for ens in (both, mixed):
        again = snapshot_from_buffer(ens.to_bytes())
        out_a, out_b = np.empty((3, 10), np.float32), np.empty((3, 10), np.float32)
        ens.predict_into(x, out_a, ens.new_workspace())
        again.predict_into(x, out_b, again.new_workspace())
        assert np.array_equal(out_a, out_b)
    ens_out = np.empty((3, 10), np.float32)
    both.predict_into(x, ens_out, both.new_workspace())
    assert np.abs(ens_out - half.predict_proba(x)).max() <= 1e-6


def test_a_weight_beyond_half_range_serves_exact(digits_pair):
    _, half, Xh, _ = digits_pair
    model = Model(hidden=(8,), task="multiclass", n_outputs=10, serving_precision="half", seed=1)
    model.partial_fit(Xh[:32], np.arange(32) % 10)
    assert model.serving_half
    model.network.params["W2"][0, 0] = 1e5
    model.refold()
    assert not model.serving_half
    exact = Model(hidden=(8,), task="multiclass", n_outputs=10, seed=1)
    exact.partial_fit(Xh[:32], np.arange(32) % 10)
    exact.network.params["W2"][0, 0] = 1e5
    exact.refold()
    assert np.array_equal(model.predict_proba(Xh[:2]), exact.predict_proba(Xh[:2]))


def test_serving_precision_is_validated():
    with pytest.raises(EngineError, match="serving_precision"):
        Model(serving_precision="quarter")
