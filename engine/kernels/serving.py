"""Serving weights: batch norm and the input normalizer's scale folded into each
layer's W and b.

At inference batch norm is an affine map per unit, Y = s (Z - running_mean) + beta with
s = gamma / sqrt(running_var + eps), and the input normalizer is an affine map per
feature, A0 = (X - shift) * inv_scale.  Both scales fold into the dense layer next to them:

    layer 1:  W1' = W1 * inv_scale (columns)
    a batch-norm layer:  W' = s * W (rows),  b' = s (b - running_mean) + beta

so serving is: X - shift into the input slot, then dense -> bias + activation per layer,
one pass over each layer's outputs and no square root per element.  The shift is not
folded into layer 1's bias: W1' x - W1' shift cancels in float32 when the inputs lie far
from zero (inputs around 1e4 with a spread of 1 lost three digits that way), while
subtracting it first keeps the unfolded pass's precision.  The folded values are
computed in float64 and stored in the model's dtype; predictions differ from the
unfolded pass by rounding only (tests/engine/test_serving.py bounds it).

The folded weights live in one flat buffer `folded` laid out by an int64 table with
the columns of kernels.network (N_IN, N_OUT, OFF_W, OFF_B, ACT, SLOT_Z): every layer
has a bias there, and no batch-norm columns are read.

With serving_precision "half", `half_copy` adds the layer weights as IEEE half bit
patterns in a buffer laid out like `folded`, and rounds `folded`'s weights to the same
values: predictions of a few rows (kernels.gemv) read half the bytes, batches run BLAS
on the same numbers in the model's dtype.
"""
import numpy as np
from numba import njit

from .activations import LEAKY_RELU, LEAKY_SLOPE, LINEAR, RELU, SIGMOID, TANH, sigmoid
from .blas import matmul_nt
from .gemv import SMALL_BATCH, small_dense
from .losses import head_output
from .network import (ACT, N_IN, N_OUT, OFF_B, OFF_BETA, OFF_GAMMA, OFF_RMEAN, OFF_RVAR, OFF_W, SLOT_INPUT,
                      SLOT_Z)

N_SERVE_COLUMNS = 6     # N_IN, N_OUT, OFF_W, OFF_B, ACT, SLOT_Z: the first columns used


def serving_layout(infer_table):
    """(table, n_values): the folded buffer's layout for a network's inference table
    (L, N_COLUMNS): each layer's W' (n_out, n_in) then b' (n_out,), packed in order;
    activation codes and workspace slots as the inference table has them."""
    table = np.full_like(infer_table, -1)
    off = 0
    for l in range(infer_table.shape[0]):
        n_in, n_out = int(infer_table[l, N_IN]), int(infer_table[l, N_OUT])
        table[l, N_IN], table[l, N_OUT] = n_in, n_out
        table[l, OFF_W] = off
        off += n_out * n_in
        table[l, OFF_B] = off
        off += n_out
        table[l, ACT] = infer_table[l, ACT]
        table[l, SLOT_Z] = infer_table[l, SLOT_Z]
    return table, off


@njit(cache=True, nogil=True, error_model="numpy")
def fold_for_serving(params, stats, layers, inv_scale, bn_eps, folded, served):
    """Fill `folded` (laid out by `served`, serving_layout's table) from the trained
    parameters `params`, running statistics `stats` (laid out by the inference table
    `layers`) and the input normalizer's inv_scale (n0,)."""
    for l in range(layers.shape[0]):
        n_in = layers[l, N_IN]
        n_out = layers[l, N_OUT]
        w = layers[l, OFF_W]
        fw = served[l, OFF_W]
        bn = layers[l, OFF_GAMMA] >= 0
        for j in range(n_out):
            bias = 0.0
            if layers[l, OFF_B] >= 0:
                bias = np.float64(params[layers[l, OFF_B] + j])
            scale = 1.0
            if bn:
                scale = np.float64(params[layers[l, OFF_GAMMA] + j]) / \
                    np.sqrt(np.float64(stats[layers[l, OFF_RVAR] + j]) + bn_eps)
                bias = scale * (bias - np.float64(stats[layers[l, OFF_RMEAN] + j])) + \
                    np.float64(params[layers[l, OFF_BETA] + j])
            src = params[w + j * n_in:w + (j + 1) * n_in]
            dst = folded[fw + j * n_in:fw + (j + 1) * n_in]
            if l == 0:
                for k in range(n_in):
                    dst[k] = np.float64(src[k]) * scale * np.float64(inv_scale[k])
            else:
                for k in range(n_in):
                    dst[k] = np.float64(src[k]) * scale
            folded[served[l, OFF_B] + j] = bias


HALF_MAX = float(np.finfo(np.float16).max)     # 65504


def no_half():
    """served_forward's `half` when serving exact: empty (a fresh array each time, as
    snapshots make their arrays read-only)."""
    return np.empty(0, dtype=np.uint16)


def fold_weights(params, stats, layers, inv_scale, bn_eps, folded, served, precision):
    """fold_for_serving, then the half copy when `precision` is "half": the one place
    that decides what a model or snapshot serves from.  Returns the `half` argument of
    served_forward (empty when serving exact)."""
    fold_for_serving(params, stats, layers, inv_scale, bn_eps, folded, served)
    return half_copy(folded, served) if precision == "half" else no_half()


