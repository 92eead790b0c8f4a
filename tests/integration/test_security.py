"""CURVE on a live daemon: allowed clients are served; clients without CURVE, with a key
not in the allowlist, or allowed on ingest/predict but not on control, get nothing
through, the model does not change, and every refusal is counted."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import zmq

from learnd.clients import protocol
from learnd.clients.cli import main as cli_main
from learnd.clients.client import Control, Predictor, Producer, Unauthorized
from learnd.clients.keys import create_keypair, load_public, load_secret
from learnd.clients.launch import serve_command
from learnd.engine.datasets import split
from tests.conftest import ALL_MODES

NO_ANSWER_S = 1.0      # how long a refused peer waits for the answer that never comes
SOCKETS = ("ingest", "predict", "control")


@pytest.fixture
def keyring(tmp_path):
    """Keys made by `learnd keys`: the server's; `ops` allowed everywhere; `reader` allowed
    on ingest and predict only; `stranger`, a valid key the daemon does not know."""
    root = tmp_path / "keys"
    assert cli_main(["keys", str(root), "--server", "--client", "ops", "--client", "reader",
                     "--control", "admin"]) == 0
    shutil.copy(root / "clients" / "ops.key", root / "control-clients" / "ops.key")
    create_keypair(str(tmp_path / "elsewhere"), "stranger")
    k = {"root": root, "server": str(root / "server" / "server.key"),
         "server_secret": str(root / "server" / "server.key_secret"),
         "clients_dir": str(root / "clients"), "control_dir": str(root / "control-clients"),
         "stranger_public": str(tmp_path / "elsewhere" / "stranger.key")}
    for name in ("ops", "reader"):
        k[name] = str(root / "clients" / f"{name}.key_secret")
    k["stranger"] = str(tmp_path / "elsewhere" / "stranger.key_secret")
    return k


def curve_env(k):
    return {"LEARND_CURVE_SERVER_SECRET": k["server_secret"], "LEARND_CURVE_CLIENTS_DIR": k["clients_dir"],
            "LEARND_CURVE_CONTROL_CLIENTS_DIR": k["control_dir"]}


def as_(k, who):
    return {"curve_server_key": k["server"], "curve_client_cert": k[who]}


def a_valid_message(sock_name, x):
    if sock_name == "ingest":
        return protocol.encode({"op": "train", "producer": "intruder", "seq": 0, "split": "train"},
                               {"x": x, "y": np.zeros(len(x), np.int64)})
    if sock_name == "predict":
        return protocol.encode({"op": "predict", "id": 1}, {"x": x})
    return protocol.encode({"op": "set", "id": 1, "settings": {"lr": 0.5}})


def raw_dealer(ctx, address, k=None, who=None):
    """A bare DEALER (no client library, no monitor): what any outside program would do.
    A send gives up after NO_ANSWER_S: once the server has refused the handshake the
    socket may hold no connection to queue the message on."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, int(NO_ANSWER_S * 1000))
    if who is not None:
        sock.curve_serverkey = load_public(k["server"])
        sock.curve_publickey, sock.curve_secretkey = load_secret(k[who])
    sock.connect(address)
    return sock


def gets_no_answer(sock, frames):
    """True when `frames` sent on `sock` draw no reply within NO_ANSWER_S (a send the
    socket cannot even queue, the handshake refused, draws none either)."""
    try:
        sock.send_multipart(frames)
    except zmq.Again:
        return True
    return not sock.poll(int(NO_ANSWER_S * 1000))


def refusals(d):
    m = d.metrics()
    return {(s, r): m[f"learnd_auth_failures_total{{reason={r},socket={s}}}"]
            for s in SOCKETS for r in ("key_refused", "handshake_failed")}


