"""Published model versions in shared memory: one immutable file per publication.

The trainer writes each snapshot (`Snapshot.to_bytes()`) whole into its own file in a
directory on a memory file system (/dev/shm where there is one), renames it into place,
and only then stores its publication number in the 8-byte `current` file that every
reader maps.  A reader that sees number n opens `snap-n`, maps it read-only and predicts
from the mapped arrays in place (engine.ensemble.snapshot_from_buffer: one model's, or an
ensemble's); it never sees a half-written
snapshot, because a file is complete before its name exists and is never written again.
The publisher keeps the newest `keep` files and unlinks older ones: a reader that still
maps an unlinked one keeps its pages, and one too slow to open a file in time reads
`current` again.

Publication numbers rise across restarts of the publisher (it continues from the number
in `current`), so a reader never mistakes a new snapshot for one it has cached, even when
a restarted trainer publishes a model version number again.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import tempfile

import numpy as np

from learnd.engine.ensemble import snapshot_from_buffer

CURRENT = "current"
KEEP = 8
READ_ATTEMPTS = 16


def default_directory(state_dir):
    """The shared-memory directory of a state dir: on /dev/shm when there is one (RAM),
    else inside the state dir (the page cache shares it all the same).  Named after the
    state dir, so a restarted daemon finds and reuses the same one."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    if base is None:
        return os.path.join(state_dir, "snapshots")
    key = hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:16]
    return os.path.join(base, f"learnd-{os.getuid()}-{key}")


def _name(seq):
    return f"snap-{seq:016d}"


class SnapshotPublisher:
    """The writing side (the trainer): `publish(snapshot)` makes it the current one."""

    def __init__(self, directory, keep=KEEP):
        self.directory = directory
        self.keep = keep
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, CURRENT)
        if not os.path.exists(path):
            tmp = tempfile.NamedTemporaryFile(dir=directory, prefix=".current-", delete=False)
            with tmp:
                tmp.write(bytes(8))
            os.replace(tmp.name, path)
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, 8)
        self._current = np.ndarray((1,), dtype="<i8", buffer=self._map)
        self.seq = int(self._current[0])
        for name in os.listdir(directory):      # a crash mid-write leaves a temporary file
            if name.startswith(".snap-"):
                os.unlink(os.path.join(directory, name))

    def publish(self, snapshot):
        """Write `snapshot` (an engine Snapshot, or its to_bytes()) and make it current;
        returns (publication number, the bytes written)."""
        data = snapshot if isinstance(snapshot, (bytes, bytearray, memoryview)) else snapshot.to_bytes()
        seq = self.seq + 1
        tmp = os.path.join(self.directory, "." + _name(seq))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(self.directory, _name(seq)))
        # One aligned 8-byte store: a reader sees the old number or the new, never a mix.
        self._current[0] = seq
        self.seq = seq
        self._trim()
        return seq, data

    def _trim(self):
        old = self.seq - self.keep
        if old < 1:
            return
        path = os.path.join(self.directory, _name(old))
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def remove_all(self):
        """Delete every snapshot file and `current` (the daemon is stopping for good)."""
        self.close()
        for name in os.listdir(self.directory):
            os.unlink(os.path.join(self.directory, name))
        os.rmdir(self.directory)

    def close(self):
        if self._map is not None:
            del self._current
            self._map.close()
            os.close(self._fd)
            self._map = None


class SnapshotReader:
    """The reading side (a predict worker): `current()` is the newest published
    Snapshot, its arrays views of the mapped file, or None before the first."""

    def __init__(self, directory):
        self.directory = directory
        self._map = None
        self._current = None
        self.seq = 0
        self.snapshot = None

    def _open_current(self):
        try:
            fd = os.open(os.path.join(self.directory, CURRENT), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            self._map = mmap.mmap(fd, 8, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._current = np.ndarray((1,), dtype="<i8", buffer=self._map)
        return True

    def current(self):
        """The newest snapshot (cheap when nothing changed: one load from shared memory)."""
        if self._current is None and not self._open_current():
            return None
        for _ in range(READ_ATTEMPTS):
            seq = int(self._current[0])
            if seq == self.seq or seq == 0:
                return self.snapshot
            try:
                fd = os.open(os.path.join(self.directory, _name(seq)), os.O_RDONLY)
            except FileNotFoundError:     # trimmed before we got to it: a newer one is current
                continue
            try:
                size = os.fstat(fd).st_size
                buf = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            snap = snapshot_from_buffer(buf)
            snap.buffer = buf           # the mapping lives as long as the snapshot
            self.snapshot, self.seq = snap, seq
            return snap
        return self.snapshot

    def close(self):
        self.snapshot = None
        if self._map is not None:
            del self._current
            self._current = None
            self._map.close()
            self._map = None
