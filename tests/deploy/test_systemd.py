"""deploy/systemd/learnd.service: hardened, restartable, and accepted by systemd."""
from __future__ import annotations

import configparser
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

from learnd.clients.cli import build_parser

from . import files

UNIT = files.DEPLOY / "systemd" / "learnd.service"
INSTALLED_LEARND = "/opt/learnd/bin/learnd"


def _service():
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_a_dynamic_user_with_state_and_cache_directories():
    s = _service()
    assert s["DynamicUser"] == "yes"
    assert s["StateDirectory"] == "learnd" and s["CacheDirectory"] == "learnd"
    assert "NUMBA_CACHE_DIR=%C/learnd/numba" in s["Environment"].split()


def test_hardening():
    s = _service()
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
                       "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
                       "SystemCallFilter": "@system-service"}.items():
        assert s[key] == value, key
    # Numba writes compiled kernels into executable memory.
    assert s.get("MemoryDenyWriteExecute", "no") == "no"


def test_restart_policy_and_a_stop_timeout_longer_than_the_drain():
    s = _service()
    assert s["Restart"] == "on-failure" and s["KillSignal"] == "SIGTERM"
    assert int(s["TimeoutStopSec"]) > 60
    # Configuration (2) and state-dir (4) errors do not go away on a restart.
    assert set(s["RestartPreventExitStatus"].split()) == {"2", "4", "6"}


def test_exec_start_is_a_valid_learnd_serve_command():
    argv = shlex.split(_service()["ExecStart"].replace("${STATE_DIRECTORY}", "/var/lib/learnd"))
    assert argv[0] == INSTALLED_LEARND
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.state_dir == "/var/lib/learnd"


def _unit_with_a_learnd_that_exists(tmp_path):
    """The unit, its ExecStart pointed at this environment's learnd (systemd checks it)."""
    beside = pathlib.Path(sys.executable).parent / "learnd"
    learnd = str(beside) if beside.exists() else shutil.which("learnd")
    if learnd is None:
        pytest.fail("no installed learnd console script to point the unit at")
    path = tmp_path / UNIT.name
    path.write_text(UNIT.read_text().replace(INSTALLED_LEARND, learnd))
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
                    reason="systemd is not installed (.ci/run installs it)")
def test_systemd_analyze_verify(tmp_path):
    unit = _unit_with_a_learnd_that_exists(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
                    reason="systemd is not installed (.ci/run installs it)")
def test_systemd_analyze_security_rates_the_unit_well_exposed_below_two(tmp_path, figures):
    unit = _unit_with_a_learnd_that_exists(tmp_path)
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20",
                             str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [l for l in result.stdout.splitlines() if "Overall exposure level" in l]
    figures(line.strip())
    assert float(line.split(":")[1].split()[0]) < 2.0
