"""`learnd follow` processes for the tests: on ephemeral 127.0.0.1 ports, found through
the endpoints file they write once serving."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from learnd.clients.client import Control
from tests.conftest import START_TIMEOUT_S, Daemon


class FollowerProcess(Daemon):
    """One `learnd follow --from SOURCE`; the Daemon helpers (http, metrics, wait_until,
    stop, kill, log) work on it unchanged."""

    def __init__(self, directory, source, args=(), env=None):
        super().__init__(directory, args, env)
        self.source = source

    def start(self, timeout=START_TIMEOUT_S):
        os.makedirs(self.state_dir, exist_ok=True)
        path = os.path.join(self.state_dir, "endpoints.json")
        self._log = open(self.log_path, "ab")
        argv = [sys.executable, "-m", "learnd", "follow", "--from", self.source,
                "--predict", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0",
                "--metrics", "127.0.0.1:0", "--endpoints", path, *self.args]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=None if self.env is None else {**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the follower exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with open(path) as f:
                    data = json.load(f)
                if data.get("pid") == self.proc.pid:
                    self.endpoints = data
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the follower did not start in {timeout} s:\n{self.log()}")

    def status(self, **curve):
        with Control(self.control, timeout=10, **curve) as c:
            return c.status()

    def wait_for_version(self, version, timeout=30.0):
        self.wait_until(lambda: self.status()["model_version"] == version, timeout,
                        what=f"the follower serving version {version}")
