"""Dense layers for a few rows at a time: the serving path of one-row predictions.

A BLAS GEMM call on one row is a matrix-vector product that BLAS runs one output at a
time: each output's dot product is a chain of dependent fused multiply-adds, so the core
waits on the adder's latency rather than on memory.  `small_dense` computes four outputs
at once, each with its own vector accumulators, which keeps both FMA units busy, and
pays no BLAS call.

Its weights are either the model's float dtype or IEEE half-precision bit patterns
(uint16; kernels.serving's half copy): a half weight is widened to float32 as it is
loaded (one F16C instruction per eight weights), so half the bytes cross the caches and
the arithmetic stays float32.  Numba has no float16 type on the CPU, hence the
intrinsic below that reinterprets the 16 bits and widens them.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

SMALL_BATCH = 4      # rows up to which serving runs small_dense instead of BLAS


@intrinsic
def half_bits_to_float32(typingctx, bits):
    """float32 value of the IEEE binary16 number whose bit pattern is `bits` (uint16):
    exact for every half value, subnormals, infinities and NaN included."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


def widen(w):
    """A weight as a number: half bits widened to float32, a float as it is."""
    return w


@overload(widen, jit_options={"nogil": True})
def _widen(w):
    if w == types.uint16:
        return lambda w: half_bits_to_float32(w)
    if isinstance(w, types.Float):
        return lambda w: w
    return None


def zero_of(a):
    """0 in the dtype of the float array a (numba otherwise types a literal 0.0 as float64)."""
    return a.dtype.type(0)


@overload(zero_of, jit_options={"nogil": True})
def _zero_of(a):
    if a.dtype == types.float32:
        return lambda a: np.float32(0.0)
    return lambda a: 0.0


# Reassociation lets LLVM split each dot product over vector lanes and several
# accumulators; "contract" lets it fuse the multiply and add.  Results differ from BLAS's
# by float rounding only (tests/engine/test_gemv.py).
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})
def small_dense(W, A, Z):
    """Z (m, n_out) = A (m, n_in) @ W.T for W (n_out, n_in), C-contiguous, of float
    values or half bit patterns (uint16); meant for m <= SMALL_BATCH."""
    m, n_in = A.shape
    n_out = W.shape[0]
    for i in range(m):
        a = A[i]
        j = 0
        while j + 4 <= n_out:
            s0 = zero_of(Z)
            s1 = zero_of(Z)
            s2 = zero_of(Z)
            s3 = zero_of(Z)
            for k in range(n_in):
                ak = a[k]
                s0 += widen(W[j, k]) * ak
                s1 += widen(W[j + 1, k]) * ak
                s2 += widen(W[j + 2, k]) * ak
                s3 += widen(W[j + 3, k]) * ak
            Z[i, j] = s0
            Z[i, j + 1] = s1
            Z[i, j + 2] = s2
            Z[i, j + 3] = s3
            j += 4
        while j < n_out:
            s = zero_of(Z)
            for k in range(n_in):
                s += widen(W[j, k]) * a[k]
            Z[i, j] = s
            j += 1
