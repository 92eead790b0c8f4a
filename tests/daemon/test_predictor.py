"""The predict thread answers even when serving itself fails, and refuses inputs it
cannot serve cleanly."""
import warnings

import numpy as np
import pytest
import zmq

from learnd.clients import protocol
from learnd.daemon.ingest.idstore import IdStore
from learnd.daemon.metrics import Metrics
from learnd.daemon.serving.predictor import PredictServer
from learnd.engine import Model


class BrokenSnapshot:
    version, input_dim, n_outputs, dtype, task, units_per_row = 3, 2, 1, np.dtype("float32"), "binary", 9

    def new_workspace(self):
        return None

    def predict_into(self, x, out, ws):
        raise RuntimeError("kernel exploded")


class FakeTrainer:
    def __init__(self, snapshot):
        self.snapshot = snapshot


def serve_one(snapshot, frames):
    ctx = zmq.Context()
    server_sock = ctx.socket(zmq.ROUTER)
    port = server_sock.bind_to_random_port("tcp://127.0.0.1")
    client = ctx.socket(zmq.DEALER)
    client.connect(f"tcp://127.0.0.1:{port}")
    metrics = Metrics()
    server = PredictServer(server_sock, FakeTrainer(snapshot), metrics, protocol.DEFAULT_LIMITS,
                           IdStore(10, 60))
    server.start()
    try:
        client.send_multipart(frames)
        assert client.poll(10_000)
        return protocol.decode(client.recv_multipart(), reply=True), metrics
    finally:
        server.should_exit.set()
        server.join(5)
        client.close(0)
        ctx.term()


def test_a_failure_inside_serving_is_answered_as_internal_and_counted():
    reply, metrics = serve_one(BrokenSnapshot(), protocol.encode(
        {"op": "predict", "id": 9}, {"x": np.zeros((1, 2), np.float32)}))
    assert reply.header["ok"] is False and reply.header["id"] == 9
    assert reply.header["error"]["code"] == "internal"
    assert metrics.rejected.labels("internal")._value.get() == 1


def test_outputs_by_kind():
    model = Model(hidden=(4,), task="multiclass", n_outputs=3, input_dim=2)
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    model.partial_fit(x, np.array([0, 1, 2, 1, 0]))
    snap = model.snapshot(version=1)
    for output, check in (("label", lambda y: np.array_equal(y, model.predict(x))),
                          ("proba", lambda y: np.array_equal(y, model.predict_proba(x)))):
        reply, _ = serve_one(snap, protocol.encode({"op": "predict", "output": output}, {"x": x}))
        assert reply.header["ok"] and reply.header["model_version"] == 1
        assert check(reply.arrays["y"]), output


@pytest.mark.parametrize("x", [np.array([[1e39, 0.0]]),
                               np.array([[0x7FF0000000000001, 0]], np.uint64).view(np.float64)])
def test_inputs_past_the_model_dtype_are_non_finite_without_a_warning(x):
    # The cast to float32 of a value past its range, or of a signalling NaN, wrote a
    # RuntimeWarning into the daemon's log before the Inf or NaN it made was refused.
    model = Model(hidden=(4,), task="binary", input_dim=2)
    model.partial_fit(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32), np.array([0, 1]))
    server = PredictServer(None, FakeTrainer(None), Metrics(), protocol.DEFAULT_LIMITS, IdStore(10, 60))
    message = protocol.Message({"v": 1, "op": "predict"}, {"x": x})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(protocol.ProtocolError) as err:
            server.check(message, model.snapshot(version=1))
    assert err.value.code == "non_finite"
