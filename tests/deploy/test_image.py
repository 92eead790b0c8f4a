"""deploy/Dockerfile built and run on a real Docker engine: the image serves, learns from
the host, answers /metrics, stops with exit 0 leaving a checkpoint on its volume, and a
new container on that volume resumes from it."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np
import pytest

from learnd.clients.client import Control, Predictor
from learnd.engine.datasets import load

from . import dockerhost, files

pytestmark = pytest.mark.docker

IMAGE = "learnd:test"
STOP_GRACE_S = 90
DIGITS = files.ROOT / "engine" / "datasets" / "digits.npz"


@pytest.fixture(scope="module")
def image():
    """(tag, build seconds): the image, built on the Debian base for this module."""
    dockerhost.require_engine()
    seconds = dockerhost.build_learnd(IMAGE)
    return IMAGE, seconds


@pytest.fixture
def volume():
    name = f"learnd-test-{uuid.uuid4().hex[:10]}"
    dockerhost.docker("volume", "create", name)
    yield name
    dockerhost.docker("volume", "rm", "-f", name, check=False)


class Container:
    """One `docker run -d` of the image, its ports published on ephemeral 127.0.0.1 ports."""

    def __init__(self, image, volume):
        ports = [a for p in (5555, 5556, 5557, 5558, 9500) for a in ("-p", f"127.0.0.1::{p}")]
        self.id = dockerhost.docker("run", "-d", *ports, "-v", f"{volume}:/var/lib/learnd",
                                    image).stdout.strip()

    def address(self, port):
        return f"tcp://127.0.0.1:{dockerhost.host_port(self.id, port)}"

    def url(self, path):
        return f"http://127.0.0.1:{dockerhost.host_port(self.id, 9500)}{path}"

    def stop(self):
        """`docker stop` (SIGTERM, then the grace): the container's exit code."""
        dockerhost.docker("stop", "-t", str(STOP_GRACE_S), self.id, timeout=STOP_GRACE_S + 30)
        return int(dockerhost.docker("inspect", "--format", "{{.State.ExitCode}}", self.id).stdout)

    def remove(self):
        dockerhost.docker("rm", "-f", self.id, check=False)


@pytest.fixture
def containers():
    made = []
    yield made
    for c in made:
        c.remove()


def _wait_settled(control, rows, still_s=1.5, deadline_s=90.0):
    """Status once `rows` training rows are learned, nothing is queued and the model
    version has not moved for `still_s` (the replay steps the rows earned are taken)."""
    deadline = time.monotonic() + deadline_s
    last, since = None, time.monotonic()
    status = control.status()
    while time.monotonic() < deadline:
        status = control.status()
        key = (status["samples_trained"], status["model_version"])
        if key != last:
            last, since = key, time.monotonic()
        elif (status["samples_trained"] >= rows and status["queue_depth"] == 0
              and time.monotonic() - since >= still_s):
            return status
        time.sleep(0.1)
    raise AssertionError(f"not settled after {rows} rows in {deadline_s} s: {status}")


def test_the_image_is_built_and_its_size_and_build_time_reported(image, figures):
    tag, seconds = image
    size = dockerhost.image_size(tag)
    figures(f"image {tag} on the Debian base: {size / 1e6:.0f} MB, built in {seconds:.1f} s (layers the engine "
            "already holds are reused)")
    assert size < 2e9

    def shell(command):
        return dockerhost.docker("run", "--rm", "--entrypoint", "sh", tag, "-c", command).stdout.split()

    # The state dir is empty in the image (a volume or a bind mount goes there: what the
    # build left in it would be hidden), and the Numba cache the build filled belongs to
    # the daemon's user, so that the daemon uses it instead of compiling again.
    assert shell("find /var/lib/learnd -mindepth 1") == []
    assert int(shell('find "$NUMBA_CACHE_DIR" -name "*.nbi" | wc -l')[0]) > 20
    assert shell('find "$NUMBA_CACHE_DIR" ! -user learnd') == []


def test_serves_learns_answers_metrics_stops_cleanly_and_resumes(image, volume, containers):
    tag, _ = image
    first = Container(tag, volume)
    containers.append(first)
    dockerhost.wait_healthy(first.id)

    # The host replays digits into the published ingest port, as a producer would.
    replay = subprocess.run([sys.executable, "-m", "learnd", "replay", str(DIGITS), "--ingest",
                             first.address(5555), "--quiet"], capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    X, y, _ = load("digits")
    with Control(first.address(5557), timeout=10.0) as control:
        # Rows whose id hashes to a held-out split are not trained on: most of them are.
        before = _wait_settled(control, int(0.7 * len(y)))
    with Predictor(first.address(5556), timeout=10.0) as predictor:
        answer = predictor.predict(X)
    accuracy = float(np.mean(answer.y == y))
    assert answer.model_version == before["model_version"] >= 1
    assert accuracy > 0.8, accuracy                  # one pass of digits, with replay
    with urllib.request.urlopen(first.url("/metrics"), timeout=10) as r:
        metrics = r.read().decode()
    trained = [float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("learnd_samples_trained_total ")]
    assert trained == [before["samples_trained"]]

    assert first.stop() == 0
    listing = dockerhost.docker("run", "--rm", "-v", f"{volume}:/state", "--entrypoint", "ls", tag,
                                "/state").stdout.split()
    assert any(name.startswith("checkpoint-") and name.endswith(".ckpt") for name in listing), listing

    second = Container(tag, volume)
    containers.append(second)
    dockerhost.wait_healthy(second.id)
    with Control(second.address(5557), timeout=10.0) as control:
        after = control.status()
    assert (after["samples_trained"], after["model_version"]) == (before["samples_trained"],
                                                                  before["model_version"])
    with Predictor(second.address(5556), timeout=10.0) as predictor:
        again = predictor.predict(X)
    np.testing.assert_array_equal(again.y, answer.y)
    assert second.stop() == 0


def test_an_unknown_learnd_variable_stops_the_container_with_exit_2(image):
    """The daemon refuses a LEARND_* variable it does not know (a typo would otherwise
    run on defaults): the container exits 2 and says which."""
    tag, _ = image
    run = dockerhost.docker("run", "--rm", "-e", "LEARND_BACH_SIZE=32", tag, check=False, timeout=60)
    assert run.returncode == 2
    assert "LEARND_BACH_SIZE" in run.stderr + run.stdout
