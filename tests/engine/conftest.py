"""Engine test fixtures: seeds are explicit, never global."""
import numpy as np
import pytest


@pytest.fixture
def seed():
    """The seed a test draws its data (and, where it matters, its model) from."""
    return 20240611


@pytest.fixture
def rng(seed):
    """A private generator for test data (no global np.random state)."""
    return np.random.default_rng(seed)
