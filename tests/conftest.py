"""Shared fixtures: real learnd daemons in subprocesses on ephemeral loopback ports."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from learnd.clients.client import Control
from learnd.clients.launch import start_daemon
from learnd.daemon.serving.snapshots import default_directory

START_TIMEOUT_S = 90.0     # a cold Numba cache compiles every kernel first


class Daemon:
    """One `learnd serve` process with every socket on an ephemeral 127.0.0.1 port."""

    def __init__(self, state_dir, args=(), env=None):
        self.state_dir = str(state_dir)
        self.args = list(args)
        self.env = env
        self.proc = None
        self.endpoints = {}
        self.log_path = os.path.join(os.path.dirname(self.state_dir),
                                     os.path.basename(self.state_dir) + ".log")

    def start(self, timeout=START_TIMEOUT_S):
        try:
            self.proc, self.endpoints, self._log = start_daemon(
                self.state_dir, self.args, self.env, log_path=self.log_path, timeout=timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log()}") from None
        return self

    @property
    def ingest(self):
        return self.endpoints["ingest"]

    @property
    def predict(self):
        return self.endpoints["predict"]

    @property
    def control(self):
        return self.endpoints["control"]

    @property
    def metrics_url(self):
        return self.endpoints["metrics"]

    def http(self, path):
        """(status, body) of GET path on the metrics server."""
        url = self.metrics_url.rsplit("/", 1)[0] + path
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self):
        """{sample name with sorted labels: value} from a real scrape."""
        _, text = self.http("/metrics")
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def wait_until(self, predicate, timeout=120.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"{what} not reached in {timeout} s")

    def settled(self, timeout=120.0, **control_options):
        """Status once the trainer is idle: nothing queued, every replay step its new
        steps earned taken, and the model they made published.  Then model_version is
        batches_trained + replay steps and the model stays as it is until new rows come."""
        with Control(self.control, **control_options) as c:
            def idle():
                s = c.status()
                frozen = s["early_stopping"]["frozen"]      # a frozen trainer takes no step
                return (s["queue_depth"] == 0 and (s["replay"]["pending"] == 0 or frozen)
                        and s["model_version"] == s["batches_trained"] + s["replay"]["steps"])
            self.wait_until(idle, timeout, what="an idle trainer")
            return c.status()

    def stop(self, sig=signal.SIGTERM, timeout=60.0):
        """Send `sig`, wait for the exit, return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self._log.close()
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


MODES = ("tree", "single-process")
# The arguments of each mode.  "tree-2-workers" runs two predict workers behind the
# supervisor's proxy; the tests about the predict path name it beside MODES
# (@pytest.mark.parametrize("daemon_mode", ALL_MODES)).
MODE_ARGS = {"tree": [], "single-process": ["--single-process"],
             "tree-2-workers": ["--set", "predict_workers=2"]}
ALL_MODES = tuple(MODE_ARGS)


@pytest.fixture(params=MODES)
def daemon_mode(request):
    """How `learnd serve` runs: the process tree (the default) or --single-process.  Every
    test that starts daemons runs in both, unless it names the modes it is about with
    @pytest.mark.parametrize("daemon_mode", [...])."""
    return request.param


@pytest.fixture
def daemons(tmp_path, daemon_mode):
    """A factory of started daemons (in `daemon_mode`); every one is killed at the end of the test."""
    started = []
    mode_args = MODE_ARGS[daemon_mode]

    def start(name="state", args=(), env=None, state_dir=None):
        d = Daemon(state_dir or tmp_path / name, [*mode_args, *args], env)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.kill()
        # A killed daemon leaves its run dir on /dev/shm (a clean stop removes it): the
        # machine's memory, not the test's tmp_path, so it goes here.
        shutil.rmtree(default_directory(d.state_dir), ignore_errors=True)


@pytest.fixture
def seed():
    return 12345


_FIGURES = pytest.StashKey[list]()


@pytest.fixture
def figures(request):
    """figures(line): a measured figure, printed in pytest's terminal summary (so CI logs
    show it without -s)."""
    lines = request.config.stash.setdefault(_FIGURES, [])
    return lambda line: lines.append(f"{request.node.name}: {line}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("learnd figures")
        for line in lines:
            terminalreporter.write_line(line)
