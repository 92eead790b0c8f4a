"""The value checks of train messages: magnitudes beyond max_abs_value, values that
overflow the model's dtype, for inputs and regression targets; and empty batches."""
from __future__ import annotations

import numpy as np
import pytest

from learnd.clients import protocol
from learnd.clients.protocol import ProtocolError
from learnd.daemon.ingest.idstore import IdStore
from learnd.daemon.ingest.checks import IngestChecker
from learnd.daemon.metrics import Metrics
from learnd.daemon.ingest.schema import Schema, check_converted, check_x, targets
from learnd.daemon.ingest.splits import SplitAssigner

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


def test_an_empty_first_batch_with_a_named_task_is_a_shape_mismatch():
    # The task's output count was guessed from the labels before their shape was checked:
    # max() of no labels raised, and the daemon answered `internal`.
    schema = Schema()
    empty = np.zeros((0, 3), np.float32)
    assert code_of(schema.infer, empty, np.zeros(0, np.float32), {"task": "multiclass"}) == "shape_mismatch"
    assert code_of(schema.infer, np.zeros((2, 3)), np.zeros(0, np.int64), {"task": "multiclass"}) \
        == "shape_mismatch"
    assert schema.to_dict() == {"input_dim": None, "task": None, "n_outputs": None}


def test_delayed_labels_with_no_ids_are_a_shape_mismatch():
    # No ids: the id store stacked no rows and raised, and the daemon answered `internal`.
    checker = IngestChecker(MULTICLASS, "float32", IdStore(10, 60.0), protocol.DEFAULT_LIMITS, {},
                            SplitAssigner((1.0, 0.0, 0.0), 0.0), Metrics().delayed_labels)
    message = protocol.Message({"v": 1, "op": "train", "producer": "p", "seq": 1},
                               {"ids": np.zeros(0, np.int64), "y": np.zeros(0, np.int64)})
    assert code_of(checker.item, message) == "shape_mismatch"


def test_a_checked_logged_record_gives_the_item_ingest_made_and_an_unchecked_one_is_checked():
    from learnd.daemon.log.wal import Record

    checker = IngestChecker(Schema(input_dim=3, task="multiclass", n_outputs=4), "float32",
                            IdStore(10, 60.0), protocol.DEFAULT_LIMITS, {},
                            SplitAssigner((0.5, 0.25, 0.25), 0.1), Metrics().delayed_labels)
    rng = np.random.default_rng(0)
    header = {"v": 1, "op": "train", "producer": "p", "seq": 7, "split": "auto"}
    arrays = {"x": rng.standard_normal((64, 3)), "y": rng.integers(0, 4, 64), "w": rng.random(64)}
    message = protocol.decode(protocol.encode(header, arrays), protocol.DEFAULT_LIMITS)
    made = checker.item(message, lsn=5)
    trusted = checker.logged_item(message, Record(5, [], made.codes.tobytes()))
    for field in ("lsn", "producer", "seq", "split"):
        assert getattr(trusted, field) == getattr(made, field)
    for field in ("x", "Y", "w", "codes"):
        np.testing.assert_array_equal(getattr(trusted, field), getattr(made, field))
    assert trusted.x.dtype == np.float32 and len(set(made.codes.tolist())) > 1
    # Without logged codes the record is checked again, as a live message is.
    bad = protocol.Message(header, {"x": np.full((2, 3), np.nan), "y": np.zeros(2, np.int64)})
    assert code_of(checker.logged_item, bad, Record(6, [], None)) == "non_finite"
