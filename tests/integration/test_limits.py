"""At the limits: a full disk under the checkpoints and under the write-ahead log, an
unwritable state dir, a port already taken.  Real ENOSPC and EROFS come from small
tmpfs mounts (root only; skipped where mounting is not permitted)."""
from __future__ import annotations

import errno
import glob
import os
import socket
import subprocess
import time

import pytest
import zmq

from learnd.clients import protocol
from learnd.clients.client import Control, LearndError, Predictor, Producer
from learnd.clients.launch import serve_command
from learnd.daemon.training.checkpoints import decode as decode_checkpoint
from learnd.engine.datasets import split

BATCH = 64
SMALL_MODEL = {"LEARND_MODEL_HIDDEN": "[32]", "LEARND_CHECKPOINT_INTERVAL_S": "0"}


@pytest.fixture
def mount_tmpfs():
    """mount_tmpfs(path, size, read_only=False): a tmpfs there, unmounted at the end."""
    mounted = []

    def mount(path, size, read_only=False):
        os.makedirs(path, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")
        mounted.append(str(path))
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", path], check=False)


def fill(directory):
    """Write a file in `directory` until the file system is full; returns its path."""
    path = os.path.join(directory, "filler")
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    with open(path, "ab", buffering=0) as f:      # and the last few bytes of the last block
        for _ in range(65536):
            try:
                f.write(b"\0")
            except OSError:
                break
    return path


def send(address, X, y, first_seq, n, producer_id="p"):
    with Producer(address, producer_id=producer_id, window=4, timeout=20, first_seq=first_seq) as prod:
        for k in range(n):
            i = ((first_seq + k) * BATCH) % (len(X) - BATCH)
            prod.send(X[i:i + BATCH], y[i:i + BATCH], split="train")
    return prod


def test_disk_full_while_checkpointing(daemons, mount_tmpfs, tmp_path):
    X, y, Xte, _ = split("digits")
    state = mount_tmpfs(tmp_path / "state", "2m")
    mount_tmpfs(state / "wal", "32m")            # the log on its own volume keeps taking batches
    d = daemons(state_dir=state, env=SMALL_MODEL)
    assert send(d.ingest, X, y, 0, 10).rejected == []
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["batches_trained"] == 10, what="10 batches")
        first = c.checkpoint()["path"]
        with open(first, "rb") as f:
            first_bytes = f.read()
        filler = fill(state)

        # On command: an error reply, logged, counted; nothing half-written left behind.
        with pytest.raises(LearndError) as refused:
            c.checkpoint()
        assert refused.value.code == "internal" and "could not be written" in refused.value.message
        assert "No space left on device" in d.log()
        assert "checkpoint (command) failed" in d.log()
        assert d.metrics()['learnd_checkpoints_total{outcome=error}'] == 1

        # Training and serving go on.
        assert send(d.ingest, X, y, 10, 10).rejected == []
        d.wait_until(lambda: c.status()["batches_trained"] == 20, what="20 batches")
        version = d.settled()["model_version"]
        with Predictor(d.predict) as p:
            d.wait_until(lambda: p.predict(Xte[:5]).model_version == version, what="a snapshot of step 20")

        # Periodic checkpoints keep failing, each one counted, at the configured pace.
        c.set(checkpoint_interval_s=0.5)
        time.sleep(2.2)
        c.set(checkpoint_interval_s=0.0)
        failures = d.metrics()['learnd_checkpoints_total{outcome=error}'] - 1
        assert 2 <= failures <= 6, failures

        assert glob.glob(str(state / ".tmp-*")) == []
        assert sorted(glob.glob(str(state / "checkpoint-*.ckpt"))) == [first]
        with open(first, "rb") as f:
            assert f.read() == first_bytes
        decode_checkpoint(first_bytes)

        # Room again: the next checkpoint is written and holds everything trained.
        os.unlink(filler)
        second = c.checkpoint()["path"]
        assert second != first and c.status()["last_checkpoint"] == second
    assert d.stop() == 0
    d = daemons(state_dir=state, env=SMALL_MODEL)
    with Control(d.control) as c:
        assert c.status()["batches_trained"] == 20
    assert d.metrics()["learnd_checkpoint_load_failures_total"] == 0