def half_copy(folded, served):
    """The layer weights of `folded` as IEEE half bit patterns: uint16, laid out like
    `folded` (bias slots 0).  Rounds folded's weights to those same half values in place,
    so that BLAS on `folded` (many rows) and small_dense on the copy (few rows) compute
    with the same numbers.  Returns an empty array, leaving `folded` as it was, when a
    weight lies beyond half's range (|w| > 65504)."""
    spans = [(int(served[l, OFF_W]), int(served[l, OFF_W] + served[l, N_IN] * served[l, N_OUT]))
             for l in range(served.shape[0])]
    if any(np.abs(folded[lo:hi]).max() > HALF_MAX for lo, hi in spans):
        return no_half()
    half = np.zeros(folded.shape[0], dtype=np.float16)
    for lo, hi in spans:
        half[lo:hi] = folded[lo:hi]         # round to nearest even
        folded[lo:hi] = half[lo:hi]
    return half.view(np.uint16)


@njit(cache=True, nogil=True, error_model="numpy")
def bias_activation(Z, b, kind):
    """Z = g(Z + b) in place, one pass; the activation chosen once, outside the loops.
    Z: (m, n)  b: (n,)."""
    m, n = Z.shape
    if kind == RELU:
        for i in range(m):
            for j in range(n):
                z = Z[i, j] + b[j]
                Z[i, j] = z if z > 0 else 0.0
    elif kind == LEAKY_RELU:
        for i in range(m):
            for j in range(n):
                z = Z[i, j] + b[j]
                Z[i, j] = z if z > 0 else LEAKY_SLOPE * z
    elif kind == TANH:
        for i in range(m):
            for j in range(n):
                Z[i, j] = np.tanh(Z[i, j] + b[j])
    elif kind == SIGMOID:
        for i in range(m):
            for j in range(n):
                Z[i, j] = sigmoid(Z[i, j] + b[j])
    else:
        assert kind == LINEAR
        for i in range(m):
            for j in range(n):
                Z[i, j] += b[j]


@njit(cache=True, nogil=True, error_model="numpy")
def served_forward(X, shift, folded, half, served, head, out_scale, out_shift, work, cap, P):
    """Inference from folded weights: P (m, K) = the head's output of X (m, n0) raw
    inputs (any float dtype), mapped to target units as P * out_scale + out_shift (K,).
    shift: (n0,) the normalizer's.  work holds at least `cap` >= m rows of every slot
    of the inference layout: X - shift goes into the input slot, each layer computes in
    its Z slot.

    Up to SMALL_BATCH rows, each layer is kernels.gemv.small_dense; more rows go to
    BLAS.  `half` is empty, or the layer weights as half bit patterns laid out like
    `folded` (half_copy); the few-row path then reads those, and biases stay `folded`'s.

    Returns how many entries of X are NaN or +-Inf, counted in the pass that shifts
    them; when there are any, P is left as it was."""
    m = X.shape[0]
    L = served.shape[0]
    n0 = served[0, N_IN]
    A_prev = work[SLOT_INPUT * cap:SLOT_INPUT * cap + m * n0].reshape((m, n0))
    nonfinite = 0
    for i in range(m):
        for k in range(n0):
            v = X[i, k]
            A_prev[i, k] = v - shift[k]
            nonfinite += 0 if v - v == 0.0 else 1     # v - v is NaN exactly when v is NaN or +-Inf
    if nonfinite:
        return nonfinite
    for l in range(L):
        n_in = served[l, N_IN]
        n_out = served[l, N_OUT]
        o = served[l, SLOT_Z] * cap
        Z = work[o:o + m * n_out].reshape((m, n_out))
        fw = served[l, OFF_W]
        if m > SMALL_BATCH:
            matmul_nt(A_prev, folded[fw:fw + n_out * n_in].reshape((n_out, n_in)), Z)
        elif half.shape[0] > 0:
            small_dense(half[fw:fw + n_out * n_in].reshape((n_out, n_in)), A_prev, Z)
        else:
            small_dense(folded[fw:fw + n_out * n_in].reshape((n_out, n_in)), A_prev, Z)
        b = folded[served[l, OFF_B]:served[l, OFF_B] + n_out]
        if l < L - 1:
            bias_activation(Z, b, served[l, ACT])
            A_prev = Z
        else:
            bias_activation(Z, b, LINEAR)
            head_output(head, Z, P)
    for i in range(m):
        for c in range(P.shape[1]):
            P[i, c] = P[i, c] * out_scale[c] + out_shift[c]
    return 0


@njit(cache=True, nogil=True, error_model="numpy")
def ensemble_forward(X, shifts, folded, half, folded_offsets, served, table_offsets, head, out_scales,
                     out_shifts, work, cap, P_member, P):
    """The mean of k networks' head outputs for X (m, n0) into P (m, K), in one call.

    The k members are laid end to end: member j's serving weights are
    folded[folded_offsets[j]:folded_offsets[j + 1]], laid out by its table
    served[table_offsets[j]:table_offsets[j + 1]]; its normalizer's shift is shifts[j]
    (k, n0), its map to target units out_scales[j], out_shifts[j] (k, K).  Each member
    runs served_forward into P_member (m, K), with `work` holding `cap` rows of the
    widest member's units.  `half` is empty, or every member's half copy laid end to end
    as `folded`.
    """
    k = out_scales.shape[0]
    m, K = P.shape
    for i in range(m):
        for c in range(K):
            P[i, c] = 0.0
    for j in range(k):
        lo, hi = folded_offsets[j], folded_offsets[j + 1]
        served_forward(X, shifts[j], folded[lo:hi], half[lo:hi] if half.shape[0] > 0 else half,
                       served[table_offsets[j]:table_offsets[j + 1]], head, out_scales[j], out_shifts[j],
                       work, cap, P_member)
        for i in range(m):
            for c in range(K):
                P[i, c] += P_member[i, c]
    scale = 1.0 / k
    for i in range(m):
        for c in range(K):
            P[i, c] *= scale
