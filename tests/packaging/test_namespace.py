"""learnd installs as one import namespace, `learnd`, and nothing else at top level.

The source folders engine/, daemon/ and clients/ become learnd.engine, learnd.daemon and
learnd.clients; a generic top-level name would collide with other distributions (python-daemon
installs `daemon`), so these tests build the real wheel and look inside it, and check that
python-daemon, installed beside learnd by the test extra, still imports and is intact.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where each installed subpackage's source lives (pyproject.toml's package-dir).
SOURCES = {"learnd": "src/learnd", "learnd/engine": "engine", "learnd/daemon": "daemon",
           "learnd/clients": "clients"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The names in the wheel `pip wheel .` builds from this tree (no network: no deps,
    no build isolation; setuptools and wheel come with the test extra)."""
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "--quiet", "-w", str(out), ROOT],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (path,) = [p for p in os.listdir(out) if p.endswith(".whl")]
    with zipfile.ZipFile(out / path) as z:
        return z.namelist()


def test_the_wheel_holds_only_the_learnd_package_at_top_level(wheel):
    top = {name.split("/", 1)[0] for name in wheel}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and next(iter(dist_info)).startswith("learnd-")
    assert top - dist_info == {"learnd"}


def test_every_source_module_and_data_file_is_in_the_wheel(wheel):
    expected = set()
    for installed, source in SOURCES.items():
        for folder, dirs, files in os.walk(os.path.join(ROOT, source)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(folder, os.path.join(ROOT, source))
            for f in files:
                if f.endswith((".py", ".npz", ".json")):
                    expected.add(os.path.normpath(os.path.join(installed, rel, f)))
    missing = sorted(expected - set(wheel))
    assert not missing, f"pyproject.toml's package list misses {missing}"


def _isolated(code):
    """Run `code` in a fresh interpreter that sees only the installed packages: isolated
    mode (no current directory on sys.path) from a directory with no sources in it."""
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(sys.executable), timeout=120)


def test_learnd_imports_from_one_namespace_and_python_daemon_beside_it():
    r = _isolated(
        "import daemon, learnd, learnd.daemon.supervisor.server, learnd.clients.client, learnd.engine\n"
        "from learnd import Model\n"
        "assert hasattr(daemon, 'DaemonContext'), daemon.__file__\n"
        "assert Model is learnd.engine.Model\n"
        "import importlib.util as u\n"
        "assert all(u.find_spec(n) is None for n in ('engine', 'clients')), 'a generic top-level name'\n"
        "print(daemon.__file__)")
    assert r.returncode == 0, r.stderr
    assert "learnd" not in r.stdout


# Run isolated, so that the metadata read is the installed one (from the source tree, a
# learnd.egg-info of an editable install would answer instead).
_RECORDS = """
import base64, hashlib, importlib.metadata as md, json
def top_and_mismatches(dist):
    files = md.distribution(dist).files or ()
    bad = []
    for f in files:
        if f.hash and f.hash.mode == "sha256":
            with open(f.locate(), "rb") as fh:
                d = base64.urlsafe_b64encode(hashlib.sha256(fh.read()).digest()).rstrip(b"=")
            if d.decode() != f.hash.value:
                bad.append(str(f))
    return sorted({str(f).split("/", 1)[0] for f in files}), bad
print(json.dumps({d: top_and_mismatches(d) for d in ("learnd", "python-daemon")}))
"""


def test_python_daemons_files_are_intact_beside_learnd():
    r = _isolated(_RECORDS)
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    learnd_top, _ = records["learnd"]
    assert not {"daemon", "engine", "clients"} & set(learnd_top), learnd_top
    daemon_top, daemon_bad = records["python-daemon"]
    assert "daemon" in daemon_top and daemon_bad == []


def test_python_dash_m_learnd_is_the_command_line():
    r = subprocess.run([sys.executable, "-I", "-m", "learnd", "--help"], capture_output=True,
                       text=True, cwd=os.path.dirname(sys.executable), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "serve" in r.stdout and "replay" in r.stdout


def test_no_file_imports_the_bare_folder_names():
    """From the repository root the source folders are importable as bare `engine`,
    `daemon`, `clients` too; an import of those would load a second copy of the package
    beside learnd.*, so none is allowed anywhere in the tree."""
    import re
    bare = re.compile(r"^\s*(from|import)\s+(engine|daemon|clients)\b", re.M)
    found = []
    for top in ("src", "engine", "daemon", "clients", "tests", "benchmarks", "deploy"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    with open(path) as fh:
                        for m in bare.finditer(fh.read()):
                            found.append(f"{os.path.relpath(path, ROOT)}: {m.group(0).strip()}")
    assert found == []
