"""The write-ahead log read as a queue: in order, from a position, across segments."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from learnd.daemon.log.wal import LogReader, WriteAheadLog


def _frames(i):
    return [f"header {i}".encode(), bytes([i % 251]) * (i % 97)]


def test_the_reader_takes_records_up_to_the_durable_lsn_and_goes_on_from_there(tmp_path):
    wal = WriteAheadLog(str(tmp_path), segment_bytes=600).open()
    reader = LogReader(str(tmp_path))
    for i in range(1, 11):
        wal.append(_frames(i))
    wal.sync()
    got = reader.read(upto_lsn=6, max_records=100)
    assert [lsn for lsn, _ in got] == [1, 2, 3, 4, 5, 6]
    assert got[2][1] == _frames(3)
    assert [lsn for lsn, _ in reader.read(upto_lsn=10, max_records=3)] == [7, 8, 9]
    for i in range(11, 60):          # many segment files of ~600 bytes
        wal.append(_frames(i))
    wal.sync()
    rest = reader.read(upto_lsn=59, max_records=1000)
    assert [lsn for lsn, _ in rest] == list(range(10, 60))
    assert all(frames == _frames(lsn) for lsn, frames in rest)
    assert len(wal._segments()) >= 4
    assert reader.read(upto_lsn=59) == []


def test_a_reader_starts_after_a_checkpoints_position_and_skips_trimmed_segments(tmp_path):
    wal = WriteAheadLog(str(tmp_path), segment_bytes=1500).open()
    for i in range(1, 41):
        wal.append(_frames(i))
    wal.sync()
    wal.trim(25)
    reader = LogReader(str(tmp_path), after_lsn=30)
    assert [lsn for lsn, _ in reader.read(40, max_records=100)] == list(range(31, 41))


def test_a_segment_trimmed_while_open_is_read_to_its_end(tmp_path):
    wal = WriteAheadLog(str(tmp_path), segment_bytes=1500).open()
    for i in range(1, 31):
        wal.append(_frames(i))
    wal.sync()
    reader = LogReader(str(tmp_path))
    assert [lsn for lsn, _ in reader.read(2)] == [1, 2]
    wal.trim(29)                     # every closed segment goes, the open one stays
    assert [lsn for lsn, _ in reader.read(30, max_records=100)][:3] == [3, 4, 5]


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
        seen += [lsn for lsn, frames in reader.read(int(line), max_records=10_000)
                 if frames == [b"h%d" % lsn, bytes(lsn % 300)]]
    assert proc.wait(30) == 0
    assert seen == list(range(1, n + 1))
