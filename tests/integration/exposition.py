"""A daemon driven until its /metrics shows every series it can have: it has trained,
evaluated every split, served predictions and refused a message."""
from __future__ import annotations

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from learnd.clients.client import Control, Predictor, Producer

BATCH = 64
# Evaluate often, so the wait for an evaluation of every split is short.
FAST_EVAL_ENV = {"LEARND_EVAL_INTERVAL_S": "0.1"}
SPLITS = ("train", "train_dev", "dev", "test")


def drive_to_full_exposition(daemon, X, y):
    """Train, evaluate every split, predict and get a message refused; returns the
    exposition text.  `daemon` is a started tests.conftest.Daemon, X (m, n), y (m,)."""
    with Producer(daemon.ingest, producer_id="exposition", window=8, timeout=20) as prod:
        for k, split in enumerate(("dev", "test") + ("auto",) * 8 + ("train",) * 3):
            i = (k * BATCH) % (len(X) - BATCH)
            # Tagged rows: the error-by-tag series exist once a held-out split carries tags.
            prod.send(X[i:i + BATCH], y[i:i + BATCH], split=split,
                      tags=np.arange(BATCH, dtype=np.int32) % 2, tag_names=["even_row", "odd_row"])
        bad = np.array(X[:BATCH], copy=True)
        bad[0, 0] = np.nan
        prod.send(bad, y[:BATCH], split="train")
    if [r.code for r in prod.rejected] != ["non_finite"]:
        raise AssertionError(f"expected one non_finite refusal, got {prod.rejected}")
    with Control(daemon.control) as control:
        daemon.wait_until(lambda: set(SPLITS) <= set(control.status()["evaluation"]),
                          what="an evaluation of every split")
    with Predictor(daemon.predict) as predictor:
        predictor.predict(X[:2])
    # Norms are sampled once a second, after the first step.
    daemon.wait_until(lambda: "learnd_grad_norm" in daemon.http("/metrics")[1], what="the norms")
    return daemon.http("/metrics")[1]


def exposed_names(text):
    """(family names with counters' _total, every sample name) in an exposition."""
    families, samples = set(), set()
    for family in text_string_to_metric_families(text):
        families.add(family.name + ("_total" if family.type == "counter" else ""))
        samples.update(s.name for s in family.samples)
    return families, samples