@pytest.mark.parametrize("daemon_mode", ALL_MODES)   # the predict path behind the proxy too
def test_only_allowed_keys_get_through_and_refusals_change_nothing(daemons, keyring):
    k = keyring
    d = daemons(env=curve_env(k))
    assert d.endpoints["metrics"].startswith("http://127.0.0.1:")
    Xtr, ytr, Xte, _ = split("digits")

    # (a) an allowed client trains, predicts and reads the status.
    with Producer(d.ingest, producer_id="ops", timeout=20, **as_(k, "ops")) as prod:
        for i in range(4):
            prod.send(Xtr[i * 64:(i + 1) * 64], ytr[i * 64:(i + 1) * 64], split="train")
    assert prod.acked == 4 and prod.rejected == []
    with Control(d.control, **as_(k, "ops")) as c:
        d.wait_until(lambda: c.status()["batches_trained"] == 4, what="4 batches")
    before = d.settled(**as_(k, "ops"))         # replay steps taken: the model stays put
    assert before["curve"] is True and before["samples_trained"] == 256
    with Predictor(d.predict, **as_(k, "ops")) as p:
        d.wait_until(lambda: p.predict(Xte[:1]).model_version == before["model_version"],
                     what="the last snapshot")
        served = p.predict(Xte, output="proba")
    metrics_before = d.metrics()
    assert metrics_before["learnd_auth_allowed_keys{socket=ingest}"] == 2
    assert metrics_before["learnd_auth_allowed_keys{socket=control}"] == 2
    assert sum(refusals(d).values()) == 0

    # (b) no CURVE and (c) a valid key that is not allowed: a bare socket gets no answer
    # on any socket.
    ctx = zmq.Context()
    socks = []
    try:
        for who in (None, "stranger"):
            for name in SOCKETS:
                sock = raw_dealer(ctx, d.endpoints[name], k, who)
                socks.append(sock)
                assert gets_no_answer(sock, a_valid_message(name, Xte[:64])), (who, name)
        # (d) `reader` is served on predict but refused on control.
        reader_control = raw_dealer(ctx, d.control, k, "reader")
        socks.append(reader_control)
        assert gets_no_answer(reader_control, a_valid_message("control", None))
    finally:
        for sock in socks:
            sock.close()
        ctx.term()
    with Predictor(d.predict, **as_(k, "reader")) as p:
        assert np.array_equal(p.predict(Xte, output="proba").y, served.y)

    # The client library says why at once instead of waiting out its retries.
    for make, who, needle in ((Control, "reader", "refused this client's CURVE key"),
                              (Control, None, "require"),
                              (Predictor, "stranger", "refused this client's CURVE key"),
                              (Predictor, None, "require")):
        address = d.control if make is Control else d.predict
        t0 = time.monotonic()
        with make(address, timeout=5, retries=2, **(as_(k, who) if who else {})) as client:
            with pytest.raises(Unauthorized) as err:
                client.status() if make is Control else client.predict(Xte[:1])
        assert time.monotonic() - t0 < 4.0, "should not wait for the timeout"
        assert err.value.code == "unauthorized" and needle in str(err.value)
    with pytest.raises(Unauthorized, match="refused this client's CURVE key"):
        with Producer(d.ingest, timeout=5, retries=1, **as_(k, "stranger")) as prod:
            prod.send(Xtr[:64], ytr[:64], split="train")
            prod.flush(timeout=10)

    # Refused handshakes are counted, one per connection, by socket and reason.
    # Every refused connection attempt is counted.  A key the ZAP handler refused ends the
    # client's attempts (ZeroMQ does not retry after the daemon's ERROR), so those are
    # exact; a client without CURVE is a failed handshake, and may retry every 100 ms when
    # the daemon's reset reached it before the mismatch did, so those are at least one.
    key_refused = {"ingest": 2,      # bare stranger, Producer as stranger
                   "predict": 2,     # bare stranger, Predictor as stranger
                   "control": 3}     # bare stranger, bare reader, Control as reader
    without_curve = {"ingest": 1, "predict": 2, "control": 2}   # bare socket (and the library's)

    def counted():
        r = refusals(d)
        return all(r[(s, "key_refused")] == key_refused[s] and r[(s, "handshake_failed")] >= without_curve[s]
                   for s in SOCKETS)
    try:
        d.wait_until(counted, timeout=10, what="the expected refusal counts")
    finally:
        print("refusals", {key: n for key, n in refusals(d).items() if n})

    # Nothing a refused peer sent reached the model or the settings.
    with Control(d.control, **as_(k, "ops")) as c:
        after = c.status()
    with Predictor(d.predict, **as_(k, "ops")) as p:
        again = p.predict(Xte, output="proba")
    assert after["samples_trained"] == before["samples_trained"] == 256
    assert after["batches_trained"] == 4 and after["learning_rate"] == before["learning_rate"]
    assert again.model_version == served.model_version and np.array_equal(again.y, served.y)
    m = d.metrics()
    assert m["learnd_ingest_messages_total{outcome=accepted}"] == \
        metrics_before["learnd_ingest_messages_total{outcome=accepted}"]
    assert "the ingest socket refused 1 handshake(s)" in d.log()

    # Key rotation: a new public key in the directory and SIGHUP let its holder in.
    shutil.copy(k["stranger_public"], os.path.join(k["clients_dir"], "stranger.key"))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_until(lambda: d.metrics()["learnd_auth_allowed_keys{socket=predict}"] == 3, timeout=10,
                 what="the reloaded allowlist")
    with Predictor(d.predict, **as_(k, "stranger")) as p:
        assert np.array_equal(p.predict(Xte, output="proba").y, served.y)
    assert d.metrics()["learnd_auth_allowed_keys{socket=control}"] == 2     # its own list
    assert d.stop() == 0


def test_a_curve_client_is_told_the_daemon_does_not_use_curve(daemons, keyring):
    d = daemons()
    with Control(d.control, timeout=5, **as_(keyring, "ops")) as c:
        with pytest.raises(Unauthorized, match="does not use CURVE"):
            c.status()
    d.wait_until(lambda: refusals(d)[("control", "handshake_failed")] >= 1, timeout=10,
                 what="the counted mismatch")


