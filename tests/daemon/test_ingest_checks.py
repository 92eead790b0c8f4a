"""The value checks of train messages: magnitudes beyond max_abs_value, and values that
overflow the model's dtype, for inputs and regression targets."""
from __future__ import annotations

import numpy as np
import pytest

from clients.protocol import ProtocolError
from daemon.schema import Schema, check_converted, check_x, targets

REGRESSION = Schema(input_dim=3, task="regression", n_outputs=1)
MULTICLASS = Schema(input_dim=3, task="multiclass", n_outputs=4)


def code_of(fn, *args):
    with pytest.raises(ProtocolError) as caught:
        fn(*args)
    return caught.value.code


@pytest.mark.parametrize("value", [1e16, -1e16, 1e30, -1e300])
def test_inputs_beyond_the_bound_are_out_of_range(value):
    x = np.zeros((4, 3), np.float64)
    x[1, 2] = value
    assert code_of(check_x, x, REGRESSION, 100, 1e15) == "out_of_range"


def test_inputs_at_the_bound_and_integers_within_it_pass():
    x = np.full((2, 3), -1e15)
    check_x(x, REGRESSION, 100, 1e15)
    check_x(np.array([[2 ** 40, 0, -5]], np.int64), REGRESSION, 100, 1e15)
    assert code_of(check_x, np.array([[2 ** 62, 0, 0]], np.int64), REGRESSION, 100, 1e15) == "out_of_range"


def test_a_bound_of_zero_is_no_bound():
    check_x(np.full((2, 3), 1e300), REGRESSION, 100, 0.0)


def test_regression_targets_are_bounded_but_class_ids_are_labels():
    assert code_of(targets, np.array([0.5, 1e20]), REGRESSION, 2, np.float32, 1e15) == "out_of_range"
    assert targets(np.array([0.5, -1e15]), REGRESSION, 2, np.float32, 1e15).shape == (2, 1)
    assert code_of(targets, np.array([0.0, 1e20]), MULTICLASS, 2, np.float32, 1e15) == "bad_label"


def test_values_that_overflow_the_model_dtype_are_non_finite():
    assert code_of(targets, np.array([0.5, 1e39]), REGRESSION, 2, np.float32, 0.0) == "non_finite"
    with np.errstate(over="ignore"):
        overflowed = np.array([[1e39]]).astype(np.float32)
    assert code_of(check_converted, "x", overflowed) == "non_finite"
    check_converted("x", np.array([[3e38]], np.float32))
