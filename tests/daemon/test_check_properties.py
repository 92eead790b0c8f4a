"""Properties of the daemon's message checks, driven without sockets: whatever a
decoded train or predict message holds, the check returns a valid item or raises a
ProtocolError with a stable code (never `internal`, never another exception), and a
refused message changes nothing."""
from __future__ import annotations

import copy

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from learnd.clients import protocol
from learnd.clients.protocol import ARRAY_NAMES, Message, ProtocolError
from learnd.daemon.ingest.idstore import IdStore
from learnd.daemon.ingest.checks import IngestChecker
from learnd.daemon.metrics import Metrics
from learnd.daemon.serving.predictor import PredictServer
from learnd.daemon.ingest.schema import Schema
from learnd.daemon.ingest.splits import SplitAssigner
from learnd.engine import Model
from tests.clients.test_protocol_properties import ALLOWED_DTYPES, PROPERTY, wild_values

INPUT_DIM = 3
STORED_IDS = (7, 8, 9)      # ids whose inputs an earlier predict request kept
SIGNALLING_NAN = {4: 0x7F800001, 8: 0x7FF0000000000001}     # bit patterns, by itemsize

# Values that sit on the checks' edges, mixed with arbitrary ones.
edge_numbers = st.sampled_from([0, 1, -1, 2, 3, 0.5, -0.0, 1e15, 1e16, 1e39, -1e300, 2 ** 62,
                                2 ** 63 - 1, float("nan"), float("inf"), float("-inf")])


@st.composite
def any_array(draw, rows):
    """A read-only array as decode makes them: allowed dtype, 1-D or 2-D, mostly `rows`
    rows, values drawn from the edges or anywhere in the dtype."""
    dtype = draw(st.sampled_from(ALLOWED_DTYPES))
    shape = draw(st.sampled_from([(rows,), (rows, INPUT_DIM), (rows, 1), (rows, 2), (rows, 4), (rows, 0)])
                 | hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5))
    if draw(st.booleans()):
        a = draw(hnp.arrays(dtype, shape))
    else:
        with np.errstate(all="ignore"):
            values = draw(st.lists(edge_numbers, min_size=1, max_size=4))
            a = np.resize(np.array(values, dtype=np.float64), shape).astype(dtype)
    a.setflags(write=False)
    return a


# Mostly well-formed fields and the usual arrays, so that most examples get past the
# header checks to the array checks.
FIELD_CHOICES = st.sampled_from(("keep",) * 8 + ("valid", "valid", "wild", "drop"))
array_names = (st.sampled_from([["x", "y"], ["x", "y", "w"], ["ids", "y"], ["x", "y", "ids"]])
               | st.lists(st.sampled_from(ARRAY_NAMES), unique=True, max_size=4))


@st.composite
def plausible_x(draw, m):
    """(m, INPUT_DIM) inputs of any allowed dtype (floats half the time) with modest
    values, or one on an edge."""
    dtype = draw(st.sampled_from([np.dtype("<f4"), np.dtype("<f8")]) | st.sampled_from(ALLOWED_DTYPES))
    elements = {"b": st.booleans(), "u": st.integers(0, 3), "i": st.integers(-3, 3),
                "f": st.floats(-1e3, 1e3, width=8 * dtype.itemsize)}[dtype.kind]
    x = draw(hnp.arrays(dtype, (m, INPUT_DIM), elements=elements))
    if dtype.kind == "f" and draw(st.booleans()):      # one value on an edge: NaN, Inf, huge
        with np.errstate(all="ignore"):
            x[draw(st.integers(0, m - 1)), draw(st.integers(0, INPUT_DIM - 1))] = draw(edge_numbers)
    return x


