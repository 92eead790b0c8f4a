"""A real Docker engine for the deploy tests: its command line, a base image made from
Debian's packages, and the images built from deploy/.

Base images cannot be pulled on a machine that reaches only package indexes, so the
tests make their own: debootstrap a minimal Debian with Python (the packages a user's
base would have: python, pip's venv), `docker import` it, and build the Dockerfiles on
it through their base-image build arguments.  The base is tagged by the hash of what it
holds and kept, so a second run reuses it.

Without an engine these tests skip, with the reason; under CI (.ci/run installs and
starts one) they fail instead.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

from . import files

# What a base for deploy/Dockerfile holds (`python` with its venv module) and what
# deploy/prometheus/Dockerfile needs of its base (apt's sources, which debootstrap writes).
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_TAG = "learnd-test-base:" + hashlib.sha1(" ".join((BASE_SUITE,) + BASE_PACKAGES).encode()).hexdigest()[:12]
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# pip inside the build trusts this bundle (the build secret `pip-ca`): where the machine
# reaches the package index through a TLS-inspecting proxy, its CA is in it.
CA_BUNDLE = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")

BASE_TIMEOUT_S = 600
BUILD_TIMEOUT_S = 900


def docker_cli():
    """The docker command that builds with BuildKit (RUN --mount needs it): Debian's
    docker.io client has it built in (with DOCKER_BUILDKIT=1); a newer client needs its
    buildx plugin.  None when no client is installed."""
    candidates = [c for c in ("/usr/bin/docker", shutil.which("docker")) if c and os.path.exists(c)]
    for cli in candidates:
        probe = subprocess.run([cli, "buildx", "version"], capture_output=True)
        if probe.returncode == 0 or cli == "/usr/bin/docker":
            return cli
    return candidates[0] if candidates else None


def unavailable_reason():
    """Why these tests cannot run here, or None when an engine answers."""
    cli = docker_cli()
    if cli is None:
        return "no docker client (Debian's docker.io)"
    info = subprocess.run([cli, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine answers ({info.stderr.strip().splitlines()[-1:]})"
    return None


def require_engine():
    """Skip (fail under CI) when no Docker engine runs here."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Docker engine: {reason}")
        pytest.skip(reason)


def docker(*args, check=True, timeout=120, env=None, **kwargs):
    """Run the docker CLI; returns the CompletedProcess (text).  On failure with `check`,
    the error names the command and shows its output."""
    run = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})}, **kwargs)
    if check and run.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {run.returncode}:\n{run.stdout}\n{run.stderr}")
    return run


def image_exists(tag):
    return docker("image", "inspect", tag, check=False).returncode == 0


def base_image():
    """The tag of the Debian base image, made with debootstrap and `docker import` when
    this engine does not hold it yet (root only: debootstrap needs it)."""
    if image_exists(BASE_TAG):
        return BASE_TAG
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        reason = "the base image needs debootstrap, run as root"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="learnd-base-") as tmp:
        root = pathlib.Path(tmp) / "rootfs"
        boot = subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
                               BASE_SUITE, str(root), DEBIAN_MIRROR],
                              capture_output=True, text=True, timeout=BASE_TIMEOUT_S)
        assert boot.returncode == 0, f"debootstrap failed:\n{boot.stdout[-3000:]}\n{boot.stderr[-3000:]}"
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            docker("import", "-", BASE_TAG, stdin=tar.stdout, timeout=BASE_TIMEOUT_S)
        finally:
            tar.stdout.close()
            tar.wait(timeout=60)
    return BASE_TAG


def build(dockerfile, context, tag, build_args):
    """Build `dockerfile` in `context` as `tag` with BuildKit, the CA bundle as the secret
    `pip-ca`; returns the seconds it took."""
    args = ["build", "--progress=plain", "-f", str(dockerfile), "-t", tag]
    for name, value in build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    if os.path.exists(CA_BUNDLE):
        args += ["--secret", f"id=pip-ca,src={CA_BUNDLE}"]
    t0 = time.monotonic()
    docker(*args, str(context), timeout=BUILD_TIMEOUT_S, env={"DOCKER_BUILDKIT": "1"})
    return time.monotonic() - t0


def build_learnd(tag):
    """deploy/Dockerfile on the Debian base as `tag`; returns the build's seconds."""
    return build(files.DOCKERFILE, files.ROOT, tag, {"PYTHON_IMAGE": base_image()})


def build_prometheus(tag):
    """deploy/prometheus/Dockerfile (Debian's prometheus package) on the same base."""
    return build(files.DEPLOY / "prometheus" / "Dockerfile", files.DEPLOY / "prometheus", tag,
                 {"DEBIAN_IMAGE": base_image()})


def image_size(tag):
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def host_port(container, port):
    """The 127.0.0.1 port a container's `port` is published on."""
    out = docker("port", container, f"{port}/tcp").stdout.split()
    (addr,) = [a for a in out if a.startswith("127.0.0.1:")]
    return int(addr.rsplit(":", 1)[1])


def health(container):
    return docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()


def wait_healthy(container, deadline_s=120.0):
    """Wait for the image's HEALTHCHECK to report healthy; fails with the logs if not."""
    deadline = time.monotonic() + deadline_s
    status = None
    while time.monotonic() < deadline:
        status = health(container)
        if status == "healthy":
            return
        time.sleep(0.5)
    logs = docker("logs", container, check=False)
    raise AssertionError(f"{container} is {status} after {deadline_s:.0f} s:\n{logs.stdout}\n{logs.stderr}")
