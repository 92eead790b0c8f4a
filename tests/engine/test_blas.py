"""The engine's matrix products run on NumPy's own BLAS (kernels.blas), with np.dot as the
path where NumPy carries no 64-bit-integer OpenBLAS; both paths against NumPy."""
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from learnd.engine.kernels import blas
from learnd.engine.kernels.blas import matmul_nn, matmul_nt, matmul_tn

SHAPES = [(1, 1, 1), (1, 784, 256), (3, 5, 4), (128, 256, 128), (0, 6, 3)]


def numpy_ships_openblas64():
    config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return config.get("name") == "scipy-openblas" and "USE64BITINT" in config.get("openblas configuration", "")


def in_a_fresh_process(script):
    """Run a Python script in a new interpreter (the kernels load from Numba's cache
    there); returns what it printed."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(params=[True, False], ids=["numpy-blas", "np.dot"])
def path(request):
    if request.param and not blas.uses_numpy_blas():
        pytest.skip("NumPy's BLAS was not found")
    before = blas.set_numpy_blas(request.param)
    yield request.param
    blas.set_numpy_blas(before)


@pytest.mark.skipif(not numpy_ships_openblas64(), reason="NumPy was built against another BLAS")
def test_the_engine_finds_the_blas_numpy_loaded():
    numpy_libraries = [lib["filepath"] for lib in threadpool_info()
                       if lib["user_api"] == "blas" and "numpy" in os.path.basename(os.path.dirname(lib["filepath"]))]
    assert blas.LIBRARY in numpy_libraries
    assert blas.uses_numpy_blas()


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-13)])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_each_product_matches_numpy(rng, path, dtype, rtol, m, k, n):
    A = rng.standard_normal((m, k)).astype(dtype)
    W = rng.standard_normal((n, k)).astype(dtype)
    G = rng.standard_normal((m, n)).astype(dtype)
    Z = np.full((m, n), np.nan, dtype)
    dW = np.full((n, k), np.nan, dtype)
    dA = np.full((m, k), np.nan, dtype)
    matmul_nt(A, W, Z)                       # forward: Z = A W^T
    matmul_tn(G, A, dW)                      # dW = G^T A
    matmul_nn(G, W, dA)                      # dA = G W
    atol = rtol * max(1, k, m)
    np.testing.assert_allclose(Z, A.astype(np.float64) @ W.T.astype(np.float64), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dW, G.T.astype(np.float64) @ A.astype(np.float64), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dA, G.astype(np.float64) @ W.astype(np.float64), rtol=rtol, atol=atol)


@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")
def test_strided_views_take_np_dot_and_stay_right(rng):
    """Views that are not C-contiguous are not handed to cblas with row-major strides."""
    A = rng.standard_normal((6, 10))[:, ::2]
    W = rng.standard_normal((4, 5))
    Z = np.empty((6, 4))
    matmul_nt(A, W, Z)
    np.testing.assert_allclose(Z, A @ W.T, rtol=1e-13)
    G = rng.standard_normal((6, 8))[:, ::2]
    dW = np.empty((4, 5))
    matmul_tn(G, A, dW)
    np.testing.assert_allclose(dW, G.T @ A, rtol=1e-13)


@pytest.mark.skipif(not numpy_ships_openblas64(), reason="NumPy was built against another BLAS")
def test_a_model_trains_alike_on_either_blas_in_a_fresh_process():
    """The flag is read when the kernels run, not when they compile: a fresh process that
    loads the cached kernels and switches to np.dot trains the same float64 model."""
    script = (
        "import numpy as np\n"
        "from learnd import Model\n"
        "from learnd.engine.kernels import blas\n"
        "out = []\n"
        "for on in (True, False):\n"
        "    blas.set_numpy_blas(on)\n"
        "    rng = np.random.default_rng(0)\n"
        "    m = Model(hidden=(16, 8), task='multiclass', n_outputs=3, input_dim=5, dtype='float64',\n"
        "              batch_norm=True, seed=1)\n"
        "    for _ in range(5):\n"
        "        m.partial_fit(rng.standard_normal((32, 5)), rng.integers(0, 3, 32))\n"
        "    out.append(np.concatenate([m.network.flat_params, m.predict_proba(rng.standard_normal((40, 5))).ravel()]))\n"
        "assert np.allclose(out[0], out[1], rtol=1e-10, atol=1e-12), np.abs(out[0] - out[1]).max()\n"
        "print('same')\n")
    assert in_a_fresh_process(script) == "same"


def test_without_numpy_blas_the_kernels_link_and_take_np_dot():
    """Where NumPy's BLAS is not found, the symbols still resolve (the cached kernels
    refer to them) and every product goes through np.dot."""
    script = (
        "import threadpoolctl\n"
        "threadpoolctl.threadpool_info = lambda: []       # as if NumPy carried no BLAS we know\n"
        "import numpy as np\n"
        "from learnd import Model\n"
        "from learnd.engine.kernels import blas\n"
        "assert blas.LIBRARY is None and not blas.uses_numpy_blas()\n"
        "rng = np.random.default_rng(0)\n"
        "m = Model(hidden=(16,), task='binary', input_dim=5, dtype='float64', seed=1)\n"
        "X = rng.standard_normal((64, 5)); y = (X[:, 0] > 0).astype(int)\n"
        "for _ in range(30):\n"
        "    m.partial_fit(X, y)\n"
        "print(float((m.predict(X).ravel() == y).mean()))\n")
    assert float(in_a_fresh_process(script)) > 0.9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mismatched_shapes_raise_instead_of_reaching_cblas(rng, path, dtype):
    A = rng.standard_normal((4, 5)).astype(dtype)
    with pytest.raises(ValueError):
        matmul_nt(A, np.zeros((3, 6), dtype), np.zeros((4, 3), dtype))
    with pytest.raises(ValueError):
        matmul_nn(A, np.zeros((5, 2), dtype), np.zeros((4, 3), dtype))
    with pytest.raises(ValueError):
        matmul_tn(A, np.zeros((3, 2), dtype), np.zeros((5, 2), dtype))
