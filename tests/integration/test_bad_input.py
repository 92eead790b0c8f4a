"""A barrage of malformed messages: each answered with its error code and counted,
the daemon keeps serving, and the model does not change by a single bit."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from learnd.clients import protocol
from learnd.clients.client import Control, Predictor, Producer
from learnd.engine.datasets import split
from tests.conftest import ALL_MODES

MAX_ARRAY_BYTES = 200_000


def raw(header, arrays=None):
    return protocol.encode(header, arrays)


def train(**fields):
    return {"op": "train", "producer": "bad", "seq": 1, **fields}


X_OK = np.zeros((4, 64), np.float32)
Y_OK = np.zeros(4, np.int64)


def barrage():
    """(socket, frames, expected error code) for every kind of bad message."""
    nan_x = X_OK.copy()
    nan_x[1, 3] = np.nan
    inf_x = X_OK.copy()
    inf_x[0, 0] = np.inf
    huge_x = X_OK.copy()
    huge_x[2, 5] = 1e30
    header = msgpack.packb({"v": 1, "op": "train", "producer": "bad", "seq": 1,
                            "arrays": [{"name": "x", "dtype": "<f4", "shape": [4, 64]}]})
    cases = [
        # framing and header
        ("ingest", [b"not-empty", b"x"], "bad_frame"),
        ("ingest", [b""], "bad_frame"),
        ("ingest", [b"", b"\xc1\xc1 not msgpack"], "bad_header"),
        ("ingest", [b"", msgpack.packb([1, 2, 3])], "bad_header"),
        ("ingest", [b"", msgpack.packb({"v": 2, "op": "train"})], "bad_version"),
        ("ingest", [b"", msgpack.packb({"op": "train"})], "bad_version"),
        ("ingest", [b"", msgpack.packb({"v": 1, "op": 7})], "bad_header"),
        ("ingest", raw({"op": "predict"}), "unknown_op"),
        ("ingest", raw(train(producer=5), {"x": X_OK, "y": Y_OK}), "bad_header"),
        ("ingest", raw(train(seq=-1), {"x": X_OK, "y": Y_OK}), "bad_header"),
        ("ingest", raw(train(split="validation"), {"x": X_OK, "y": Y_OK}), "bad_header"),
        ("ingest", [b"", msgpack.packb({"v": 1, "op": "x", "deep": [[[[[[[[[[1]]]]]]]]]]})], "bad_header"),
        ("ingest", [b"", b"\x82\xa1v\x01\xa2op" + b"\x91" * 60_000 + b"\xc0"], "bad_header"),  # 60k deep
        ("control", [b"", b"\x82\xa1v\x01\xa2op" + b"\x91" * 60_000 + b"\xc0"], "bad_header"),
        # arrays and frames
        ("ingest", [b"", header], "bad_array"),                                   # missing frame
        ("ingest", [b"", header, X_OK.tobytes(), b"extra"], "bad_array"),         # extra frame
        ("ingest", [b"", header, X_OK.tobytes()[:-4]], "bad_array"),              # byte size
        ("ingest", [b"", msgpack.packb({"v": 1, "op": "train", "arrays": [
            {"name": "x", "dtype": "<c16", "shape": [1]}]}), b"\0" * 16], "bad_array"),
        ("ingest", [b"", msgpack.packb({"v": 1, "op": "train", "arrays": [
            {"name": "z", "dtype": "<f4", "shape": [1]}]}), b"\0" * 4], "bad_array"),
        ("ingest", raw(train(), {"x": X_OK}), "bad_array"),                       # no labels
        ("ingest", raw(train(), {"x": X_OK[:, :10], "y": Y_OK}), "shape_mismatch"),
        ("ingest", raw(train(), {"x": X_OK, "y": Y_OK[:3]}), "shape_mismatch"),
        ("ingest", raw(train(), {"x": X_OK, "y": Y_OK, "w": np.ones(3)}), "shape_mismatch"),
        ("ingest", raw(train(), {"x": nan_x, "y": Y_OK}), "non_finite"),
        ("ingest", raw(train(), {"x": inf_x, "y": Y_OK}), "non_finite"),
        ("ingest", raw(train(), {"x": huge_x, "y": Y_OK}), "out_of_range"),
        ("ingest", raw(train(), {"x": X_OK, "y": Y_OK, "w": np.array([1, np.nan, 1, 1.0])}), "non_finite"),
        ("ingest", raw(train(), {"x": X_OK, "y": Y_OK + 10}), "bad_label"),
        ("ingest", raw(train(), {"x": X_OK, "y": Y_OK - 1}), "bad_label"),
        ("ingest", raw(train(), {"x": X_OK, "y": Y_OK + 0.5}), "bad_label"),
        ("ingest", raw(train(), {"x": X_OK, "y": Y_OK, "w": -np.ones(4)}), "bad_array"),
        ("ingest", raw(train(), {"x": np.zeros((1000, 64)), "y": np.zeros(1000, np.int64)}), "too_large"),
        ("ingest", [b"", msgpack.packb({"v": 1, "op": "train", "pad": "x" * 70_000})], "too_large"),
        ("ingest", raw(train(), {"ids": np.array([123456789]), "y": Y_OK[:1]}), "unknown_id"),
        # tags (error analysis): wrong dtype, shape, length, code, too many names
        ("ingest", raw(train(tag_names=["a", "b"]), {"x": X_OK, "y": Y_OK, "tags": np.zeros(4)}), "bad_array"),
        ("ingest", raw(train(tag_names=["a", "b"]), {"x": X_OK, "y": Y_OK, "tags": np.zeros(3, np.int32)}),
         "shape_mismatch"),
        ("ingest", raw(train(tag_names=["a", "b"]), {"x": X_OK, "y": Y_OK, "tags": np.zeros((4, 3), np.uint8)}),
         "shape_mismatch"),
        ("ingest", raw(train(tag_names=["a", "b"]), {"x": X_OK, "y": Y_OK, "tags": np.array([0, 1, 2, 0], np.int32)}),
         "bad_tag"),
        ("ingest", raw(train(), {"x": X_OK, "y": Y_OK, "tags": np.zeros(4, np.int32)}), "bad_header"),
        ("ingest", raw(train(tag_names=[f"t{i}" for i in range(33)]), {"x": X_OK, "y": Y_OK,
                                                                     "tags": np.zeros(4, np.int32)}), "too_large"),
        ("ingest", raw(train(), {"x": X_OK, "y": Y_OK, "ids": np.arange(3)}), "shape_mismatch"),
        # predict socket
        ("predict", raw({"op": "train"}), "unknown_op"),
        ("predict", raw({"op": "predict", "id": 1}, {"x": X_OK[:, :5]}), "shape_mismatch"),
        ("predict", raw({"op": "predict", "id": 2}, {"x": nan_x}), "non_finite"),
        ("predict", raw({"op": "predict", "id": 3, "output": "banana"}, {"x": X_OK}), "bad_header"),
        ("predict", raw({"op": "predict", "id": 4}), "bad_array"),
        ("predict", [b"", b"\x92\x01"], "bad_header"),
        ("predict", raw({"op": "predict"}, {"x": np.zeros((1000, 64))}), "too_large"),
        ("predict", raw({"op": "predict", "tag_names": ["a"]}, {"x": X_OK, "tags": np.zeros(4, np.int32)}),
         "bad_array"),                                                          # tags without ids
        ("predict", raw({"op": "predict", "tag_names": ["a"]}, {"x": X_OK, "ids": np.arange(4),
                                                              "tags": np.array([0, 1, 0, 0], np.int32)}), "bad_tag"),
        # control socket
        ("control", raw({"op": "reboot"}), "unknown_op"),
        ("control", raw({"op": "set", "settings": {"lr": -3}}), "bad_setting"),
        ("control", raw({"op": "set", "settings": {"hidden": [1]}}), "bad_setting"),
        ("control", raw({"op": "set", "settings": []}), "bad_header"),
        ("control", raw({"op": "status"}, {"x": X_OK}), "bad_array"),
    ]
    return cases


@pytest.fixture
def busy_daemon(daemons):
    return daemons(env={"LEARND_MAX_ARRAY_BYTES": str(MAX_ARRAY_BYTES)})


def train_on_digits(d, batches=8):
    """Train `batches` batches of 64 digits rows and wait until they serve; returns the
    test inputs and the probabilities predicted for them."""
    Xtr, ytr, Xte, _ = split("digits")
    with Producer(d.ingest, producer_id="good", timeout=20) as prod:
        for k in range(batches):
            prod.send(Xtr[k * 64:(k + 1) * 64], ytr[k * 64:(k + 1) * 64], split="train")
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["batches_trained"] == batches, what=f"{batches} batches")
    version = d.settled()["model_version"]      # replay steps taken: the model stays put
    with Predictor(d.predict) as p:
        d.wait_until(lambda: p.predict(Xte[:1]).model_version == version, what="last snapshot")
        return Xte, p.predict(Xte, output="proba")


@pytest.mark.parametrize("daemon_mode", ALL_MODES)   # the predict path behind the proxy too
def test_a_barrage_of_bad_messages_changes_nothing(busy_daemon):
    d = busy_daemon
    Xte, before = train_on_digits(d)
    metrics_before = d.metrics()

    ctx = zmq.Context()
    socks = {}
    seen = {}
    try:
        for name in ("ingest", "predict", "control"):
            socks[name] = ctx.socket(zmq.DEALER)
            socks[name].setsockopt(zmq.LINGER, 0)
            socks[name].connect(d.endpoints[name])
        for name, frames, expected in barrage():
            socks[name].send_multipart(frames)
            assert socks[name].poll(20_000), (name, expected)
            reply = protocol.decode(socks[name].recv_multipart(), reply=True)
            assert reply.header["ok"] is False, (name, expected)
            code = reply.header["error"]["code"]
            assert code == expected, (name, expected, reply.header["error"])
            assert reply.header["error"]["message"]
            seen[code] = seen.get(code, 0) + 1
    finally:
        for s in socks.values():
            s.close()
        ctx.term()

    with Predictor(d.predict) as p:
        after = p.predict(Xte, output="proba")
    with Control(d.control) as c:
        status = c.status()
    assert after.model_version == before.model_version == status["model_version"]
    assert np.array_equal(after.y, before.y)
    assert status["batches_trained"] == 8 and status["samples_trained"] == 8 * 64
    metrics = d.metrics()
    for code, count in seen.items():
        key = f"learnd_rejected_total{{reason={code}}}"
        assert metrics[key] - metrics_before[key] == count, code
    assert d.http("/healthz")[0] == 200


def test_every_error_code_is_produced_by_some_test():
    # busy: test_daemon.test_busy_when_too_many_control_ops_wait; not_ready:
    # test_daemon.test_embedded_default_infers_the_stream_and_learns; internal:
    # tests/daemon/test_predictor.py; unsupported: test_data_parallel's idle-rank test.
    # Everything else: the barrage above.
    produced = {code for _, _, code in barrage()} | {"busy", "not_ready", "internal", "unsupported"}
    assert produced == set(protocol.ERROR_CODES)


@pytest.mark.parametrize("x, y, header", [
    (np.zeros((4, 0), np.float32), np.zeros(4, np.int64), {}),            # no features
    (np.zeros((2, 3), np.float32), np.array([0, 2 ** 62]), {}),            # absurd class count
    (np.zeros((2, 3), np.float32), np.array([0, 1]), {"task": "binary", "n_outputs": 0}),
])
def test_a_bad_first_batch_is_refused_and_the_daemon_lives_on(daemons, x, y, header):
    d = daemons()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.ingest)
    try:
        sock.send_multipart(raw({"op": "train", "producer": "p", "seq": 0, **header}, {"x": x, "y": y}))
        assert sock.poll(20_000)
        reply = protocol.decode(sock.recv_multipart(), reply=True)
    finally:
        sock.close()
        ctx.term()
    assert reply.header["ok"] is False
    with Control(d.control) as c:
        status = c.status()
    assert status["task"] is None and status["input_dim"] is None     # the schema is still open
    with Producer(d.ingest, timeout=20) as prod:
        prod.send(np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]))
    assert prod.rejected == []


@pytest.mark.parametrize("daemon_mode", ALL_MODES)
def test_a_frame_over_max_message_bytes_is_dropped_by_zeromq_before_it_is_held(daemons):
    # Each frame is capped (ZMQ_MAXMSGSIZE) at max_message_bytes: ZeroMQ drops the peer
    # that sends a larger one as it arrives, so no such frame is ever kept in memory.
    # A message whose frames each fit but together do not is answered with too_large.
    d = daemons(env={"LEARND_MAX_MESSAGE_BYTES": "100000"})
    ctx = zmq.Context()
    try:
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(d.control)
        big.send_multipart([b"", msgpack.packb({"v": 1, "op": "status"}), b"\0" * 200_000])
        assert not big.poll(1000)
        big.close()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(d.control)
        sock.send_multipart(raw({"op": "status"}, {"x": np.zeros(8000), "y": np.zeros(8000)}))
        assert sock.poll(20_000)
        reply = protocol.decode(sock.recv_multipart(), reply=True)
        assert reply.header["error"]["code"] == "too_large"
        sock.close()
    finally:
        ctx.term()
    with Control(d.control) as c:
        assert c.status()["samples_trained"] == 0
    assert d.metrics()["learnd_rejected_total{reason=too_large}"] == 1
