"""Write-ahead log, checkpoints, dedupe, re-batching and the delayed-label store."""
import os

import numpy as np
import pytest

from learnd.daemon.training import checkpoints
from learnd.daemon.training.checkpoints import CheckpointStore, CorruptCheckpoint
from learnd.daemon.ingest.dedupe import Dedupe
from learnd.daemon.ingest.idstore import IdStore
from learnd.daemon.training.rebatch import Rebatcher
from learnd.daemon.log.wal import WriteAheadLog
from learnd.engine import state as engine_state


def test_wal_replays_what_follows_an_lsn_and_cuts_a_torn_tail(tmp_path):
    wal = WriteAheadLog(str(tmp_path), segment_bytes=200).open()
    for i in range(10):
        assert wal.append([b"header%d" % i, b"x" * 50]) == i + 1
    wal.sync()
    wal.close()
    segments = sorted(os.listdir(tmp_path))
    assert len(segments) > 2
    with open(tmp_path / segments[-1], "ab") as f:   # a crash mid-record
        f.write(b"\x40\x00\x00\x00garbage")
    wal = WriteAheadLog(str(tmp_path), segment_bytes=200).open()
    assert wal.last_lsn == 10
    assert [r.lsn for r in wal.replay(6)] == [7, 8, 9, 10]
    assert list(wal.replay(6))[0].frames == [b"header6", b"x" * 50]
    assert wal.append([b"after"]) == 11
    wal.trim(8)
    assert [r.lsn for r in wal.replay(0)][0] <= 9
    assert [r.lsn for r in wal.replay(8)] == [9, 10, 11]
    wal.close()


def test_checkpoints_keep_the_newest_n_and_skip_corrupt_ones(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    for i in range(4):
        store.write({"i": i})
    assert [n for n, _ in store.files()] == [3, 4]
    newest = store.files()[-1][1]
    with open(newest, "r+b") as f:
        f.seek(60)
        f.write(b"\xff\xff")
    failures = []
    payload, path = store.load_newest(lambda p: p, lambda path, exc: failures.append(path))
    assert payload == {"i": 2} and failures == [newest]
    with pytest.raises(CorruptCheckpoint):
        checkpoints.decode(checkpoints.encode({"a": 1})[:-1])


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "f"
    engine_state.write_atomic(path, b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        engine_state.write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_dedupe_window_and_state():
    d = Dedupe(window=10)
    for s in (0, 1, 2, 5):
        d.add("p", s)
    assert d.seen("p", 1) and not d.seen("p", 3) and not d.seen("q", 1)
    d.add("p", 40)
    assert d.seen("p", 29) and not d.seen("p", 31)       # older than the window counts as seen
    again = Dedupe.from_state(d.to_state(), 10)
    assert again.seen("p", 40) and not again.seen("p", 39)


def test_rebatcher_hands_out_rows_in_order_across_messages():
    rb = Rebatcher(2, 1, np.float32)
    rows = np.arange(40, dtype=np.float32).reshape(20, 2)
    for lo, hi in ((0, 3), (3, 11), (11, 20)):
        rb.append(rows[lo:hi], rows[lo:hi, :1], None, now=0.0)
    got = [rb.take(7, 0.0)[0].copy() for _ in range(2)]
    assert np.array_equal(np.vstack(got), rows[:14])
    x, Y, w = rb.take(len(rb), 0.0)
    assert np.array_equal(x, rows[14:]) and w is None and len(rb) == 0
    rb.append(rows[:2], rows[:2, :1], np.array([2.0, 1.0]), 0.0)
    rb.append(rows[2:3], rows[2:3, :1], None, 0.0)
    assert np.array_equal(rb.take(3, 0.0)[2], [2.0, 1.0, 1.0])


def test_idstore_expires_and_bounds():
    clock = [0.0]
    store = IdStore(size=3, ttl_s=10, clock=lambda: clock[0])
    store.put(np.array([1, 2, 3, 4]), np.arange(8.0).reshape(4, 2))
    assert len(store) == 3
    assert store.get(np.array([1]))[1:] == ([1], [])         # evicted by size: unknown
    x, unknown, expired = store.get(np.array([3, 2]))
    assert unknown == expired == [] and np.array_equal(x, [[4.0, 5.0], [2.0, 3.0]])
    clock[0] = 11.0
    assert store.get(np.array([4, 9]))[1:] == ([9], [4])     # 4 expired, 9 never stored