@st.composite
def plausible_train_arrays(draw):
    """x, y (and sometimes w) a producer would send for some task, with at most one
    array swapped for an arbitrary one: the checks are reached past the shapes."""
    m = draw(st.integers(1, 5))
    x = draw(plausible_x(m))
    y = draw(st.sampled_from([
        np.arange(m) % 4, np.arange(m) % 2, np.linspace(-1, 1, m), (np.arange(m) % 2).astype(bool),
        np.eye(4, dtype=np.int64)[np.arange(m) % 4], (np.arange(2 * m).reshape(m, 2) % 2).astype(np.float32),
        np.linspace(0, 1, 2 * m).reshape(m, 2)]))
    arrays = {"x": x, "y": y}
    if draw(st.booleans()):
        arrays["w"] = np.linspace(0.5, 2, m)
    if draw(st.booleans()):
        arrays[draw(st.sampled_from(list(arrays)))] = draw(any_array(m))
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


@st.composite
def train_messages(draw):
    header = {"v": 1, "op": "train", "producer": "p", "seq": 1}
    mutate_header = draw(st.booleans())
    for key, valid in (("producer", st.text(min_size=1, max_size=8)), ("seq", st.integers(0, 2 ** 64 - 1)),
                       ("split", st.sampled_from(("auto", "train", "dev", "test"))),
                       ("task", st.sampled_from(("binary", "multiclass", "multilabel", "regression"))),
                       ("n_outputs", st.integers(-1, 12))):
        choice = draw(FIELD_CHOICES) if mutate_header else "keep"
        if choice == "valid":
            header[key] = draw(valid)
        elif choice == "wild":
            header[key] = draw(wild_values)
        elif choice == "drop":
            header.pop(key, None)
    if draw(st.booleans()):
        arrays = draw(plausible_train_arrays())
    else:
        names = draw(array_names)
        rows = draw(st.integers(0, 5))
        arrays = {name: draw(any_array(rows)) for name in names}
    if "ids" in arrays and draw(st.booleans()):
        arrays["ids"] = np.resize(np.array(STORED_IDS, np.int64), arrays["ids"].shape[:1])
    return Message(header, arrays)


SCHEMAS = [Schema(INPUT_DIM, "multiclass", 4), Schema(INPUT_DIM, "binary", 1),
           Schema(INPUT_DIM, "multilabel", 2), Schema(INPUT_DIM, "regression", 2), Schema()]


def checker_for(schema, dtype):
    store = IdStore(100, 3600.0)
    store.put(np.array(STORED_IDS), np.arange(len(STORED_IDS) * INPUT_DIM, dtype=dtype).reshape(-1, INPUT_DIM))
    splitter = SplitAssigner((0.9, 0.05, 0.05), 0.02)
    return IngestChecker(schema, dtype, store, protocol.DEFAULT_LIMITS, {}, splitter,
                         Metrics().delayed_labels, max_abs_value=1e15)


def check_or_code(fn, *args):
    """fn's result, or the code of its ProtocolError.  Floating-point trouble raises, so a
    check that lets an overflow or invalid operation pass unhandled (a warning in the
    daemon's log) fails here."""
    try:
        with np.errstate(over="raise", invalid="raise", divide="raise"):   # what would warn
            result = fn(*args)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES and exc.code != "internal", exc.code
        assert exc.message
        event(exc.code)
        return exc.code
    event("accepted")
    return result


@PROPERTY
@given(train_messages(), st.sampled_from(range(len(SCHEMAS))), st.sampled_from(("float32", "float64")))
def test_train_messages_become_a_valid_item_or_a_coded_refusal(message, which, dtype):
    schema = copy.copy(SCHEMAS[which])
    checker = checker_for(schema, dtype)
    before = schema.to_dict()
    item = check_or_code(checker.item, message)
    if isinstance(item, str):
        assert schema.to_dict() == before      # a refusal fixes no schema
        assert len(checker.id_store) == len(STORED_IDS)
        return
    m = item.x.shape[0]
    assert schema.known and m >= 1
    assert item.x.shape == (m, schema.input_dim) and item.x.dtype == np.dtype(dtype)
    assert item.Y.shape == (m, schema.n_outputs)
    assert np.isfinite(item.x).all() and np.abs(item.x).max() <= 1e15
    if schema.task != "multilabel":      # multilabel: NaN means "no label"
        assert np.isfinite(item.Y).all()
    assert item.w is None or (item.w.shape == (m,) and (item.w >= 0).all() and (item.w > 0).any())
    assert item.codes.shape == (m,)