def test_disk_full_under_the_log_refuses_the_batch_and_takes_its_resend(daemons, mount_tmpfs, tmp_path):
    X, y, _, _ = split("digits")
    state = tmp_path / "state"
    mount_tmpfs(state / "wal", "1m")
    d = daemons(state_dir=state, env=SMALL_MODEL)
    assert send(d.ingest, X, y, 0, 4).rejected == []
    filler = fill(state / "wal")
    frames = protocol.encode({"op": "train", "producer": "p", "seq": 4, "split": "train"}, {"x": X[:BATCH], "y": y[:BATCH]})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.ingest)
    try:
        sock.send_multipart(frames)
        assert sock.poll(20_000)
        refused = protocol.decode(sock.recv_multipart(), reply=True).header
        os.unlink(filler)
        sock.send_multipart(frames)                  # the same (producer, seq) again
        assert sock.poll(20_000)
        taken = protocol.decode(sock.recv_multipart(), reply=True).header
    finally:
        sock.close()
        ctx.term()
    assert refused["ok"] is False and refused["error"]["code"] == "internal"
    assert "No space left on device" in refused["error"]["message"]
    # Not a duplicate: what the log refused was never acknowledged, so it is trained now.
    assert taken["ok"] is True and taken["accepted"] == BATCH and not taken.get("duplicate")
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["samples_trained"] == 5 * BATCH, what="5 batches")


def serve(state_dir, *args, timeout=60):
    return subprocess.run(serve_command(state_dir, args), capture_output=True, text=True, timeout=timeout)


def one_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_state_dir_under_a_regular_file_exits_4(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    r = serve(tmp_path / "file" / "state")
    assert r.returncode == 4
    assert one_line(r.stderr) == (f"learnd serve: state dir {tmp_path / 'file' / 'state'} is not "
                                  "writable: Not a directory")


@pytest.mark.parametrize("sub", ["", "state"])
def test_a_read_only_state_dir_exits_4(tmp_path, mount_tmpfs, sub):
    ro = mount_tmpfs(tmp_path / "ro", "1m", read_only=True)
    state = os.path.join(ro, sub) if sub else str(ro)
    r = serve(state)
    assert r.returncode == 4
    assert one_line(r.stderr) == f"learnd serve: state dir {state} is not writable: Read-only file system"


def test_a_second_daemon_on_a_state_dir_in_use_exits_4(daemons, daemon_mode):
    """Two daemons writing one log and one checkpoint would corrupt both: the second
    waits a moment for the lock (a killed tree's children may still be leaving), then
    says who holds it."""
    first = daemons("state", env=SMALL_MODEL)
    mode = ["--single-process"] if daemon_mode == "single-process" else []
    started = time.monotonic()
    r = subprocess.run(serve_command(first.state_dir, mode), capture_output=True, text=True, timeout=60)
    waited = time.monotonic() - started
    assert r.returncode == 4, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"learnd serve: state dir {first.state_dir} is in use by another learnd (pid {first.proc.pid})")
    assert waited >= 9.0
    assert first.proc.poll() is None                   # the first one is untouched and serving
    with Control(first.control) as c:
        assert c.status()["samples_trained"] == 0


@pytest.mark.parametrize("taken", ["ingest", "predict", "control", "metrics"])
def test_a_port_in_use_exits_3(tmp_path, taken):
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        address = f"127.0.0.1:{port}" if taken == "metrics" else f"tcp://127.0.0.1:{port}"
        r = serve(tmp_path / "state", f"--{taken}={address}")
    assert r.returncode == 3
    assert "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]           # after the lines of what did bind
    if taken == "metrics":
        assert line == f"learnd serve: cannot serve metrics on {address}: Address already in use"
    else:
        assert line == f"learnd serve: cannot bind the {taken} socket to {address}: Address already in use"
