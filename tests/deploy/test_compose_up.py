"""deploy/compose.yaml brought up for real with Debian's docker-compose: learnd, the
Prometheus built from Debian's package on the same base, the replay service and the two
followers.  Prometheus scrapes learnd and the followers inside the compose network and
loads the alert rules (asked through its API); `down` leaves nothing behind.

HAProxy and Grafana come from public images that cannot be pulled here: the test leaves
those two services out (their configuration is checked statically in test_compose.py
and test_grafana.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import yaml

from . import dockerhost, files

pytestmark = pytest.mark.docker

SERVICES = ("learnd", "prometheus", "replay", "follower-1", "follower-2")
UP_TIMEOUT_S = 240
DEADLINE_S = 120.0


def _compose_cli():
    path = shutil.which("docker-compose")
    if path is None:
        reason = "no docker-compose (Debian's docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def images():
    """learnd:latest and learnd-prometheus:latest, the names compose.yaml runs, built on
    the Debian base (compose 1.29 builds without BuildKit, so they are built first)."""
    dockerhost.require_engine()
    _compose_cli()
    dockerhost.build_learnd("learnd:latest")
    dockerhost.build_prometheus("learnd-prometheus:latest")


def _test_file(tmp_path):
    """compose.yaml as it is, but for the services this test runs and with every port
    published on an ephemeral 127.0.0.1 port (a test must not take the fixed ones)."""
    compose = files.load_yaml(files.DEPLOY / "compose.yaml")
    compose["services"] = {name: compose["services"][name] for name in SERVICES}
    for service in compose["services"].values():
        if "ports" in service:
            service["ports"] = [f"127.0.0.1::{p.rsplit(':', 1)[1]}" for p in service["ports"]]
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return path


class Project:
    def __init__(self, path):
        self.name = f"learndtest{uuid.uuid4().hex[:8]}"
        self.path = path
        # One pass of the demo data, so the replay service ends within the test.
        self.env = {**os.environ, "REPLAY_PASSES": "1"}

    def run(self, *args, timeout=UP_TIMEOUT_S, check=True):
        cmd = [_compose_cli(), "-p", self.name, "-f", str(self.path), "--project-directory",
               str(files.DEPLOY), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out

    def container(self, service):
        (cid,) = self.run("ps", "-q", service).stdout.split()
        return cid

    def left_behind(self):
        """Containers (running or not), networks and volumes of this project that exist."""
        label = f"label=com.docker.compose.project={self.name}"
        return {"containers": dockerhost.docker("ps", "-aq", "--filter", label).stdout.split(),
                "networks": dockerhost.docker("network", "ls", "-q", "--filter", label).stdout.split(),
                "volumes": dockerhost.docker("volume", "ls", "-q", "--filter", label).stdout.split()}


def _api(port, path, **params):
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def _until(what, probe, deadline_s=DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(1.0)
    raise AssertionError(f"{what}: not within {deadline_s:.0f} s (last: {last})")


def test_compose_brings_up_learnd_prometheus_replay_and_followers(images, tmp_path, figures):
    project = Project(_test_file(tmp_path))
    t0 = time.monotonic()
    try:
        project.run("up", "-d", "--no-build", *SERVICES)
        replay = project.container("replay")

        def replay_state():
            state = json.loads(dockerhost.docker("inspect", "--format", "{{json .State}}", replay).stdout)
            return None if state["Running"] else state
        state = _until("the replay service ends", replay_state)
        assert state["ExitCode"] == 0, project.run("logs", "replay", check=False).stdout

        port = dockerhost.host_port(project.container("prometheus"), 9090)

        def targets_up():
            active = _api(port, "targets")["activeTargets"]
            up = {(t["labels"]["job"], t["labels"]["instance"]) for t in active if t["health"] == "up"}
            return up if len(up) == 3 else None
        up = _until("Prometheus scrapes learnd and both followers", targets_up)
        assert up == {("learnd", "learnd:9500"), ("learnd-follower", "follower-1:9500"),
                      ("learnd-follower", "follower-2:9500")}

        # The demo's rows reached the daemon through the compose network, and Prometheus has
        # the figure from its scrape.
        def trained():
            result = _api(port, "query", query='learnd_samples_trained_total{job="learnd"}')["result"]
            return result and float(result[0]["value"][1]) > 0 and result
        _until("learnd_samples_trained_total above 0 in Prometheus", trained)

        # The alert rules are loaded: the same alert names as rules.yml.
        loaded = {r["name"] for g in _api(port, "rules")["groups"] for r in g["rules"] if r["type"] == "alerting"}
        expected = {r["alert"] for g in files.load_yaml(files.RULES)["groups"] for r in g["rules"] if "alert" in r}
        assert loaded == expected

        # Both followers hold the trainer's model.
        lag = _until("both followers current", lambda: (
            r := _api(port, "query", query="learnd_follower_lag_versions == 0")["result"]) and len(r) == 2 and r)
        assert {s["metric"]["instance"] for s in lag} == {"follower-1:9500", "follower-2:9500"}
        figures(f"compose up to every check passed: {time.monotonic() - t0:.1f} s")
    finally:
        project.run("down", "-v", "--timeout", "90", check=False)
    assert project.left_behind() == {"containers": [], "networks": [], "volumes": []}