def predictor_snapshot():
    model = Model(hidden=(4,), task="multiclass", n_outputs=3, input_dim=INPUT_DIM)
    x = np.random.default_rng(0).standard_normal((6, INPUT_DIM)).astype(np.float32)
    model.partial_fit(x, np.array([0, 1, 2, 1, 0, 2]))
    return model.snapshot(version=1)


SNAPSHOT = predictor_snapshot()
PREDICTOR = PredictServer(None, None, Metrics(), protocol.DEFAULT_LIMITS, IdStore(10, 60.0))


@st.composite
def predict_messages(draw):
    header = {"v": 1, "op": "predict"}
    choice = draw(st.sampled_from(("none", "valid", "wild")))
    if choice == "valid":
        header["output"] = draw(st.sampled_from(("label", "proba", "value")))
    elif choice == "wild":
        header["output"] = draw(wild_values)
    rows = draw(st.integers(0, 5))
    if rows and draw(st.booleans()):
        arrays = {"x": draw(plausible_x(rows))}
        if draw(st.booleans()):
            arrays["ids"] = np.arange(rows, dtype=np.int64)
    else:
        names = draw(st.lists(st.sampled_from(ARRAY_NAMES), unique=True, max_size=4))
        arrays = {name: draw(any_array(rows)) for name in names}
    for a in arrays.values():
        a.setflags(write=False)
    return Message(header, arrays)


@PROPERTY
@given(predict_messages(), st.integers(0, 4))
def test_predict_messages_become_a_valid_request_or_a_coded_refusal(message, ready):
    request = check_or_code(PREDICTOR.check, message, SNAPSHOT if ready else None)   # 0: no model yet
    if isinstance(request, str):
        return
    m = request.x.shape[0]
    assert request.x.shape == (m, INPUT_DIM) and m >= 1 and request.x.dtype == SNAPSHOT.dtype
    assert np.isfinite(request.x).all()
    assert request.ids is None or request.ids.shape == (m,)
    out = np.empty((m, SNAPSHOT.n_outputs), dtype=SNAPSHOT.dtype)
    SNAPSHOT.predict_into(request.x, out, SNAPSHOT.new_workspace())
    assert np.isfinite(out).all()


@PROPERTY
@given(st.lists(edge_numbers, min_size=1, max_size=6), st.sampled_from(["<f4", "<f8", "<i8", "<u8", "|u1"]),
       st.integers(1, 4), st.sampled_from(("float32", "float64")), st.booleans())
def test_inputs_on_the_edges_are_taken_or_refused_with_a_code(values, dtype, m, model_dtype, signalling):
    # NaN (quiet or signalling), Inf, values past max_abs_value or past float32, in every
    # dtype they can travel in.
    with np.errstate(all="ignore"):
        x = np.resize(np.array(values, dtype=np.float64), (m, INPUT_DIM)).astype(dtype)
    if signalling and x.dtype.kind == "f":
        x.view({4: np.uint32, 8: np.uint64}[x.itemsize])[0, 0] = SIGNALLING_NAN[x.itemsize]
    x.setflags(write=False)
    request = check_or_code(PREDICTOR.check, Message({"v": 1, "op": "predict"}, {"x": x}), SNAPSHOT)
    assert isinstance(request, str) or np.isfinite(request.x).all()
    message = Message({"v": 1, "op": "train", "producer": "p", "seq": 1}, {"x": x, "y": np.arange(m) % 4})
    item = check_or_code(checker_for(copy.copy(SCHEMAS[0]), model_dtype).item, message)
    assert isinstance(item, str) or np.isfinite(item.x).all()
