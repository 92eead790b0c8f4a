"""The write-ahead log read as a queue: in order, from a position, across segments."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from learnd.daemon.log.wal import LogReader, WriteAheadLog, list_segments


def _frames(i):
    return [f"header {i}".encode(), bytes([i % 251]) * (i % 97)]


def test_the_reader_takes_records_up_to_the_durable_lsn_and_goes_on_from_there(tmp_path):
    wal = WriteAheadLog(str(tmp_path), segment_bytes=600).open()
    reader = LogReader(str(tmp_path))
    for i in range(1, 11):
        wal.append(_frames(i))
    wal.sync()
    got = reader.read(upto_lsn=6, max_records=100)
    assert [r.lsn for r in got] == [1, 2, 3, 4, 5, 6]
    assert got[2].frames == _frames(3)
    assert [r.lsn for r in reader.read(upto_lsn=10, max_records=3)] == [7, 8, 9]
    for i in range(11, 60):          # many segment files of ~600 bytes
        wal.append(_frames(i))
    wal.sync()
    rest = reader.read(upto_lsn=59, max_records=1000)
    assert [r.lsn for r in rest] == list(range(10, 60))
    assert all(r.frames == _frames(r.lsn) for r in rest)
    assert len(list_segments(wal.directory)) >= 4
    assert reader.read(upto_lsn=59) == []


def test_a_reader_starts_after_a_checkpoints_position_and_skips_trimmed_segments(tmp_path):
    wal = WriteAheadLog(str(tmp_path), segment_bytes=1500).open()
    for i in range(1, 41):
        wal.append(_frames(i))
    wal.sync()
    wal.trim(25)
    reader = LogReader(str(tmp_path), after_lsn=30)
    assert [r.lsn for r in reader.read(40, max_records=100)] == list(range(31, 41))


def test_a_segment_trimmed_while_open_is_read_to_its_end(tmp_path):
    wal = WriteAheadLog(str(tmp_path), segment_bytes=1500).open()
    for i in range(1, 31):
        wal.append(_frames(i))
    wal.sync()
    reader = LogReader(str(tmp_path))
    assert [r.lsn for r in reader.read(2)] == [1, 2]
    wal.trim(29)                     # every closed segment goes, the open one stays
    assert [r.lsn for r in reader.read(30, max_records=100)][:3] == [3, 4, 5]


_APPENDER = textwrap.dedent("""
    import sys
    from learnd.daemon.log.wal import WriteAheadLog
    wal = WriteAheadLog(sys.argv[1], segment_bytes=20000).open()
    for i in range(1, int(sys.argv[2]) + 1):
        wal.append([b"h%d" % i, bytes(i % 300)])
        if i % 7 == 0:
            wal.sync()
            print(i, flush=True)          # the durable lsn, as ingest tells the trainer
    wal.sync()
    print(int(sys.argv[2]), flush=True)
""")


def test_a_reader_follows_another_process_appending(tmp_path):
    n = 3000
    proc = subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path), str(n)],
                            stdout=subprocess.PIPE, text=True)
    reader = LogReader(str(tmp_path))
    seen = []
    for line in proc.stdout:              # bounded: the appender stops after n records
        seen += [r.lsn for r in reader.read(int(line), max_records=10_000)
                 if r.frames == [b"h%d" % r.lsn, bytes(r.lsn % 300)]]
    assert proc.wait(30) == 0
    assert seen == list(range(1, n + 1))


def test_a_checked_record_carries_its_split_codes_and_an_older_record_reads_without(tmp_path):
    import struct
    import zlib

    import msgpack
    import numpy as np

    wal = WriteAheadLog(str(tmp_path)).open()
    codes = np.array([0, 2, 3, 1, 0], dtype=np.int8)
    frames = [b"header", memoryview(np.arange(20, dtype=np.float32).reshape(5, 4))]
    assert wal.append(frames, codes) == 1
    many = [bytes([i]) * i for i in range(40)]       # more frames than a fixarray holds
    assert wal.append(many) == 2
    # A record as an older version wrote it: msgpack's smallest formats, no codes.
    body = msgpack.packb([3, [b"old", b"\x01" * 300]], use_bin_type=True)
    os_path = list_segments(wal.directory)[-1][1]
    wal.sync()
    with open(os_path, "ab") as f:
        f.write(struct.pack("<II", len(body), zlib.crc32(body)) + body)
    wal.close()
    first, second, old = LogReader(str(tmp_path)).read(3, max_records=10)
    assert first.frames == [b"header", np.arange(20, dtype=np.float32).tobytes()]
    assert np.frombuffer(first.codes, np.int8).tolist() == [0, 2, 3, 1, 0]
    assert second.frames == many and second.codes is None
    assert (old.lsn, old.frames, old.codes) == (3, [b"old", b"\x01" * 300], None)
    assert WriteAheadLog(str(tmp_path)).open().last_lsn == 3