def test_a_refused_client_reports_it_even_when_its_send_has_no_connection(keyring):
    """A CURVE client of a plain ROUTER: the handshake fails before the first request, so
    the DEALER may hold no connection to queue the request on.  The request must still
    end, with the refusal, within its timeout (a blocking send used to wait for good)."""
    import threading
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = Control(f"tcp://127.0.0.1:{port}", timeout=2, retries=0, **as_(keyring, "ops"))
    outcome = []
    try:
        time.sleep(0.5)                      # the handshake fails meanwhile, unread
        caller = threading.Thread(target=lambda: outcome.append(_raised(client.status)), daemon=True)
        caller.start()
        caller.join(timeout=15)
        assert not caller.is_alive(), "the request never returned"
        assert isinstance(outcome[0], Unauthorized) and "does not use CURVE" in str(outcome[0])
    finally:
        if outcome:                          # a stuck caller keeps its socket: leave it
            client.close()
        server.close()


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects whatever came
        return exc
    return None


def test_a_wrong_server_key_is_reported_quickly(daemons, keyring, tmp_path):
    d = daemons(env=curve_env(keyring))
    wrong = {"curve_server_key": keyring["stranger_public"], "curve_client_cert": keyring["ops"]}
    t0 = time.monotonic()
    with Control(d.control, timeout=5, retries=1, **wrong) as c:
        with pytest.raises(Unauthorized, match="handshakes failed in a row.*the server key is not the daemon's"):
            c.status()
    assert time.monotonic() - t0 < 4.0
    d.wait_until(lambda: refusals(d)[("control", "handshake_failed")] >= 1, timeout=10,
                 what="the counted bad handshake")


def test_the_cli_takes_the_keys_and_hints_at_curve_on_silence(daemons, keyring, capsys):
    d = daemons(env=curve_env(keyring))
    assert cli_main(["status", "--control", d.control, "--server-key", keyring["server"],
                     "--client-key", keyring["ops"], "--json"]) == 0
    assert '"curve": true' in capsys.readouterr().out
    assert cli_main(["status", "--control", d.control]) == 1
    assert "CURVE" in capsys.readouterr().err
    assert cli_main(["status", "--control", d.control, "--server-key", keyring["server"]]) == 2
    assert cli_main(["status", "--control", d.control, "--server-key", keyring["server"],
                     "--client-key", keyring["server"]]) == 2       # a public file is no secret
    assert "holds no secret key" in capsys.readouterr().err
    # A daemon that never answers at all: the message names CURVE as a possible cause.
    silent = zmq.Context()
    router = silent.socket(zmq.ROUTER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        assert cli_main(["status", "--control", f"tcp://127.0.0.1:{port}", "--timeout", "0.3"]) == 3
        assert "if the daemon requires CURVE, give --server-key and --client-key" in capsys.readouterr().err
    finally:
        router.close(0)
        silent.term()


def _bad_key_cases(k, tmp_path):
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("curve\n    public-key = \"short\"\n    secret-key = \"short\"\n")
    mismatched = tmp_path / "mismatched.key_secret"
    lines = open(k["server_secret"]).read().replace(
        open(k["server"]).read().split('public-key = "')[1][:40],
        open(k["stranger_public"]).read().split('public-key = "')[1][:40])
    mismatched.write_text(lines)
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    return {
        "missing secret": ({"LEARND_CURVE_SERVER_SECRET": str(tmp_path / "nope.key_secret")}, "cannot read"),
        "public file given": ({"LEARND_CURVE_SERVER_SECRET": k["server"]}, "holds no secret key"),
        "garbage": ({"LEARND_CURVE_SERVER_SECRET": str(garbage)}, "not a CURVE certificate"),
        "keys of two pairs": ({"LEARND_CURVE_SERVER_SECRET": str(mismatched)}, "does not belong"),
        "no clients dir": ({"LEARND_CURVE_CLIENTS_DIR": str(tmp_path / "nowhere")}, "does not exist"),
        "empty clients dir": ({"LEARND_CURVE_CLIENTS_DIR": str(empty)}, "holds no NAME.key"),
    }


@pytest.mark.parametrize("case", ["missing secret", "public file given", "garbage", "keys of two pairs",
                                  "no clients dir", "empty clients dir"])
def test_bad_key_files_stop_the_start_with_exit_6(keyring, tmp_path, case):
    env, needle = _bad_key_cases(keyring, tmp_path)[case]
    env = {**os.environ, **curve_env(keyring), **env}
    r = subprocess.run(serve_command(tmp_path / "state"), env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 6, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("learnd serve: CURVE: ") and needle in last, last
    assert not (tmp_path / "state" / "endpoints.json").exists()


def test_clients_dir_without_a_server_key_is_a_config_error(keyring, tmp_path):
    env = {**os.environ, "LEARND_CURVE_CLIENTS_DIR": keyring["clients_dir"]}
    r = subprocess.run(serve_command(tmp_path / "state"), env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "need curve_server_secret" in r.stderr
