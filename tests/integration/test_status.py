"""`learnd status` and the control op `status` tell the truth in every state a daemon
passes through: started, schema fixed but no model, a model but no evaluation, each split
empty or filled, frozen, after a restart.  No line may claim more than the daemon knows:
a gap without figures is named with the reason, a figure is named only once the task is
known, the satisficing metric is unknown until a request is answered, and a resent row
is the same evidence as the first copy."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import zmq

from learnd.clients import protocol
from learnd.clients.client import Control, LearndError, Predictor, Producer
from learnd.daemon.training.diagnosis import GAPS, diagnose
from learnd.daemon.ingest.splits import DEV, TEST, TRAIN_DEV, SplitAssigner
from learnd.engine.datasets import load

BATCH = 64
RESERVOIR = 2000
# (the split a gap subtracts from, the split it subtracts), as docs/metrics.md gives them
GAP_SPLITS = {"avoidable_bias": ("train",), "variance": ("train_dev", "train"),
              "data_mismatch": ("dev", "train_dev"), "dev_overfitting": ("test", "dev"),
              "variance_or_mismatch": ("dev", "train")}


@pytest.fixture(scope="module")
def digits():
    X, y, _ = load("digits")
    return X.astype(np.float32), y


def settings(**kv):
    return [a for k, v in kv.items() for a in ("--set", f"{k}={v}")]


def send(d, X, y, split, producer, passes=1, batch=BATCH):
    """Send X, y `passes` times (each pass a fresh seq: a resend of the rows, not of the message)."""
    with Producer(d.ingest, producer_id=producer, window=16, timeout=30) as prod:
        for _ in range(passes):
            for i in range(0, len(X), batch):
                prod.send(X[i:i + batch], y[i:i + batch], split=split)
    assert prod.rejected == []


def status_text(d):
    r = subprocess.run([sys.executable, "-m", "learnd", "status", f"--control={d.control}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def lines_of(text, label):
    """The text of the rows labelled `label` in `learnd status`, continuation rows included."""
    lines = text.splitlines()
    (task,) = [line for line in lines if line.startswith("task ")]
    column = len(task) - len(task[4:].lstrip())          # where the values start
    out, inside = [], False
    for line in lines:
        head, body = line[:column].strip(), line[column:].strip()
        if head:
            inside = head == label
        if inside:
            out.append(body)
    return out


def observe(d):
    """(status, learnd status text), each checked against what the daemon can know."""
    with Control(d.control) as c:
        s = c.status()
    text = status_text(d)
    check_truthful(s, text)
    return s, text


def check_truthful(s, text):
    ev, diag = s["evaluation"], s["diagnosis"]
    # the figure is named once the task is known, and by it
    want = None if s["task"] is None else "mse" if s["task"] == "regression" else "error"
    assert diag["figure"] == want, (s["task"], diag["figure"])
    (line,) = lines_of(text, "diagnosis")
    assert line.startswith(diag["verdict"].upper())
    assert ("error gaps" in line) == (want == "error") and "mse gaps" not in line
    # every gap has a figure from evaluated splits, or is listed as not measured with why
    for gap in GAPS:
        value = diag["gaps"][gap]
        assert (value is None) == (gap in diag["unmeasured"]), gap
        if value is None:
            reason = diag["unmeasured"][gap]
            assert reason and any(gap in row and reason in row for row in lines_of(text, "not measured")), gap
            assert any(split not in ev for split in GAP_SPLITS[gap]), gap
        else:
            assert all(split in ev for split in GAP_SPLITS[gap]), gap
            assert any(row.startswith(gap) or f", {gap} " in row for row in lines_of(text, "gaps")), gap
    assert (diag["verdict"] == "unknown") == ("train" not in ev)
    assert diag["verdict"] == "unknown" or diag["verdict"] == "ok" or diag["gaps"][diag["verdict"]] is not None
    for split, figures in ev.items():
        assert 0 < figures["rows"] <= RESERVOIR, split
    # the satisficing metric: unknown until a request has been answered
    sat = s["satisficing"]
    (sline,) = lines_of(text, "satisficing")
    assert (sat["met"] is None) == (sat["requests"] == 0) == (sat["p99_seconds"] is None)
    if sat["met"] is None:
        assert "UNKNOWN" in sline and "MET" not in sline.replace("UNKNOWN", "")
    else:
        assert sline.endswith("NOT MET" if not sat["met"] else ": MET")
    # the model and early stopping
    assert s["ready"] is False or s["model_version"] is not None
    es = s["early_stopping"]
    assert (es["metric"] is None) == (s["task"] is None)
    (eline,) = lines_of(text, "early stopping")
    assert ("at version" in eline) == (es["best_version"] is not None)
    assert ("no best dev figure yet" in eline) == (es["best_version"] is None)


def wait_status(d, predicate, what, timeout=120):
    with Control(d.control) as c:
        d.wait_until(lambda: predicate(c.status()), timeout=timeout, what=what)
    return observe(d)


def distinct(X):
    return len(np.unique(X, axis=0))


def test_status_walks_through_every_state_and_claims_nothing_it_does_not_know(daemons, digits, tmp_path):
    X, y = digits
    # -- started: nothing known; a refused predict request is no latency
    d0 = daemons(name="plain", args=settings(hidden="[16]", eval_interval_s=1))
    with Predictor(d0.predict) as p:
        with pytest.raises(LearndError) as err:
            p.predict(X[:1])
    assert err.value.code == "not_ready"
    s, text = observe(d0)
    assert s["task"] is None and s["model_version"] is None and s["evaluation"] == {}
    assert s["diagnosis"]["verdict"] == "unknown" and set(s["diagnosis"]["unmeasured"]) == set(GAPS)
    assert "no training rows yet" in s["diagnosis"]["unmeasured"]["avoidable_bias"]
    assert s["satisficing"]["requests"] == 0 and "no predict request answered yet" in text
    assert math.isnan(d0.metrics()["learnd_satisficing_met{metric=predict_latency_p99}"])
    assert "UNKNOWN (no figures yet: the task is not known)" in text

    # -- frozen from the start: rows arrive, a model exists, nothing is trained
    with Control(d0.control) as c:
        assert c.freeze() == {"frozen": True}
    send(d0, X[:640], y[:640], "auto", "frozen")
    s, text = wait_status(d0, lambda st: "dev" in st["evaluation"] and st["progressive"]["rows"] > 0,
                          "held-out rows evaluated while frozen")
    assert s["samples_trained"] == 0 and s["early_stopping"]["frozen"]
    assert "train" not in s["evaluation"] and s["diagnosis"]["verdict"] == "unknown"
    assert "training is frozen" in s["diagnosis"]["unmeasured"]["avoidable_bias"]
    assert lines_of(text, "early stopping")[0].startswith("frozen")
    assert d0.stop() == 0

    # -- schema fixed by configuration, no model yet: the figure is the error already
    args = settings(task="multiclass", n_outputs=10, input_dim=64, hidden="[64]", bayes_error=0.05,
                    eval_interval_s=3600, eval_interval_samples=0, lr=0.003)
    state = tmp_path / "state"
    d = daemons(args=args, state_dir=state)
    s, text = observe(d)
    assert s["task"] == "multiclass" and s["model_version"] is None
    assert s["diagnosis"]["figure"] == "error" and "UNKNOWN (error gaps over Bayes proxy 0.05" in text

    # -- a model, no evaluation yet
    train, held = X[:1400], X[1400:]
    send(d, train, y[:1400], "train", "stream", passes=4)
    s, text = wait_status(d, lambda st: st["samples_trained"] == 4 * 1400, "the training rows trained")
    assert s["evaluation"] == {} and s["diagnosis"]["verdict"] == "unknown"
    assert s["diagnosis"]["unmeasured"]["avoidable_bias"] == \
        "train split holds the last 2000 trained rows and has not been evaluated yet (it runs every 3600 s)"

    # -- train filled, the held-out splits empty, each with its reason
    with Control(d.control) as c:
        c.set(eval_interval_samples=64)
    send(d, train[:128], y[:128], "train", "more")
    s, text = wait_status(d, lambda st: "train" in st["evaluation"] and st["samples_trained"] == 5600 + 128,
                          "a train evaluation")
    assert s["evaluation"]["train"]["rows"] == distinct(train)       # 4 passes: each row once
    why = s["diagnosis"]["unmeasured"]
    assert why["variance"] == (
        "train_dev split empty: rows are sent with split train; send training rows with split auto so a "
        "train-dev set is kept, or send train_dev rows")
    assert why["data_mismatch"].startswith("dev split empty: no rows sent with split dev or auto yet")
    assert why["data_mismatch"].endswith(why["variance"])
    assert why["variance_or_mismatch"].startswith("dev split empty: no rows sent with split dev or auto yet")
    assert "test split empty" in why["dev_overfitting"]

    # -- dev filled with the target distribution (inverted pixels), each row sent 8 times:
    # a dev error far above train error with no train-dev set is never "ok"
    target = 16.0 - held[:150]
    send(d, target, y[1400:1550], "dev", "target", passes=8)
    send(d, train[:128], y[:128], "train", "more2")
    # (every wait below is for the last step's evaluation: no other comes after it)
    s, text = wait_status(d, lambda st: "dev" in st["evaluation"] and st["samples_trained"] == 5600 + 256,
                          "a dev evaluation")
    ev, diag = s["evaluation"], s["diagnosis"]
    print("no train-dev:", {k: (v["error"], v["rows"]) for k, v in ev.items()}, diag["verdict"])
    assert ev["dev"]["rows"] == distinct(target)
    assert ev["dev"]["error"] > ev["train"]["error"] + 0.3
    assert diag["verdict"] == "variance_or_mismatch" and "send train_dev rows" in diag["recipe"]
    assert "VARIANCE_OR_MISMATCH" in text and "variance, data_mismatch: train_dev split empty: rows are " \
        "sent with split train" in "\n".join(lines_of(text, "not measured"))
    m = d.metrics()
    assert m["learnd_diagnosis_verdict{verdict=variance_or_mismatch}"] == 1.0
    assert m["learnd_diagnosis_gap{gap=variance_or_mismatch}"] == pytest.approx(
        diag["gaps"]["variance_or_mismatch"], abs=1e-6)
    with Predictor(d.predict) as p:
        p.predict(X[:4])
    s, text = observe(d)
    assert s["satisficing"]["requests"] == 1 and s["satisficing"]["met"] is not None

    # -- after a restart: nothing evaluated since, nothing answered since; what was sent is remembered
    assert d.stop() == 0
    d = daemons(name="again", args=args, state_dir=state)
    s, text = observe(d)
    assert s["evaluation"] == {} and s["satisficing"]["requests"] == 0
    why = s["diagnosis"]["unmeasured"]
    assert f"dev split holds {distinct(target)} distinct rows and has not been evaluated yet" in why["data_mismatch"]
    assert "train_dev split empty: rows are sent with split train" in why["variance"]

    # -- train_dev filled (rows of the training distribution held out by the producer)
    send(d, held[150:], y[1550:], "train_dev", "holdout", passes=2)
    with Control(d.control) as c:
        c.set(eval_interval_samples=64)
    send(d, train[:128], y[:128], "train", "more3")
    s, text = wait_status(d, lambda st: {"train", "train_dev", "dev"} <= set(st["evaluation"])
                          and st["samples_trained"] == 5600 + 384, "a train-dev evaluation")
    ev, diag = s["evaluation"], s["diagnosis"]
    print("with train-dev:", {k: (v["error"], v["rows"]) for k, v in ev.items()}, diag["verdict"])
    assert ev["train_dev"]["rows"] == distinct(held[150:])
    assert diag["verdict"] == "data_mismatch" and set(diag["unmeasured"]) == {"dev_overfitting"}
    assert d.metrics()["learnd_ingest_rows_total{split=train_dev}"] == 2 * len(held[150:])

    # -- test filled: every gap measured
    send(d, target, y[1400:1550], "test", "target-test")
    send(d, train[:128], y[:128], "train", "more4")
    s, text = wait_status(d, lambda st: "test" in st["evaluation"] and st["samples_trained"] == 5600 + 512,
                          "a test evaluation")
    assert s["diagnosis"]["unmeasured"] == {} and not lines_of(text, "not measured")

    # -- frozen: rows are acknowledged and scored, not trained
    with Control(d.control) as c:
        c.freeze()
        before = c.status()
    send(d, train[:256], y[:256], "train", "while-frozen")
    s, text = wait_status(d, lambda st: st["progressive"]["rows"] >= before["progressive"]["rows"] + 256,
                          "frozen rows scored")
    assert s["samples_trained"] == before["samples_trained"] and s["early_stopping"]["frozen"]
    assert lines_of(text, "early stopping")[0].startswith("frozen")


def test_replayed_passes_are_distinct_rows_and_one_wrong_row_resent_is_no_gap(daemons, digits, tmp_path):
    X, y = digits
    np.savez(tmp_path / "digits.npz", X=X, y=y)
    d = daemons(args=settings(hidden="[32]", eval_interval_samples=512))
    r = subprocess.run([sys.executable, "-m", "learnd", "replay", str(tmp_path / "digits.npz"), "--passes", "8",
                        "--quiet", f"--ingest={d.ingest}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    codes = SplitAssigner().assign(X, "auto")
    s, _ = wait_status(d, lambda st: {"train_dev", "dev", "test"} <= set(st["evaluation"])
                       and st["samples_trained"] >= 7 * int(np.sum(codes == 0)), "8 passes evaluated",
                       timeout=240)
    ev = s["evaluation"]
    print("replay --passes 8:", {k: v["rows"] for k, v in ev.items()})
    for split, code in (("train_dev", TRAIN_DEV), ("dev", DEV), ("test", TEST)):
        assert ev[split]["rows"] == distinct(X[codes == code]), split
    assert d.metrics()["learnd_eval_rows{split=dev}"] == distinct(X[codes == DEV])

    # One misclassified test row, resent 8 times with its 30 dev neighbours, is one error
    # in 31 distinct rows, within the noise: no dev_overfitting (counted 8 times, it would
    # be).  The model is frozen, so the labels it agrees with stay right.
    d2 = daemons(name="one-wrong", args=settings(hidden="[32]", eval_interval_s=1))
    send(d2, X[codes == 0], y[codes == 0], "train", "stream")
    dev, extra = X[codes == DEV][:30], X[codes == TEST][:1]
    with Control(d2.control) as c:
        d2.wait_until(lambda: c.status()["samples_trained"] == int(np.sum(codes == 0)), what="trained")
        c.freeze()
    d2.settled()                                           # frozen: published, and nothing more comes
    with Predictor(d2.predict) as p:
        agreed = p.predict(np.concatenate([dev, extra])).y
    wrong = (agreed[30:] + 1) % 10
    send(d2, dev, agreed[:30], "dev", "dev", passes=8)
    send(d2, np.concatenate([dev, extra]), np.concatenate([agreed[:30], wrong]), "test", "test", passes=8)
    s, text = wait_status(d2, lambda st: st["evaluation"].get("test", {}).get("rows") == 31
                          and st["evaluation"].get("dev", {}).get("rows") == 30, "dev and test evaluated")
    ev, diag = s["evaluation"], s["diagnosis"]
    print("one wrong row x8:", {k: (v["error"], v["rows"]) for k, v in ev.items()}, diag["gaps"], diag["verdict"])
    assert ev["dev"]["error"] == 0.0 and ev["test"]["error"] == pytest.approx(1 / 31)
    gap, se = diag["gaps"]["dev_overfitting"], diag["gap_errors"]["dev_overfitting"]
    assert gap > 0.02 and gap < 2 * se and diag["verdict"] != "dev_overfitting"
    copies = {split: {**ev[split], "rows": 8 * ev[split]["rows"]} for split in ("dev", "test")}
    eight = diagnose({"train": ev["train"], **copies})                 # what 8 copies each would say
    assert eight["gaps"]["dev_overfitting"] > 2 * eight["gap_errors"]["dev_overfitting"]
    assert "DEV_OVERFITTING" not in lines_of(text, "diagnosis")[0]


def test_a_bad_split_is_refused_by_client_and_daemon(daemons, digits):
    X, y = digits
    with Producer("tcp://127.0.0.1:1", timeout=1) as prod:
        with pytest.raises(ValueError, match="split must be one of auto, train, train_dev, dev, test"):
            prod.send(X[:4], y[:4], split="holdout")
        assert prod.next_seq == 0
    d = daemons(args=settings(hidden="[8]"))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.ingest)
    try:
        sock.send_multipart(protocol.encode({"op": "train", "producer": "p", "seq": 0, "split": "holdout"},
                                            {"x": X[:4], "y": y[:4]}))
        assert sock.poll(10_000)
        reply = protocol.decode(sock.recv_multipart(), reply=True).header
    finally:
        sock.close()
        ctx.term()
    assert reply["ok"] is False and reply["error"]["code"] == "bad_header"
    assert "train_dev" in reply["error"]["message"]
    with Control(d.control) as c:
        assert c.status()["model_version"] is None                    # nothing changed
