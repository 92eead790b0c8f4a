"""benchmarks/overhead.py times a training step's kernels called on their own, to count
the Python around them; this checks that those calls are the step: run once, they move
the parameters and statistics bit for bit as partial_fit does."""
import numpy as np
import pytest

from learnd.engine import Model
from benchmarks.overhead import WORKLOADS, kernel_calls, make_batch


@pytest.mark.parametrize("name, spec, batch", WORKLOADS, ids=[w[0] for w in WORKLOADS])
def test_overhead_kernels_are_the_step(name, spec, batch):
    rng = np.random.default_rng(1)
    model = Model(**spec)
    model.partial_fit(*make_batch(model, batch, rng))
    X, y = make_batch(model, batch, rng)
    twin = Model.from_state(model.get_state())
    twin.rng_state[:] = model.rng_state
    before = model.network.flat_params.copy()

    model.partial_fit(X, y)
    for _, call in kernel_calls(twin, X, y):
        call()
    twin.normalizer.commit()

    assert not np.array_equal(model.network.flat_params, before)   # a real step to compare
    assert np.array_equal(model.network.flat_params, twin.network.flat_params)
    assert np.array_equal(model.network.flat_stats, twin.network.flat_stats)
    assert np.array_equal(model.normalizer.mean, twin.normalizer.mean)
    assert np.array_equal(model.normalizer.inv_scale, twin.normalizer.inv_scale)
