"""A population in the daemon: every member learns every training row and none of the
held-out ones, predict answers from the champion (or the ensemble) and names it, status
and the metrics show the leaderboard, settings change live or are refused with the
reason, a malformed space stops the start, and kill -9 resumes the same population."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from learnd.clients.client import Control, LearndError, Predictor, Producer
from learnd.engine.datasets import split

BATCH = 64
SPACE = {"lr": {"log_uniform": [1e-5, 3e-2]}}
# [model] seed is set to show that search_seed, not it, seeds the members
POPULATION = {"LEARND_SEARCH_MEMBERS": "4", "LEARND_MODEL_SEED": "3", "LEARND_SEARCH_SPACE": json.dumps(SPACE),
              "LEARND_SEARCH_MIN_ROWS": "128", "LEARND_MODEL_HIDDEN": "[16]", "LEARND_EVAL_INTERVAL_S": "0.2",
              "LEARND_REPLAY_RATIO": "2", "LEARND_REPLAY_ROWS": "512", "LEARND_CHECKPOINT_INTERVAL_S": "0"}


def _send(d, X, y, producer="p", split_name="train"):
    with Producer(d.ingest, producer_id=producer, window=4, timeout=30) as prod:
        for k in range(0, len(X) - BATCH + 1, BATCH):
            prod.send(X[k:k + BATCH], y[k:k + BATCH], split=split_name)


def _founders_learned_everything(status):
    """Members that joined at the start (not replaced since) learned every training row;
    every member learned every row since it joined (a copy brings its donor's rows)."""
    for row in status["members"]:
        if row["origin"] != "copy":
            assert row["rows_trained"] == row["age_rows"], row
        assert row["age_rows"] <= status["samples_trained"]


def test_members_learn_every_training_row_and_the_champion_answers(daemons):
    Xtr, ytr, Xte, _ = split("digits")
    d = daemons(env=POPULATION)
    _send(d, Xtr[:1280], ytr[:1280])
    _send(d, Xtr[1280:1408], ytr[1280:1408], producer="q", split_name="dev")     # held out for all
    s = d.settled()
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["search"].get("evaluations", 0) >= 3, what="three evaluations")
        s = c.status()
    assert s["samples_trained"] == 1280
    assert len(s["members"]) == 4 and sum(row["champion"] for row in s["members"]) == 1
    _founders_learned_everything(s)
    assert s["search"]["members"] == 4 and s["search"]["strategy"] == "random"
    champion = s["search"]["champion"]
    with Predictor(d.predict) as p:
        reply = p.predict(Xte[:8])
    assert reply.member == champion
    assert reply.y.shape == (8,)
    out = subprocess.run([sys.executable, "-m", "learnd", "search", "--control", d.control],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("4 members, strategy random") and len(lines) == 2 + 4
    assert "lr" in lines[1].split()
    starred = [line for line in lines[2:] if line.lstrip().startswith("*")]
    assert len(starred) == 1 and starred[0].split()[1] == str(champion)
    m = d.metrics()
    for slot in range(4):
        assert f"learnd_member_rows_trained{{member={slot}}}" in m
    assert m["learnd_search_champion_slot"] in (0, 1, 2, 3)
    assert "learnd_search_decisions_total{kind=champion}" in m


def test_serve_and_interval_change_live_and_fixed_settings_are_refused(daemons):
    Xtr, ytr, Xte, _ = split("digits")
    d = daemons(env=POPULATION)
    _send(d, Xtr[:640], ytr[:640])
    d.settled()
    with Control(d.control) as c, Predictor(d.predict) as p:
        assert c.set(serve="ensemble", ensemble_k=2, search_interval=2) == \
            {"serve": "ensemble", "ensemble_k": 2, "search_interval": 2}
        reply = p.predict(Xte[:4])
        assert reply.member == "ensemble"
        assert c.status()["search"]["served"][:1] == [c.status()["search"]["champion"]]
        assert len(c.status()["search"]["served"]) == 2
        # the evaluation now scores what serves: the ensemble
        n = c.status()["search"]["evaluations"]
        d.wait_until(lambda: c.status()["search"]["evaluations"] >= n + 2, what="evaluations of the ensemble")
        train = c.status()["evaluation"]["train"]
        assert train["rows"] > 0 and 0.0 <= train["error"] <= 1.0
        for bad, words in (({"search_members": 8}, "cannot change on a running daemon"),
                           ({"search_space": {"lr": {"uniform": [0.1, 0.2]}}}, "cannot change"),
                           ({"lr": 0.1}, "searched"),
                           ({"ensemble_k": 0}, "ensemble_k")):
            with pytest.raises(LearndError) as err:
                c.set(**bad)
            assert err.value.code == "bad_setting" and words in str(err.value), err.value
        c.set(serve="champion")
        assert p.predict(Xte[:4]).member == c.status()["search"]["champion"]
        c.set(l2=1e-4)                      # not searched: every member takes it
        assert c.set(replay_recency=512.0) == {"replay_recency": 512.0}
        assert c.status()["search"]["serve"] == "champion"


def test_a_searched_replay_recency_is_refused_live(daemons):
    space = {**SPACE, "replay_recency": {"log_uniform": [128, 4096]}}
    d = daemons(env={**POPULATION, "LEARND_SEARCH_SPACE": json.dumps(space)})
    with Control(d.control) as c:
        with pytest.raises(LearndError) as err:
            c.set(replay_recency=64.0)
        assert err.value.code == "bad_setting" and "searched" in str(err.value)
        assert c.status()["replay"]["recency"] == 256.0


@pytest.mark.parametrize("daemon_mode", ["single-process"])
@pytest.mark.parametrize("env, words", [
    ({"LEARND_SEARCH_SPACE": '{"lr": {"log_uniform": [0, 1]}}'}, "log_uniform needs lo > 0"),
    ({"LEARND_SEARCH_SPACE": '{"task": {"choice": ["binary"]}}'}, "cannot vary 'task'"),
    ({"LEARND_SEARCH_STRATEGY": "grid"}, "search_strategy must be one of"),
    ({"LEARND_SEARCH_MEMBERS": "0", "LEARND_SERVE": "ensemble"}, "needs search_members >= 2"),
])
def test_a_malformed_search_setting_stops_the_start_with_exit_2(tmp_path, daemon_mode, env, words):
    proc = subprocess.run([sys.executable, "-m", "learnd", "serve", "--single-process", "--state-dir",
                           str(tmp_path / "state")], env={**os.environ, "LEARND_SEARCH_MEMBERS": "4", **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert words in proc.stderr


def test_kill9_resumes_the_same_population_and_every_row_trains_once(daemons, tmp_path):
    """Decisions, then a checkpoint, then more rows (in the log only), then kill -9: the
    restart resumes the checkpoint's members, champion and decisions, and every member
    learns the logged rows once.  (No decision runs after the checkpoint, so what the
    restart shows is what the checkpoint held.)"""
    Xtr, ytr, Xte, _ = split("digits")
    env = {**POPULATION, "LEARND_SEARCH_INTERVAL": "1000000", "LEARND_REPLAY_RATIO": "0"}
    d = daemons(env=env, state_dir=tmp_path / "state")
    with Control(d.control) as c:
        c.set(search_interval=1)
        _send(d, Xtr[:768], ytr[:768])
        d.settled()
        d.wait_until(lambda: c.status()["search"]["decisions"] >= 1, what="a decision")
        c.set(search_interval=1000000)
        c.checkpoint()
        at_checkpoint = c.status()
    _send(d, Xtr[768:1152], ytr[768:1152], producer="late")
    before = d.settled()
    assert before["samples_trained"] == 1152
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    again = daemons(env=env, state_dir=tmp_path / "state")
    after = again.settled()
    assert after["samples_trained"] == 1152
    _founders_learned_everything(after)
    ids = lambda s: [row["member"] for row in sorted(s["members"], key=lambda r: r["slot"])]
    assert ids(after) == ids(at_checkpoint) == ids(before)
    for field in ("champion", "decisions", "seed", "space"):
        assert after["search"][field] == at_checkpoint["search"][field], field
    rows = {row["member"]: row["rows_trained"] for row in after["members"]}
    assert rows == {row["member"]: row["rows_trained"] for row in before["members"]}
    with Predictor(again.predict) as p:
        assert p.predict(Xte[:4]).member == after["search"]["champion"]


@pytest.mark.parametrize("daemon_mode", ["single-process"])
def test_report_draws_each_members_figure_with_the_champion_changes(daemons, tmp_path, daemon_mode):
    pytest.importorskip("matplotlib")
    from learnd.clients.report import member_curves, read_records
    Xtr, ytr, _, _ = split("digits")
    # The base learning rate 1e-5 barely learns; every draw (5e-3 to 3e-2) does.
    space = json.dumps({"lr": {"log_uniform": [5e-3, 3e-2]}})
    d = daemons(env={**POPULATION, "LEARND_SEARCH_SPACE": space, "LEARND_MODEL_LR": "1e-5",
                     "LEARND_EVAL_INTERVAL_SAMPLES": "128"})
    for k in range(2):             # a pass of its own producer: not taken for resent messages
        _send(d, Xtr[:1408], ytr[:1408], producer=f"pass{k}")
    d.settled()
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["search"]["evaluations"] >= 6, what="evaluations")
    curves = member_curves(read_records(d.state_dir))
    assert len(curves["members"]) >= 4 and curves["figure"] == "progressive"
    assert curves["changes"] and curves["changes"][0][1] != 0      # the base lr 1e-5 loses the crown
    out = tmp_path / "curves.png"
    r = subprocess.run([sys.executable, "-m", "learnd", "report", "--state-dir", d.state_dir, "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("daemon_mode", ["tree"])
@pytest.mark.parametrize("strategy, kinds", [("halving", {"promote"}), ("pbt", {"copy"})])
def test_halving_and_pbt_decide_in_the_daemon_and_survive_a_restart(daemons, tmp_path, daemon_mode, strategy,
                                                                    kinds):
    Xtr, ytr, Xte, _ = split("digits")
    env = {**POPULATION, "LEARND_SEARCH_STRATEGY": strategy, "LEARND_SEARCH_MIN_ROWS": "64",
           "LEARND_EVAL_INTERVAL_SAMPLES": "128", "LEARND_REPLAY_RATIO": "0"}
    d = daemons(env=env, state_dir=tmp_path / "state")
    for k in range(3):
        _send(d, Xtr, ytr, producer=f"pass{k}")
    d.settled()
    with Control(d.control) as c:
        d.wait_until(lambda: kinds & {x["kind"] for x in c.status()["search"]["recent_decisions"]}
                     or c.status()["search"]["decisions"] > 20, what=f"a {strategy} decision")
        made = {x["kind"] for x in c.status()["search"]["recent_decisions"]}
        c.set(search_interval=1000000)           # no decision between the figures below and the stop
    assert kinds & made, made
    before = d.settled()
    assert d.stop() == 0                          # SIGTERM: drain, checkpoint, exit 0
    again = daemons(env={**env, "LEARND_SEARCH_INTERVAL": "1000000"}, state_dir=tmp_path / "state")
    after = again.settled()
    assert [r["member"] for r in sorted(after["members"], key=lambda r: r["slot"])] == \
        [r["member"] for r in sorted(before["members"], key=lambda r: r["slot"])]
    assert after["search"]["champion"] == before["search"]["champion"]
    assert after["samples_trained"] == before["samples_trained"] == 3 * (len(Xtr) // BATCH) * BATCH
    with Predictor(again.predict) as p:
        assert p.predict(Xte[:4]).member == after["search"]["champion"]
