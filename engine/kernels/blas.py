"""Matrix products on the BLAS that NumPy ships: one BLAS, one thread pool per process.

Numba's np.dot calls the OpenBLAS that SciPy bundles; NumPy bundles an OpenBLAS of its
own.  Each keeps its own worker threads, and an idle OpenBLAS worker spins for a while
(about 0.1 s) before it sleeps.  So whenever the process had just run a NumPy matrix
product on two threads (a user's preprocessing, an evaluation, a benchmark's reference),
NumPy's worker spun on the second core while the engine's two-thread GEMMs needed it,
and a W1 training step took twice as long for the next ~0.1 s (measured on 2 cores:
1,180-1,345 us per step after a pause, 2,580-2,970 us right after NumPy GEMMs).
Calling NumPy's BLAS instead leaves the process one pool to share.

NumPy's wheels carry OpenBLAS with 64-bit integers and prefixed symbols
(`scipy_cblas_sgemm64_`; older wheels `cblas_sgemm64_`).  At import this module finds
that library among those loaded (threadpoolctl lists them) and registers its sgemm and
dgemm with LLVM under fixed names, with a flag saying whether it did.  The compiled
kernels refer to those names and read the flag when they run, not when they compile,
so Numba's on-disk cache stays right on a NumPy built against another BLAS (MKL, a
system OpenBLAS with 32-bit integers): there the flag is off and every product goes
through np.dot as before.
"""
import ctypes
import os

import numpy as np
from llvmlite import binding as ll
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112      # CBLAS's enum values
_FLAG = "learnd_numpy_blas_on"
_GEMM = {types.float32: "learnd_cblas_sgemm", types.float64: "learnd_cblas_dgemm"}
_CANDIDATES = {"learnd_cblas_sgemm": ("scipy_cblas_sgemm64_", "cblas_sgemm64_"),
               "learnd_cblas_dgemm": ("scipy_cblas_dgemm64_", "cblas_dgemm64_")}

# cblas_?gemm with 64-bit integers: (order, transA, transB, M, N, K, alpha, A, lda, B, ldb,
# beta, C, ldc); alpha and beta are passed by value in the matrices' precision.
_GEMM_C_TYPES = {
    "learnd_cblas_sgemm": ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                           ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p,
                                           ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
                                           ctypes.c_void_p, ctypes.c_int64),
    "learnd_cblas_dgemm": ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                           ctypes.c_int64, ctypes.c_int64, ctypes.c_double, ctypes.c_void_p,
                                           ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_double,
                                           ctypes.c_void_p, ctypes.c_int64),
}


def _numpy_blas_library():
    """Path of the BLAS library NumPy loaded, or None (threadpoolctl lists the loaded ones;
    NumPy's lies inside NumPy's install, in numpy.libs/ or numpy/.dylibs/)."""
    from threadpoolctl import threadpool_info
    root = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    for lib in threadpool_info():
        path = os.path.abspath(lib.get("filepath") or "")
        if lib.get("user_api") != "blas" or os.path.commonpath([path, root]) != root:
            continue
        if os.path.relpath(path, root).split(os.sep)[0] in ("numpy.libs", "numpy"):
            return path
    return None


def _numpy_gemm_addresses():
    """(NumPy's BLAS library, {our symbol name: address of its 64-bit-integer cblas
    gemm}), or (None, {}) when either gemm is missing.  Nothing found is an answer, not
    an error: np.dot takes over."""
    try:
        path = _numpy_blas_library()
        if path is None:
            return None, {}
        lib = ctypes.CDLL(path)
    except (OSError, ValueError):      # a library that will not load, paths on two drives
        return None, {}
    found = {}
    for name, candidates in _CANDIDATES.items():
        for symbol in candidates:
            if hasattr(lib, symbol):
                found[name] = ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value
                break
    return (path, found) if len(found) == len(_CANDIDATES) else (None, {})


def _register():
    """Register the gemm symbols and the flag; returns the library path used, or None."""
    path, found = _numpy_gemm_addresses()
    on = path is not None
    for name, c_type in _GEMM_C_TYPES.items():
        if not on:
            # The kernels never call it while the flag is off, but their code must link.
            _KEEP_ALIVE.append(c_type(lambda *args: None))
            found[name] = ctypes.cast(_KEEP_ALIVE[-1], ctypes.c_void_p).value
        ll.add_symbol(name, found[name])
    _FLAG_VALUE.value = 1 if on else 0
    ll.add_symbol(_FLAG, ctypes.addressof(_FLAG_VALUE))
    return path


