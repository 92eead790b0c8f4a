"""Starting a local `learnd serve` subprocess on ephemeral loopback ports (demo, benchmarks)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

START_TIMEOUT_S = 120.0   # a cold Numba cache compiles every kernel first


def serve_command(state_dir, extra_args=()):
    """The `learnd serve` command line for a state dir, on ephemeral loopback ports;
    later arguments in extra_args override those addresses."""
    return [sys.executable, "-m", "learnd", "serve", "--state-dir", str(state_dir),
            "--ingest", "tcp://127.0.0.1:0", "--predict", "tcp://127.0.0.1:0",
            "--control", "tcp://127.0.0.1:0", "--snapshots", "tcp://127.0.0.1:0",
            "--metrics", "127.0.0.1:0", *extra_args]


def start_daemon(state_dir, extra_args=(), env=None, log_path=None, timeout=START_TIMEOUT_S):
    """(process, endpoints dict, log file) of a daemon whose sockets are all bound.

    The daemon writes its bound addresses to <state_dir>/endpoints.json; its output is
    appended to log_path (default <state_dir>/daemon.log).  Later arguments in
    extra_args override the ephemeral addresses.
    """
    os.makedirs(state_dir, exist_ok=True)
    log = open(log_path or os.path.join(state_dir, "daemon.log"), "ab")
    proc = subprocess.Popen(serve_command(state_dir, extra_args), stdout=log, stderr=subprocess.STDOUT,
                            env=None if env is None else {**os.environ, **env})
    endpoints = os.path.join(state_dir, "endpoints.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            raise RuntimeError(f"the daemon exited with {proc.returncode}; see {log.name}")
        try:
            with open(endpoints) as f:
                data = json.load(f)
            if data.get("pid") == proc.pid:
                return proc, data, log
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    log.close()
    raise RuntimeError("the daemon did not start in time")


def stop_daemon(proc, log=None, timeout=60.0):
    """SIGTERM the daemon (it drains, checkpoints and exits), kill it if it has not exited
    within `timeout` seconds, close its log; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if log is not None:
        log.close()
    return proc.returncode
