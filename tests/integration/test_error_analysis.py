"""Error analysis on a real daemon: tagged dev rows with ids, some of them with flipped
labels; the confusion matrix, the error-by-tag table, its metric and the likely mislabeled
rows, read back through status, /metrics and `learnd errors`."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from learnd.clients.client import Control, LearndError, Predictor, Producer
from learnd.engine.datasets import load

BATCH = 64
TAGS = ["faint", "even", "rare"]


@pytest.fixture(scope="module")
def digits():
    X, y, _ = load("digits")
    return X.astype(np.float32), y


def tags_of(X, y):
    """(m, 3) multi-hot: faint (little ink), even label, and one tag no dev row carries."""
    ink = X.sum(axis=1)
    return np.stack([ink < np.quantile(ink, 0.25), y % 2 == 0, np.zeros(len(y), bool)], axis=1)


def test_errors_by_tag_confusion_and_suspects_on_a_real_daemon(daemons, digits, seed):
    X, y = digits
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    train, dev = order[:1300], order[1300:]
    y_dev = y[dev].copy()
    flipped = rng.choice(len(dev), size=len(dev) // 10, replace=False)
    y_dev[flipped] = (y_dev[flipped] + rng.integers(1, 10, len(flipped))) % 10
    ids = 50_000 + np.arange(len(dev), dtype=np.int64)
    tags = tags_of(X[dev], y_dev)

    d = daemons(args=["--set", "eval_interval_samples=512", "--set", "max_suspects=200"])
    with Producer(d.ingest, producer_id="p", timeout=30) as prod:
        for _ in range(4):
            for i in range(0, len(train), BATCH):
                rows = train[i:i + BATCH]
                prod.send(X[rows], y[rows], split="train")
        for i in range(0, len(dev), BATCH):
            # codes for half the messages, multi-hot for the other half: the same tags
            t = tags[i:i + BATCH]
            prod.send(X[dev[i:i + BATCH]], y_dev[i:i + BATCH], ids=ids[i:i + BATCH], split="dev",
                      tags=t.astype(np.uint8), tag_names=TAGS)
        # more training rows after the dev rows, so an evaluation sees all of them
        for i in range(0, len(train), BATCH):
            rows = train[i:i + BATCH]
            prod.send(X[rows], y[rows], split="train")
    assert prod.rejected == []
    with Control(d.control) as c:
        d.wait_until(lambda: (c.status().get("error_analysis") or {}).get("splits", {}).get("dev", {})
                     .get("rows") == len(dev), what="the dev error analysis")
        d.settled()
        status = c.status()
        d.wait_until(lambda: c.status()["evaluation"]["dev"]["rows"] == len(dev), what="an evaluation")
        a = c.status()["error_analysis"]
    dev_a = a["splits"]["dev"]
    cm = np.array(dev_a["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == len(dev)
    assert cm.sum() - np.trace(cm) == dev_a["errors"]
    # every given label's row count is in the confusion matrix's rows
    assert cm.sum(axis=1).tolist() == np.bincount(y_dev, minlength=10).tolist()
    assert status["model_version"] is not None
    table = {t["tag"]: t for t in dev_a["tags"]}
    assert set(table) == {"faint", "even"}                # "rare" is on no row
    for col, name in enumerate(TAGS[:2]):
        assert table[name]["rows"] == int(tags[:, col].sum())
        assert table[name]["errors"] <= min(table[name]["rows"], dev_a["errors"])
        assert table[name]["ceiling"] == pytest.approx(table[name]["errors"] / len(dev))
    metrics = d.metrics()
    for name in ("faint", "even"):
        assert metrics[f"learnd_eval_error_by_tag{{split=dev,tag={name}}}"] == pytest.approx(table[name]["error"])
        assert metrics[f"learnd_eval_tag_rows{{split=dev,tag={name}}}"] == table[name]["rows"]
    assert metrics["learnd_eval_suspect_rows{split=dev}"] == dev_a["suspects"]["count"]

    # The flipped rows are what confident learning finds, far above the 10% of chance.
    found = {s["id"] - 50_000 for s in dev_a["suspects"]["listed"]}
    true_flips = set(flipped.tolist())
    precision = len(found & true_flips) / max(len(found), 1)
    recall = len(found & true_flips) / len(true_flips)
    print(f"suspects: {len(found)} listed, precision {precision:.2f}, recall {recall:.2f}")
    assert precision > 0.5 and recall > 0.5

    r = subprocess.run([sys.executable, "-m", "learnd", "errors", "--split", "dev", f"--control={d.control}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"({dev_a['errors']} of {len(dev)} rows misclassified)" in r.stdout
    assert "faint" in r.stdout and f"/{dev_a['errors']})" in r.stdout
    r = subprocess.run([sys.executable, "-m", "learnd", "errors", "--suspects", f"--control={d.control}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first = dev_a["suspects"]["listed"][0]
    assert f"{dev_a['suspects']['count']} of {len(dev)} rows are likely mislabeled" in r.stdout
    assert str(first["id"]) in r.stdout


def test_tags_sent_with_a_predict_request_come_with_its_delayed_labels(daemons, digits):
    X, y = digits
    d = daemons()
    with Producer(d.ingest, producer_id="p", timeout=30) as prod:
        for i in range(0, 640, BATCH):
            prod.send(X[i:i + BATCH], y[i:i + BATCH], split="train")
    d.settled()
    rows = np.arange(640, 840)
    ids = 7000 + rows
    codes = np.where(y[rows] < 5, 0, 1).astype(np.int32)
    codes[::10] = -1                                        # untagged rows
    with Predictor(d.predict) as p:
        for i in range(0, 200, 50):
            p.predict(X[rows[i:i + 50]], ids=ids[i:i + 50], tags=codes[i:i + 50], tag_names=["low", "high"])
        with pytest.raises(LearndError) as err:             # tags are kept with ids: none, no tags
            p.predict(X[:2], tags=[0, 1], tag_names=["low", "high"])
        assert err.value.code == "bad_array"
        with pytest.raises(LearndError) as err:
            p.predict(X[:2], ids=[1, 2], tags=[0, 2], tag_names=["low", "high"])
        assert err.value.code == "bad_tag"
    # the labels come later, by id alone, for the dev split
    with Producer(d.ingest, producer_id="labels", timeout=30) as prod:
        for i in range(0, 200, 40):
            prod.send(None, y[rows[i:i + 40]], ids=ids[i:i + 40], split="dev")
    assert prod.rejected == []
    with Control(d.control) as c:
        d.wait_until(lambda: (c.status()["error_analysis"]["splits"].get("dev") or {}).get("rows") == 200,
                     what="the dev error analysis")
        a = c.status()["error_analysis"]["splits"]["dev"]
    table = {t["tag"]: t for t in a["tags"]}
    assert table["low"]["rows"] == int((codes == 0).sum()) and table["high"]["rows"] == int((codes == 1).sum())
    assert a["suspects"]["rows_with_ids"] == 200
