"""Write-ahead log of accepted train messages, so an acknowledged batch survives a crash.

Records are appended to segment files `wal-<first lsn>.log` in the state dir's wal/
folder; each record is  u32 length | u32 crc32 | payload,  where the payload is
msgpack [lsn, [frame, ...]] holding the message's own frames (header and arrays), or
[lsn, [frame, ...], codes] where codes (one int8 per row: its split) says that ingest
checked the message and assigned its rows' splits: whoever reads the record on trusts
its checksum instead of checking and hashing every row again.  Writes are grouped:
the caller appends, then calls `sync()` once for many records before acknowledging
them.  A torn record at the end (a crash mid-write) is cut off when the log is opened.
"""
from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from typing import NamedTuple

import msgpack

log = logging.getLogger("learnd.wal")

_HEAD = struct.Struct("<II")
_BIN32 = struct.Struct(">BI")    # msgpack's bin 32 header: 0xc6, then the length
SEGMENT_BYTES = 64 * 1024 * 1024


class Record(NamedTuple):
    """One logged message: its lsn, its frames (header and arrays, bytes), and the split
    code of each of its rows as ingest assigned them (bytes of int8; None in a record
    ingest did not check, e.g. one written by an older version)."""

    lsn: int
    frames: list
    codes: bytes | None = None


def _record_parts(lsn, frames, codes):
    """The buffers of one record, head first, without copying the frames: the payload
    is the msgpack of [lsn, [frame, ...]] (+ codes), each frame as bin 32."""
    packer = msgpack.Packer()
    parts = [None, packer.pack_array_header(2 if codes is None else 3) + packer.pack(lsn)
             + packer.pack_array_header(len(frames))]
    for buffer in [*frames, *([] if codes is None else [codes])]:
        view = memoryview(buffer).cast("B")
        parts += [_BIN32.pack(0xC6, view.nbytes), view]
    crc, length = 0, 0
    for part in parts[1:]:
        crc = zlib.crc32(part, crc)
        length += len(part)
    parts[0] = _HEAD.pack(length, crc)
    return parts, _HEAD.size + length


def list_segments(directory):
    """[(first_lsn, path)] of the log's segment files in `directory`, sorted by first lsn."""
    out = []
    for name in os.listdir(directory):
        if name.startswith("wal-") and name.endswith(".log"):
            try:
                out.append((int(name[4:-4]), os.path.join(directory, name)))
            except ValueError:
                continue
    return sorted(out)


def _decode(body):
    """The Record in a payload whose checksum matched."""
    fields = msgpack.unpackb(body, raw=False)
    return Record(fields[0], fields[1], fields[2] if len(fields) > 2 else None)


class WriteAheadLog:
    def __init__(self, directory, segment_bytes=SEGMENT_BYTES):
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.last_lsn = 0
        self._fd = None
        self._size = 0
        self._dirty = False

    # -- files ---------------------------------------------------------------------------
    def _read(self, path, repair):
        """Yield the Records of the whole records in one segment; cut a torn tail."""
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            if pos + _HEAD.size > len(data):
                break
            length, crc = _HEAD.unpack_from(data, pos)
            body = data[pos + _HEAD.size:pos + _HEAD.size + length]
            if len(body) != length or zlib.crc32(body) != crc:
                break
            yield _decode(body)
            pos += _HEAD.size + length
        if pos < len(data):
            log.warning("write-ahead log %s: %d bytes after the last whole record%s",
                        path, len(data) - pos, " cut off" if repair else "")
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(pos)
                    os.fsync(f.fileno())

    def open(self):
        """Find the last lsn (repairing a torn tail) and open the newest segment for appends."""
        os.makedirs(self.directory, exist_ok=True)
        segments = list_segments(self.directory)
        for i, (first, path) in enumerate(segments):
            # An empty newest segment (a crash right after creating it) still says
            # how far the numbers went.
            self.last_lsn = max(self.last_lsn, first - 1)
            for record in self._read(path, repair=(i == len(segments) - 1)):
                self.last_lsn = max(self.last_lsn, record.lsn)
        if segments:
            self._open_segment(segments[-1][1])
            # Records a killed process wrote but never synced are replayed (and their
            # resends acknowledged as duplicates): make them durable first.
            os.fsync(self._fd)
        return self

    def _open_segment(self, path):
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- writing -----------------------------------------------------------------------
    def append(self, frames, codes=None):
        """Append one message's frames (bytes-like, not copied) and, for a message ingest
        checked, its rows' split codes ((m,) int8); returns its lsn.  Not yet durable."""
        lsn = self.last_lsn + 1
        if self._fd is None or self._size >= self.segment_bytes:
            self._open_segment(os.path.join(self.directory, f"wal-{lsn:016d}.log"))
        parts, size = _record_parts(lsn, frames, codes)
        written = os.writev(self._fd, parts)
        if written != size:  # a short write on a full disk: undo, report
            os.ftruncate(self._fd, self._size)
            raise OSError(errno.ENOSPC, f"No space left on device: the write-ahead log took {written} "
                                        f"of {size} bytes")
        self._size += size
        self.last_lsn = lsn
        self._dirty = True
        return lsn

    def sync(self):
        """Make every appended record durable."""
        if self._dirty and self._fd is not None:
            os.fdatasync(self._fd)
            self._dirty = False

    # -- reading and trimming --------------------------------------------------------------
    def replay(self, after_lsn):
        """Yield the Record of every record with lsn > after_lsn, in order."""
        segments = list_segments(self.directory)
        for i, (first, path) in enumerate(segments):
            nxt = segments[i + 1][0] if i + 1 < len(segments) else None
            if nxt is not None and nxt - 1 <= after_lsn:
                continue
            for record in self._read(path, repair=False):
                if record.lsn > after_lsn:
                    yield record

    def trim(self, upto_lsn):
        """Delete segments whose records all have lsn <= upto_lsn (never the open one)."""
        segments = list_segments(self.directory)
        for i, (first, path) in enumerate(segments[:-1]):
            if segments[i + 1][0] - 1 <= upto_lsn:
                os.unlink(path)

    def close(self):
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None


