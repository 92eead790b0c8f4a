"""CURVE key pairs as ZeroMQ certificate files: making them and reading them back.

A key pair NAME is two files in the ZeroMQ (czmq/pyzmq) certificate format:
`NAME.key`, the public certificate, to hand to the other side, and `NAME.key_secret`,
which holds both keys and is created with mode 0600.  `learnd keys` lays them out as

    DIR/server/server.key, DIR/server/server.key_secret    the daemon's pair
    DIR/clients/NAME.key, DIR/clients/NAME.key_secret       one pair per client

so that the daemon's `curve_clients_dir` can point at DIR/clients (it reads only the
`*.key` public files there).  Only pyzmq is used: client applications need nothing else.
"""
from __future__ import annotations

import datetime
import glob
import os
import re

import zmq
from zmq.utils import z85

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
Z85_KEY_LENGTH = 40       # a 32-byte Curve25519 key in Z85


class KeyFileError(ValueError):
    """A key file or key directory that is missing, unreadable or not a valid certificate."""


def _valid_z85_key(text):
    """True when `text` (bytes) is a 40-character Z85 encoding of a 32-byte key."""
    if len(text) != Z85_KEY_LENGTH:
        return False
    try:
        return len(z85.decode(text)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def _certificate_text(public_key, secret_key=None):
    """A certificate in the ZeroMQ format (what zmq.auth.load_certificate reads)."""
    kind = "Secret" if secret_key else "Public"
    lines = [f"#   ****  Generated on {datetime.datetime.now().isoformat(timespec='seconds')} by learnd keys  ****",
             f"#   ZeroMQ CURVE {kind} Certificate"]
    if secret_key:
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    lines += ["", "metadata", "curve", f'    public-key = "{public_key.decode()}"']
    if secret_key:
        lines.append(f'    secret-key = "{secret_key.decode()}"')
    return "\n".join(lines) + "\n"


def _write_new(path, text, mode):
    """Write a file that must not exist yet, with `mode` from its creation on (a secret
    never exists with looser permissions, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)   # the umask may have narrowed it; never widened past `mode`
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def create_keypair(directory, name):
    """Make the key pair NAME in `directory` (created, mode 0700, if missing).

    Returns (public certificate path, secret certificate path).  Refuses to overwrite
    an existing pair: a lost secret would lock its holder out.
    """
    if not NAME_PATTERN.match(name):
        raise KeyFileError(f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                           "and start with a letter or digit")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public_path = os.path.join(directory, name + PUBLIC_SUFFIX)
    secret_path = os.path.join(directory, name + SECRET_SUFFIX)
    for path in (public_path, secret_path):
        if os.path.exists(path):
            raise KeyFileError(f"{path} already exists; remove it first to make a new pair")
    public_key, secret_key = zmq.curve_keypair()
    _write_new(secret_path, _certificate_text(public_key, secret_key), 0o600)
    _write_new(public_path, _certificate_text(public_key), 0o644)
    return public_path, secret_path


def _read_certificate(path):
    """(public key, secret key or None) from a certificate file, both Z85 bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    public_key = secret_key = None
    for line in data.splitlines():
        line = line.strip()
        if line.startswith(b"#") or b"=" not in line:
            continue
        field, _, value = line.partition(b"=")
        value = value.strip().strip(b"'\"")
        if field.strip() == b"public-key":
            public_key = value
        elif field.strip() == b"secret-key":
            secret_key = value
    if public_key is None or not _valid_z85_key(public_key):
        raise KeyFileError(f"{path} is not a CURVE certificate: no valid public-key line")
    if secret_key is not None and not _valid_z85_key(secret_key):
        raise KeyFileError(f"{path} has a secret-key line that is not a valid key")
    return public_key, secret_key


def load_secret(path):
    """(public key, secret key), Z85 bytes, from a secret certificate (NAME.key_secret)."""
    public_key, secret_key = _read_certificate(path)
    if secret_key is None:
        raise KeyFileError(f"{path} holds no secret key: give the NAME{SECRET_SUFFIX} file, "
                           f"not NAME{PUBLIC_SUFFIX}")
    if zmq.curve_public(secret_key) != public_key:
        raise KeyFileError(f"{path}: its public key does not belong to its secret key")
    return public_key, secret_key


def load_public(key_or_path):
    """A public key, Z85 bytes, from a certificate file or given as the 40-character key."""
    text = key_or_path.encode() if isinstance(key_or_path, str) else bytes(key_or_path)
    if _valid_z85_key(text) and not os.path.exists(key_or_path):
        return text
    return _read_certificate(key_or_path)[0]


def load_allowlist(directory):
    """{public key: certificate path} of every NAME.key in `directory`."""
    if not os.path.isdir(directory):
        raise KeyFileError(f"client key directory {directory} does not exist or is not a directory")
    keys = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*" + PUBLIC_SUFFIX))):
        keys[_read_certificate(path)[0]] = path
    return keys


def is_private(path):
    """True when nobody but the owner may read the file at `path`."""
    return os.stat(path).st_mode & 0o077 == 0
