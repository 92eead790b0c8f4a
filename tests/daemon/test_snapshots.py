"""Snapshots in shared memory: whole, immutable, read in place, never torn."""
from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from learnd import Model
from learnd.daemon.serving.snapshots import SnapshotPublisher, SnapshotReader
from learnd.engine.network import Snapshot


@pytest.fixture
def trained(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = Model(hidden=(16, 8), task="multiclass", n_outputs=3, batch_norm=True, seed=seed)
    model.partial_fit(X, y)
    return model, X, y


def _predict(snap, X):
    out = np.empty((X.shape[0], snap.n_outputs), dtype=snap.dtype)
    return snap.predict_into(X, out, snap.new_workspace())


def test_a_snapshot_read_back_from_its_bytes_predicts_like_the_model(trained):
    model, X, _ = trained
    snap = model.snapshot(version=5, meta={"member": "m3"})
    back = Snapshot.from_buffer(snap.to_bytes())
    assert (back.version, back.meta, back.task, back.n_outputs) == (5, {"member": "m3"}, "multiclass", 3)
    assert np.array_equal(_predict(back, X), model.predict_proba(X))
    for name in ("table", "params", "stats", "shift", "inv_scale"):
        assert not getattr(back, name).flags.writeable


def test_a_truncated_or_foreign_buffer_is_refused(trained):
    data = trained[0].snapshot().to_bytes()
    with pytest.raises(ValueError, match="truncated"):
        Snapshot.from_buffer(data[:-64])
    with pytest.raises(ValueError, match="magic"):
        Snapshot.from_buffer(b"X" * len(data))


def test_readers_see_each_publication_and_predict_from_the_mapped_file(trained, tmp_path):
    model, X, y = trained
    pub = SnapshotPublisher(str(tmp_path / "shm"))
    reader = SnapshotReader(str(tmp_path / "shm"))
    assert reader.current() is None
    pub.publish(model.snapshot(version=1))
    first = reader.current()
    assert first.version == 1 and reader.current() is first       # cached: nothing new
    # Read in place: the arrays are views of the mapped file, not copies.
    assert isinstance(first.buffer, mmap.mmap) and not first.params.flags.owndata
    model.partial_fit(X, y)
    pub.publish(model.snapshot(version=2))
    second = reader.current()
    assert second.version == 2
    assert np.array_equal(_predict(second, X), model.predict_proba(X))


def test_a_mapped_snapshot_outlives_the_trimming_of_its_file(trained, tmp_path):
    model, X, _ = trained
    pub = SnapshotPublisher(str(tmp_path / "shm"), keep=2)
    reader = SnapshotReader(str(tmp_path / "shm"))
    pub.publish(model.snapshot(version=1))
    held = reader.current()
    expected = _predict(held, X).copy()
    for v in range(2, 6):
        pub.publish(model.snapshot(version=v))
    assert len([n for n in os.listdir(tmp_path / "shm") if n.startswith("snap-")]) == 2
    assert np.array_equal(_predict(held, X), expected)
    assert reader.current().version == 5


def test_a_restarted_publisher_numbers_on_from_where_it_was(trained, tmp_path):
    model = trained[0]
    pub = SnapshotPublisher(str(tmp_path / "shm"))
    pub.publish(model.snapshot(version=9))
    reader = SnapshotReader(str(tmp_path / "shm"))
    assert reader.current().version == 9
    pub.close()
    again = SnapshotPublisher(str(tmp_path / "shm"))
    seq, _ = again.publish(model.snapshot(version=3))     # a model version seen again...
    assert seq == 2
    assert reader.current().version == 3                    # ...is still a new snapshot
    again.remove_all()
    assert not os.path.exists(tmp_path / "shm")


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from learnd import Model
    from learnd.daemon.serving.snapshots import SnapshotPublisher
    model = Model(hidden=(256, 128), task="multiclass", n_outputs=10, seed=0)
    model.partial_fit(np.zeros((4, 784), np.float32), np.arange(4))
    pub = SnapshotPublisher(sys.argv[1], keep=3)
    deadline = time.monotonic() + float(sys.argv[2])
    v = 0
    while time.monotonic() < deadline:
        v += 1
        model.network.flat_params[:] = v        # every parameter names its version
        pub.publish(model.snapshot(version=v))
    print(v)
""")


def test_a_reader_never_sees_a_torn_snapshot_while_another_process_publishes(tmp_path):
    """A W1-sized snapshot (~1 MB) published as fast as one process can, read by this
    one as fast as it can: every snapshot read has all its parameters equal to its own
    version number."""
    directory = str(tmp_path / "shm")
    SnapshotPublisher(directory).close()
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, directory, "3"],
                              stdout=subprocess.PIPE, text=True)
    reader = SnapshotReader(directory)
    seen, checked, deadline = set(), 0, time.monotonic() + 30
    try:
        while writer.poll() is None and time.monotonic() < deadline:
            snap = reader.current()
            if snap is None:
                continue
            p = snap.params
            assert p[0] == p[-1] == snap.version and np.all(p == snap.version), "torn snapshot"
            seen.add(snap.version)
            checked += 1
    finally:
        if writer.poll() is None:
            writer.kill()
        published = int(writer.communicate(timeout=30)[0] or 0)
    assert writer.returncode == 0
    assert checked > 1000 and len(seen) > 50, (checked, len(seen), published)