PAST = object()      # LogReader._record: a whole record beyond the lsn asked for


class LogReader:
    """The log read as a queue: the records after a position, in order, as they are
    appended (the trainer's side; the appending side is WriteAheadLog).

    `read(upto_lsn)` returns the whole records with position < lsn <= upto_lsn, reading
    on from where the last call stopped, across segment files.  The caller passes an lsn
    the writer has already written (and made durable), so every record up to it is whole
    in the files; a record being written after it is never taken.  Segments trimmed away
    under the reader (older than any checkpoint needs) are skipped; one it has open stays
    readable until it moves on.
    """

    def __init__(self, directory, after_lsn=0):
        self.directory = directory
        self.position = after_lsn        # newest lsn returned
        self._path = None
        self._file = None

    def _next_segment(self):
        """Open the segment to read next; False when there is none after the open one."""
        segments = list_segments(self.directory)
        if self._path is None:
            # The last segment starting at or before position + 1, else the oldest left.
            holding = [p for first, p in segments if first <= self.position + 1]
            chosen = holding[-1] if holding else (segments[0][1] if segments else None)
        else:
            # Names are zero-padded first lsns, so they sort in log order.
            later = [p for _, p in segments if p > self._path]
            chosen = later[0] if later else None
        if chosen is None:
            return False
        if self._file is not None:
            self._file.close()
        self._file, self._path = open(chosen, "rb"), chosen
        return True

    def _record(self, upto_lsn):
        """The next Record of the open segment; None at the segment's
        end, PAST for a whole record after upto_lsn (both left unread)."""
        start = self._file.tell()
        head = self._file.read(_HEAD.size)
        if len(head) == _HEAD.size:
            length, crc = _HEAD.unpack(head)
            body = self._file.read(length)
            if len(body) == length:
                if zlib.crc32(body) != crc:
                    raise ValueError(f"write-ahead log {self._path}: the record at byte {start} "
                                     f"fails its checksum")
                record = _decode(body)
                if record.lsn <= upto_lsn:
                    return record
                self._file.seek(start)
                return PAST
        self._file.seek(start)
        return None

    def read(self, upto_lsn, max_records=64):
        """[Record] of at most max_records records after the position, up to upto_lsn."""
        out = []
        if upto_lsn <= self.position or (self._file is None and not self._next_segment()):
            return out
        while len(out) < max_records and self.position < upto_lsn:
            record = self._record(upto_lsn)
            if record is PAST:
                break
            if record is None:
                # Past this segment's last whole record: the rest is in the next segment.
                if not self._next_segment():
                    break
                continue
            if record.lsn > self.position:
                out.append(record)
                self.position = record.lsn
        return out

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
