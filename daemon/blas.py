"""BLAS threads per process or thread: what Numba's GEMMs run on."""
from __future__ import annotations

from threadpoolctl import threadpool_limits


def limit_blas_threads(n):
    """Limit the BLAS that does every layer's GEMM to `n` threads.

    The engine's GEMMs run on NumPy's OpenBLAS (engine.kernels.blas), or through Numba's
    np.dot on SciPy's where NumPy carries another BLAS; SciPy's is loaded first because
    threadpoolctl limits only the libraries already loaded.  Returns the
    threadpoolctl limiter: used in a `with`, the old limits come back at its end;
    otherwise the limit holds for the rest of the process.
    """
    import scipy.linalg.cython_blas  # noqa: F401
    return threadpool_limits(limits=n, user_api="blas")
