"""`learnd follow`: followers serve what their trainer published, bit for bit, keep
serving while it is gone, catch up when it is back, and say how far behind they are."""
from __future__ import annotations


import numpy as np
import pytest
import zmq

from learnd.clients import protocol
from learnd.clients.client import Control, Predictor, Producer
from learnd.clients.keys import create_keypair
from learnd.engine.datasets import split
from tests.deploy import files

from .exposition import exposed_names
from .followers import FollowerProcess
from .test_bad_input import MAX_ARRAY_BYTES, barrage

MAX_LAG_S = 1.0
# One version per training batch: replay steps would add versions while the trainer idles.
TRAINER_ENV = {"LEARND_REPLAY_RATIO": "0"}


@pytest.fixture
def followers(tmp_path):
    """A factory of started followers; every one is killed at the end of the test."""
    started = []

    def start(source, name=None, args=(), env=None):
        f = FollowerProcess(tmp_path / (name or f"follower-{len(started)}"), source, args, env)
        started.append(f)
        return f.start()

    yield start
    for f in started:
        f.kill()


@pytest.fixture(scope="module")
def digits():
    return split("digits")


def _train(d, X, y, first, count, batch=64):
    """Send batches first .. first+count-1 (64 rows each) and wait until they all serve;
    returns the trainer's model version then."""
    with Producer(d.ingest, producer_id="p", timeout=20, first_seq=first) as prod:
        for k in range(first, first + count):
            i = (k * batch) % (len(X) - batch)
            prod.send(X[i:i + batch], y[i:i + batch], split="train")
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["batches_trained"] >= first + count, what="the batches trained")
    return d.settled()["model_version"]


def _answers(address, X, **curve):
    with Predictor(address, timeout=20, **curve) as p:
        return p.predict(X, output="proba")


def _same_answers(d, fs, X, version):
    """Every follower answers X from `version` exactly as the trainer does."""
    expected = _answers(d.predict, X)
    assert expected.model_version == version
    for f in fs:
        f.wait_for_version(version)
        got = _answers(f.predict, X)
        assert got.model_version == version
        assert got.y.dtype == expected.y.dtype and np.array_equal(got.y, expected.y)


@pytest.mark.parametrize("daemon_mode", ["tree", "single-process"])
def test_two_followers_answer_as_the_trainer_bit_for_bit_and_report_no_lag(daemons, followers, digits,
                                                                            daemon_mode):
    Xtr, ytr, Xte, _ = digits
    d = daemons(args=["--set", "hidden=[32]"], env=TRAINER_ENV)
    fs = [followers(d.endpoints["snapshots"]) for _ in range(2)]
    for f in fs:      # no snapshot yet: not ready, and predict says so with the daemon's code
        assert f.status()["state"] == "waiting" and f.http("/readyz")[0] == 503
        with pytest.raises(Exception, match="not_ready"):
            _answers(f.predict, Xte[:1])
    version = _train(d, Xtr, ytr, 0, 3)
    _same_answers(d, fs, Xte, version)
    version = _train(d, Xtr, ytr, 3, 4)       # every new version reaches them
    assert version == 7
    _same_answers(d, fs, Xte, version)
    for f in fs:
        s = f.status()
        assert (s["state"], s["ready"], s["trainer_version"], s["lag_versions"]) == ("current", True, 7, 0)
        assert s["lag_seconds"] == 0.0 and s["task"] == "multiclass" and s["input_dim"] == 64
        assert f.http("/readyz")[0] == 200 and f.http("/healthz")[0] == 200
        m = f.metrics()
        assert m["learnd_follower_lag_versions"] == 0 and m["learnd_follower_lag_seconds"] == 0
        assert m["learnd_model_version"] == 7
        assert m["learnd_follower_messages_total{outcome=applied}"] >= 2
        assert m["learnd_follower_snapshot_bytes_total"] > 0
        assert m["learnd_follower_publication_delay_seconds_count"] >= 2
        assert m["learnd_predict_requests_total{outcome=ok}"] >= 2
    for f in fs:
        assert f.stop() == 0
    assert d.stop() == 0


@pytest.mark.parametrize("daemon_mode", ["tree"])
def test_followers_serve_through_a_kill_9_of_the_trainer_and_catch_up_after_its_restart(
        daemons, followers, digits, tmp_path, daemon_mode):
    Xtr, ytr, Xte, _ = digits
    state_dir = tmp_path / "trainer"
    d = daemons(state_dir=state_dir, args=["--set", "hidden=[32]"], env=TRAINER_ENV)
    fs = [followers(d.endpoints["snapshots"], args=["--set", f"follower_max_lag_s={MAX_LAG_S}"])
          for _ in range(2)]
    version = _train(d, Xtr, ytr, 0, 4)
    _same_answers(d, fs, Xte, version)
    before = _answers(fs[0].predict, Xte)
    same_ports = [a for name in ("ingest", "predict", "control", "snapshots")
                  for a in (f"--{name}", d.endpoints[name])]
    d.kill()                                  # kill -9: the tree goes with its supervisor
    for f in fs:
        # Still answering from the last version, then stale past follower_max_lag_s.
        f.wait_until(lambda: f.status()["state"] == "stale", timeout=10, what="stale")
        got = _answers(f.predict, Xte)
        assert got.model_version == version and np.array_equal(got.y, before.y)
        assert f.http("/readyz")[0] == 503 and f.http("/healthz")[0] == 200
        s = f.status()
        assert s["lag_seconds"] > MAX_LAG_S and s["seconds_since_trainer"] > MAX_LAG_S
        assert f.metrics()["learnd_follower_lag_seconds"] > MAX_LAG_S
    d = daemons(state_dir=state_dir, args=["--set", "hidden=[32]", *same_ports], env=TRAINER_ENV)
    restored = d.settled()["model_version"]
    for f in fs:          # the restarted trainer's first snapshot reaches them by itself
        f.wait_for_version(restored)
        f.wait_until(lambda: f.http("/readyz")[0] == 200, timeout=10, what="ready again")
        assert f.status()["state"] == "current"
    version = _train(d, Xtr, ytr, 4, 3)
    assert version > restored
    _same_answers(d, fs, Xte, version)
    assert d.stop() == 0