_KEEP_ALIVE = []
_FLAG_VALUE = ctypes.c_uint8(0)
LIBRARY = _register()      # the library NumPy's products and the engine's share, or None


def uses_numpy_blas():
    """True when the engine's matrix products run on NumPy's BLAS (else on np.dot's)."""
    return bool(_FLAG_VALUE.value)


def set_numpy_blas(on):
    """Switch between NumPy's BLAS and np.dot at run time (tests compare the two paths);
    turning it on needs the library found at import.  Returns the previous setting."""
    before = uses_numpy_blas()
    if on and LIBRARY is None:
        raise RuntimeError("NumPy's BLAS was not found at import")
    _FLAG_VALUE.value = 1 if on else 0
    return before


@intrinsic
def _numpy_blas_on(typingctx):
    """The flag, read from memory on every call."""
    def codegen(context, builder, signature, args):
        module = builder.module
        flag = module.globals.get(_FLAG)
        if flag is None:
            flag = ir.GlobalVariable(module, ir.IntType(8), name=_FLAG)
            flag.linkage = "external"
        return builder.icmp_unsigned("!=", builder.load(flag), ir.Constant(ir.IntType(8), 0))

    return types.boolean(), codegen


@intrinsic
def _cblas_gemm(typingctx, trans_a, trans_b, m, n, k, A, lda, B, ldb, C, ldc):
    """C (m, n) = op(A) op(B), row-major, through the registered cblas_?gemm."""
    if not (isinstance(A, types.Array) and A.dtype in _GEMM and B.dtype == A.dtype and C.dtype == A.dtype):
        return None

    def codegen(context, builder, signature, args):
        ta, tb, m_, n_, k_, a, lda_, b, ldb_, c, ldc_ = args
        dtype = signature.args[5].dtype
        real = context.get_value_type(dtype)
        i32, i64, ptr = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64,
                                               real, ptr, i64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _GEMM[dtype])

        def data(i, value):
            return builder.bitcast(context.make_array(signature.args[i])(context, builder, value).data, ptr)

        builder.call(fn, [ir.Constant(i32, _ROW_MAJOR), builder.trunc(ta, i32), builder.trunc(tb, i32),
                          m_, n_, k_, ir.Constant(real, 1.0), data(5, a), lda_, data(7, b), ldb_,
                          ir.Constant(real, 0.0), data(9, c), ldc_])
        return context.get_dummy_value()

    sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64, A, types.int64, B,
                     types.int64, C, types.int64)
    return sig, codegen


@njit(cache=True, nogil=True, error_model="numpy")
def _numpy_gemm(trans_a, trans_b, A, B, C):
    """C = op(A) op(B) on NumPy's BLAS, op transposing where trans_*; True if it ran.

    It runs only when NumPy's BLAS is on and the three arrays are C-contiguous,
    non-empty and of agreeing shapes; the caller hands anything else to np.dot, which
    copes or raises."""
    m, k = (A.shape[1], A.shape[0]) if trans_a else (A.shape[0], A.shape[1])
    k_b, n = (B.shape[1], B.shape[0]) if trans_b else (B.shape[0], B.shape[1])
    if not (_numpy_blas_on() and A.flags.c_contiguous and B.flags.c_contiguous and C.flags.c_contiguous
            and m > 0 and n > 0 and k > 0 and k_b == k and C.shape[0] == m and C.shape[1] == n):
        return False
    _cblas_gemm(_TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, m, n, k,
                A, A.shape[1], B, B.shape[1], C, C.shape[1])
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_nt(A, B, C):
    """C = A @ B.T.  A: (m, k)  B: (n, k)  C: (m, n)."""
    if not _numpy_gemm(False, True, A, B, C):
        np.dot(A, B.T, C)


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_tn(A, B, C):
    """C = A.T @ B.  A: (m, n)  B: (m, k)  C: (n, k)."""
    if not _numpy_gemm(True, False, A, B, C):
        np.dot(A.T, B, C)


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_nn(A, B, C):
    """C = A @ B.  A: (m, n)  B: (n, k)  C: (m, k)."""
    if not _numpy_gemm(False, False, A, B, C):
        np.dot(A, B, C)
