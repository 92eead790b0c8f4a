"""Starting a local `learnd serve` subprocess on ephemeral loopback ports (demo, benchmarks)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
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


def terminate(proc, timeout=60.0):
    """SIGTERM `proc` (a Popen) if it runs, kill it if it has not exited within `timeout`
    seconds; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def stop_daemon(proc, log=None, timeout=60.0):
    """SIGTERM the daemon (it drains, checkpoints and exits), kill it if it has not exited
    within `timeout` seconds, close its log; returns the exit code."""
    terminate(proc, timeout)
    if log is not None:
        log.close()
    return proc.returncode


# -- a data-parallel group ---------------------------------------------------------------
PORT_STRIDE = 10        # rank r listens on every configured port + 10 r (daemon.training.parallel)
GROUP_PORTS = 5         # ingest, predict, control, snapshots, metrics: base .. base + 4


def mpiexec():
    """The mpiexec beside this interpreter (the `mpich` wheel puts it there), else the
    one on PATH; None without MPI."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")


def free_port_base(ranks, low=20000, high=60000, tries=200, seed=None):
    """A base port whose block base .. base + 4, shifted by 10 r for every rank, is free on
    127.0.0.1 now: rank r's ports cannot be the OS's choice (port 0), they are the base's
    plus 10 r.  Raises RuntimeError if no base is found."""
    rng = random.Random(seed)
    for _ in range(tries):
        base = rng.randrange(low, high - PORT_STRIDE * ranks)
        ports = [base + PORT_STRIDE * r + k for r in range(ranks) for k in range(GROUP_PORTS)]
        if all(_port_free(p) for p in ports):
            return base
    raise RuntimeError(f"no free block of ports for {ranks} ranks in {low}..{high}")


def _port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def group_command(ranks, state_dir, base, extra_args=()):
    """`mpiexec -n ranks learnd serve --data-parallel` with rank 0's sockets on base .. base + 4."""
    return [mpiexec(), "-n", str(ranks), sys.executable, "-m", "learnd", "serve", "--data-parallel",
            "--state-dir", str(state_dir), "--ingest", f"tcp://127.0.0.1:{base}",
            "--predict", f"tcp://127.0.0.1:{base + 1}", "--control", f"tcp://127.0.0.1:{base + 2}",
            "--snapshots", f"tcp://127.0.0.1:{base + 3}", "--metrics", f"127.0.0.1:{base + 4}", *extra_args]


def start_group(ranks, state_dir, base, extra_args=(), env=None, log_path=None, timeout=START_TIMEOUT_S):
    """(mpiexec process, [endpoints of each rank], log file) once every rank serves: each
    writes <state_dir>/rank-R/endpoints.json.  The ranks are started in a session of their
    own, so that stop_group can signal all of them."""
    os.makedirs(state_dir, exist_ok=True)
    log = open(log_path or os.path.join(state_dir, "group.log"), "ab")
    proc = subprocess.Popen(group_command(ranks, state_dir, base, extra_args), stdout=log,
                            stderr=subprocess.STDOUT, env=None if env is None else {**os.environ, **env},
                            start_new_session=True)
    started = time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            raise RuntimeError(f"mpiexec exited with {proc.returncode}; see {log.name}")
        found = []
        for r in range(ranks):
            path = os.path.join(state_dir, f"rank-{r}", "endpoints.json")
            try:
                if os.path.getmtime(path) >= started:
                    with open(path) as f:
                        found.append(json.load(f))
            except (OSError, ValueError):
                break
        if len(found) == ranks:
            return proc, found, log
        time.sleep(0.05)
    stop_group(proc, [], log, kill=True)
    raise RuntimeError("the group did not start in time")


def stop_group(proc, endpoints, log=None, kill=False, timeout=60.0):
    """SIGTERM mpiexec (it passes the signal to every rank; they drain, checkpoint
    together and exit), or with kill SIGKILL every rank and mpiexec at once.  Returns
    mpiexec's exit code."""
    if kill:
        for info in endpoints:
            try:
                os.kill(info["pid"], signal.SIGKILL)
            except (ProcessLookupError, KeyError):
                pass
        if proc.poll() is None:
            proc.kill()
    terminate(proc, timeout)     # SIGTERM unless it is already gone; a kill if it stays
    if kill:   # the ranks are the proxy's children, not mpiexec's: wait until they are gone
        for info in endpoints:
            _wait_gone(info.get("pid"), 10.0)
    if log is not None:
        log.close()
    return proc.returncode


def _wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