@pytest.mark.parametrize("daemon_mode", ["tree"])
def test_curve_on_the_snapshots_socket(daemons, followers, digits, tmp_path, daemon_mode):
    Xtr, ytr, Xte, _ = digits
    keys = tmp_path / "keys"
    create_keypair(str(keys / "server"), "server")
    for name in ("producer", "follower"):
        create_keypair(str(keys / "clients"), name)
    create_keypair(str(tmp_path / "elsewhere"), "stranger")
    server_key = str(keys / "server" / "server.key")
    curve = {"curve_server_key": server_key, "curve_client_cert": str(keys / "clients" / "producer.key_secret")}
    d = daemons(args=["--set", "hidden=[32]"],
                env={**TRAINER_ENV, "LEARND_CURVE_SERVER_SECRET": str(keys / "server" / "server.key_secret"),
                     "LEARND_CURVE_CLIENTS_DIR": str(keys / "clients")})
    allowed = followers(d.endpoints["snapshots"], name="allowed",
                        args=["--server-key", server_key, "--client-key", str(keys / "clients" / "follower.key_secret")])
    stranger = followers(d.endpoints["snapshots"], name="stranger",
                         args=["--server-key", server_key, "--client-key", str(tmp_path / "elsewhere" / "stranger.key_secret")])
    with Producer(d.ingest, producer_id="p", timeout=20, **curve) as prod:
        for k in range(3):
            prod.send(Xtr[64 * k:64 * (k + 1)], ytr[64 * k:64 * (k + 1)], split="train")
    with Control(d.control, **curve) as c:
        d.wait_until(lambda: c.status()["model_version"] == 3, what="version 3")
        expected = _answers(d.predict, Xte, **curve)
    allowed.wait_for_version(3)
    got = _answers(allowed.predict, Xte)
    assert got.model_version == 3 and np.array_equal(got.y, expected.y)
    # The stranger's handshake is refused: it never holds a snapshot, says why, and the
    # trainer counts the refusal on its snapshots socket.
    stranger.wait_until(lambda: stranger.status()["trainer_refused"], timeout=10, what="the refusal")
    s = stranger.status()
    assert (s["state"], s["model_version"]) == ("waiting", None) and stranger.http("/readyz")[0] == 503
    d.wait_until(lambda: d.metrics()["learnd_auth_failures_total{reason=key_refused,socket=snapshots}"] >= 1,
                 timeout=10, what="the refusal counted")
    assert "refused this follower's handshake" in stranger.log()


@pytest.mark.parametrize("daemon_mode", ["single-process"])
def test_bad_predict_messages_get_the_daemons_error_codes(daemons, followers, digits, daemon_mode):
    Xtr, ytr, _, _ = digits
    limits = {"LEARND_MAX_ARRAY_BYTES": str(MAX_ARRAY_BYTES)}
    d = daemons(env={**TRAINER_ENV, **limits})
    f = followers(d.endpoints["snapshots"], env=limits)
    f.wait_for_version(_train(d, Xtr, ytr, 0, 2))
    cases = [(frames, code) for sock, frames, code in barrage() if sock == "predict"]
    ctx = zmq.Context()
    try:
        codes = {}
        for name, address in (("daemon", d.predict), ("follower", f.predict)):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            codes[name] = []
            for frames, _ in cases:
                sock.send_multipart(frames)
                assert sock.poll(10_000), f"no reply from the {name}"
                reply = protocol.decode(sock.recv_multipart(), reply=True)
                codes[name].append(reply.header["error"]["code"])
            sock.close()
    finally:
        ctx.destroy(linger=0)
    assert codes["follower"] == codes["daemon"] == [code for _, code in cases]
    m = f.metrics()
    assert m["learnd_predict_requests_total{outcome=error}"] == len(cases)
    assert f.status()["state"] == "current"


@pytest.mark.parametrize("daemon_mode", ["single-process"])
def test_a_followers_metrics_are_the_documented_ones(daemons, followers, digits, daemon_mode):
    Xtr, ytr, Xte, _ = digits
    d = daemons(env=TRAINER_ENV)
    f = followers(d.endpoints["snapshots"])
    f.wait_for_version(_train(d, Xtr, ytr, 0, 1))
    _answers(f.predict, Xte[:2])
    exposed, _ = exposed_names(f.http("/metrics")[1])
    documented = set(files.documented_metrics())
    follower_only = files.follower_only_metrics()
    assert {"learnd_follower_lag_versions", "learnd_follower_lag_seconds"} <= follower_only
    assert follower_only <= exposed and exposed <= documented, (follower_only - exposed, exposed - documented)
