"""Every `learnd` command through a real subprocess against a real daemon."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from learnd.engine.datasets import split


def learnd(*args, stdin=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "learnd", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def data_files(tmp_path):
    Xtr, ytr, Xte, yte = split("digits")
    np.savez(tmp_path / "train.npz", X=Xtr, y=ytr)
    np.save(tmp_path / "X.npy", Xtr[:128])
    np.save(tmp_path / "y.npy", ytr[:128])
    header = ",".join([f"p{i}" for i in range(64)] + ["digit"])
    np.savetxt(tmp_path / "test.csv", np.column_stack([Xte, yte]), delimiter=",", header=header,
               comments="", fmt="%g")
    return tmp_path, Xte, yte


def test_every_command(daemons, data_files):
    tmp, Xte, yte = data_files
    d = daemons()
    ing, pre, ctl = (f"--ingest={d.ingest}", f"--predict={d.predict}", f"--control={d.control}")

    r = learnd("replay", str(tmp / "train.npz"), "--passes", "3", "--batch", "64", "--split", "train", ing)
    assert r.returncode == 0, r.stderr
    assert "acknowledged 4314" in r.stderr
    r = learnd("replay", str(tmp / "X.npy"), "--labels", str(tmp / "y.npy"), "--split", "train", "--quiet", ing)
    assert r.returncode == 0, r.stderr
    r = learnd("replay", str(tmp / "test.csv"), "--label", "digit", "--split", "test", "--quiet", ing)
    assert r.returncode == 0, r.stderr

    from learnd.clients.client import Control
    with Control(d.control) as c:   # acked is not yet trained: with a cold cache the trainer compiles first
        d.wait_until(lambda: c.status()["samples_trained"] >= 3 * 1438 + 128 - 1, timeout=120,
                     what="replayed rows trained")
    r = learnd("status", ctl)
    assert r.returncode == 0 and "samples_trained" in r.stdout and "multiclass" in r.stdout
    assert re.search(r"^replay +\d+ steps on recent rows \(ratio 16, recency 256 rows; \d+ of 4096 rows kept",
                     r.stdout, re.M), r.stdout
    assert re.search(r"^drift +adwin: \d+ drifts in \d+ rows, ", r.stdout, re.M), r.stdout
    status = json.loads(learnd("status", "--json", ctl).stdout)
    assert status["task"] == "multiclass" and status["input_dim"] == 64
    # the test rows are held out: their error analysis (no tags were sent)
    distinct = len(np.unique(Xte.astype(np.float32), axis=0))     # a split holds each distinct row once
    with Control(d.control) as c:
        d.wait_until(lambda: (c.status()["error_analysis"]["splits"].get("test") or {}).get("rows") == distinct,
                     what="an error analysis of every test row")
    r = learnd("errors", ctl)
    assert r.returncode == 0 and re.search(rf"^test: error [\d.]+% \(\d+ of {distinct} rows misclassified\)",
                                           r.stdout, re.M), r.stdout
    assert "no tagged rows" in r.stdout
    analysis = json.loads(learnd("errors", "--json", ctl).stdout)
    assert sum(map(sum, analysis["splits"]["test"]["confusion"])) == distinct

    r = learnd("predict", str(tmp / "test.csv"), "--label", "digit", pre)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == len(Xte)
    assert np.mean([row["y"] == label for row, label in zip(lines, yte)]) > 0.8
    # A reader that leaves early (`| head -1`) ends predict quietly with exit 0.
    head = subprocess.run(f"{sys.executable} -m learnd predict {tmp / 'test.csv'} --label digit {pre} | head -1; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True,
                          text=True, timeout=120)
    assert head.returncode == 0 and head.stderr == "", head.stderr
    assert len(head.stdout.splitlines()) == 1
    rows = "\n".join(json.dumps(list(map(float, x))) for x in Xte[:3])
    r = learnd("predict", "-", "--output", "proba", pre, stdin=rows)
    assert r.returncode == 0, r.stderr
    probas = [json.loads(line)["y"] for line in r.stdout.splitlines()]
    assert len(probas) == 3 and all(abs(sum(p) - 1) < 1e-4 for p in probas)

    r = learnd("set", "lr=0.002", "l2=0.0001", ctl)
    assert r.returncode == 0 and json.loads(r.stdout) == {"lr": 0.002, "l2": 0.0001}
    r = learnd("set", "hidden=[3]", ctl)
    assert r.returncode == 1 and "bad_setting" in r.stderr
    r = learnd("checkpoint", ctl)
    assert r.returncode == 0 and "checkpoint-" in r.stdout
    r = learnd("gradcheck", ctl)
    assert r.returncode == 0 and "W1" in r.stdout and "overall" in r.stdout


def test_exit_codes_for_bad_files_and_an_absent_daemon(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    r = learnd("replay", str(tmp_path / "bad.csv"), "--ingest=tcp://127.0.0.1:9")
    assert r.returncode == 2 and "number" in r.stderr
    r = learnd("replay", str(tmp_path / "missing.npz"))
    assert r.returncode == 2
    r = learnd("status", "--control=tcp://127.0.0.1:9", "--timeout", "0.3")
    assert r.returncode == 3 and "no reply" in r.stderr


def test_serve_refuses_bad_settings_and_a_port_in_use(daemons, tmp_path):
    r = learnd("serve", "--set", "activation=swish", "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2 and "activation" in r.stderr
    r = learnd("serve", "--set", "lr", "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2 and "expected KEY=VALUE" in r.stderr
    d = daemons()
    r = learnd("serve", "--state-dir", str(tmp_path / "other"), f"--ingest={d.ingest}",
               "--predict=tcp://127.0.0.1:0", "--control=tcp://127.0.0.1:0", "--metrics=127.0.0.1:0")
    assert r.returncode == 3 and "cannot bind the ingest socket" in r.stderr


def test_demo_runs_and_reports_the_held_out_score():
    r = learnd("demo", "--quiet", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    accuracy = float(r.stdout.split("held-out accuracy ")[1].split()[0])
    assert accuracy >= 0.93
    assert "metrics: http://127.0.0.1:" in r.stdout


def test_ctrl_c_during_replay_flushes_and_exits_130(daemons, data_files):
    import signal

    from learnd.clients.client import Control

    tmp, _, _ = data_files
    d = daemons()
    proc = subprocess.Popen([sys.executable, "-m", "learnd", "replay", str(tmp / "train.npz"),
                             "--rate", "1000", "--passes", "50", "--split", "train", f"--ingest={d.ingest}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Control(d.control) as c:
            d.wait_until(lambda: c.status()["samples_trained"] >= 512, what="some rows trained")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 130, err
            acked = int(err.split("acknowledged ")[1].split(",")[0])
            sent = int(err.split("sent ")[1].split()[0])
            assert acked == sent and sent < 50 * 1438
            d.wait_until(lambda: c.status()["samples_trained"] >= acked - 1, what="acked rows trained")
    finally:
        proc.kill()
