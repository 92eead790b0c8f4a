"""BLAS threads per process or thread: what Numba's GEMMs run on."""
from __future__ import annotations

from threadpoolctl import threadpool_limits


def limit_blas_threads(n):
    """Limit the BLAS that does every layer's GEMM to `n` threads.

    Numba's np.dot calls SciPy's OpenBLAS, which is loaded first: threadpoolctl limits
    only the libraries already loaded, and would otherwise miss it.  Returns the
    threadpoolctl limiter: used in a `with`, the old limits come back at its end;
    otherwise the limit holds for the rest of the process.
    """
    import scipy.linalg.cython_blas  # noqa: F401
    return threadpool_limits(limits=n, user_api="blas")
