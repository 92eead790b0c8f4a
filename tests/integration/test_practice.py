"""Transfer learning, augmentation and adversarial examples on real daemons: init_from
with frozen layers, FGSM examples from the predict socket, the attacked error per
split, and augmented training that leaves predict rows alone."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from learnd.clients.client import Control, LearndError, Predictor, Producer
from learnd.daemon.training.checkpoints import CheckpointStore
from learnd.daemon.training.transfer import load_source
from learnd.engine import Model
from learnd.engine.datasets import load
from tests.conftest import ALL_MODES
from tests.integration.followers import FollowerProcess

BATCH = 64


@pytest.fixture(scope="module")
def digits():
    X, y, _ = load("digits")
    return X.astype(np.float32), y


def settings(**kv):
    args = []
    for k, v in kv.items():
        args += ["--set", f"{k}={v}"]
    return args


def stream(address, X, y, split="train", **header):
    with Producer(address, window=16, timeout=30) as prod:
        for i in range(0, len(X), BATCH):
            prod.send(X[i:i + BATCH], y[i:i + BATCH], split=split, **header)
    assert prod.rejected == []


def trained(d, rows):
    """Status once `rows` rows have trained (a last short batch waits for its linger)
    and the trainer is idle."""
    with Control(d.control) as c:
        d.wait_until(lambda: c.status()["samples_trained"] >= rows, what=f"{rows} rows trained")
    return d.settled()


def newest_model(d):
    with Control(d.control) as c:
        c.checkpoint()
    _, path = CheckpointStore(d.state_dir).files()[-1]
    return load_source(path)


@pytest.fixture(scope="module")
def source_file(tmp_path_factory, digits):
    """A model trained on digits 0-4, saved as a model file."""
    X, y = digits
    low = y < 5
    model = Model(hidden=(32, 16), task="multiclass", n_outputs=5, seed=1)
    for _ in range(5):
        for i in range(0, low.sum(), BATCH):
            model.partial_fit(X[low][i:i + BATCH], y[low][i:i + BATCH])
    path = tmp_path_factory.mktemp("source") / "digits-0-4.npz"
    model.save(path)
    return path, model


def test_init_from_keeps_the_frozen_trunk_and_learns_a_new_head(daemons, digits, source_file):
    X, y = digits
    path, source = source_file
    high = y >= 5
    Xh, yh = X[high][:600], y[high][:600] - 5
    Xs, ys = np.concatenate([Xh, Xh]), np.concatenate([yh, yh])      # two passes
    d = daemons(args=settings(init_from=f'"{path}"', reinit_layers=1, freeze_layers="[1, 2]", lr=0.05,
                              replay_ratio=0))
    stream(d.ingest, Xs, ys, task="multiclass", n_outputs=5)
    status = trained(d, len(Xs))
    assert status["input_dim"] == 64 and status["n_outputs"] == 5
    model = newest_model(d)
    assert model.spec.hidden == (32, 16) and model.spec.freeze_layers == (1, 2)
    for name in ("W1", "b1", "W2", "b2"):                 # frozen: bit-identical to the source
        assert np.array_equal(model.params[name], source.params[name]), name
    assert np.array_equal(model.normalizer.mean, source.normalizer.mean)
    assert model.samples_seen == len(Xs)
    # The daemon's model is the engine's from_pretrained trained on the same batches.
    embedded = Model.from_pretrained(source, n_outputs=5, freeze_layers=(1, 2), lr=0.05)
    for i in range(0, len(Xs), BATCH):
        embedded.partial_fit(Xs[i:i + BATCH], ys[i:i + BATCH])
    np.testing.assert_allclose(model.params["W3"], embedded.params["W3"], rtol=1e-4, atol=1e-5)
    # The head learned on the frozen features: held-out 5-9 digits well above chance (0.2).
    with Predictor(d.predict) as p:
        predicted = p.predict(X[high][600:]).y
    assert np.mean(predicted == y[high][600:] - 5) > 0.5


def test_unfreeze_after_rows_fine_tunes_the_trunk(daemons, digits, source_file):
    X, y = digits
    path, source = source_file
    high = y >= 5
    args = settings(init_from=f'"{path}"', freeze_layers="[1]", unfreeze_after_rows=256, replay_ratio=0)
    d = daemons(args=args)
    stream(d.ingest, X[high][:512], y[high][:512] - 5, task="multiclass", n_outputs=5)
    trained(d, 512)
    model = newest_model(d)
    assert model.spec.freeze_layers == ()
    assert not np.array_equal(model.params["W1"], source.params["W1"])
    # A restart resumes the fine-tuning model: the configured freeze has run its course.
    assert d.stop() == 0
    again = daemons(args=args, state_dir=d.state_dir)
    assert newest_model(again).spec.freeze_layers == ()


@pytest.mark.parametrize("bad, expected", [
    ({"init_from": '"/nonexistent/model.npz"'}, "init_from"),
    ({"reinit_layers": 9}, "reinit_layers"),
    ({"hidden": "[8]"}, "keeps its trunk"),
    ({"freeze_layers": "[3]"}, "would stay random"),
])
def test_a_bad_transfer_setting_stops_the_start_with_exit_2(tmp_path, source_file, bad, expected):
    path, _ = source_file
    args = {"init_from": f'"{path}"', **bad}
    cmd = [sys.executable, "-m", "learnd.clients.cli", "serve", "--state-dir", str(tmp_path / "s"),
           *settings(**args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr


@pytest.mark.parametrize("daemon_mode", ALL_MODES)   # the predict path behind the proxy too
def test_fgsm_examples_from_the_predict_socket_and_the_attacked_error_per_split(daemons, digits):
    X, y = digits
    eps = 2.0          # digits' pixels run 0..16
    d = daemons(args=settings(hidden="[32]", adversarial_eval_epsilon=eps, eval_interval_samples=256,
                              dev_fraction=0.2, replay_ratio=0))
    stream(d.ingest, X[:1200], y[:1200], split="auto")
    trained(d, int(d.metrics()["learnd_ingest_rows_total{split=train}"]))
    with Control(d.control) as c:
        d.wait_until(lambda: "dev" in (c.status().get("evaluation") or {}), what="a dev evaluation")
    status = d.settled()
    ev = status["evaluation"]
    assert ev["dev"]["adversarial_epsilon"] == eps
    assert ev["dev"]["adversarial_error"] > ev["dev"]["error"] + 0.1
    metrics = d.metrics()
    assert metrics["learnd_eval_adversarial_error{split=dev}"] == pytest.approx(ev["dev"]["adversarial_error"])
    X_test, y_test = X[1200:1400], y[1200:1400]
    with Predictor(d.predict) as p:
        attack = p.adversarial(X_test, y_test, eps)
        assert attack.model_version == status["model_version"]
        moved = np.abs(attack.x - X_test)
        assert np.all(np.isclose(moved, eps) | (moved == 0)) and np.mean(moved > 0) > 0.5
        clean = np.mean(p.predict(X_test).y != y_test)
        attacked = np.mean(p.predict(attack.x).y != y_test)
        assert attacked > clean + 0.2
        # The same examples the embedded model makes from the served version.
        model = newest_model(d)
        np.testing.assert_allclose(attack.x, model.adversarial(X_test, y_test, eps), atol=1e-5)
        with pytest.raises(LearndError) as err:
            p.request({"op": "predict", "output": "adversarial", "epsilon": -1}, {"x": X_test, "y": y_test})
        assert err.value.code == "bad_header"
        with pytest.raises(LearndError) as err:
            p.request({"op": "predict", "output": "adversarial", "epsilon": 1.0}, {"x": X_test})
        assert err.value.code == "bad_array"
        with pytest.raises(LearndError) as err:
            p.adversarial(X_test, np.full(len(X_test), 99), 1.0)
        assert err.value.code == "bad_label"


def evaluation_of_version(d, version, dev_rows):
    """An evaluation-history record (eval-history.jsonl) of the model version `version`
    with `dev_rows` rows in its dev split."""
    import json
    import os

    path = os.path.join(d.state_dir, "eval-history.jsonl")
    found = []

    def seen():
        if os.path.exists(path):
            with open(path) as f:
                found[:] = [r for r in map(json.loads, f) if r["version"] == version
                            and r["splits"].get("dev", {}).get("rows") == dev_rows]
        return bool(found)

    d.wait_until(seen, what=f"an evaluation of version {version}")
    return found[-1]


def test_augmented_and_adversarial_training_leave_held_out_and_predict_rows_alone(daemons, digits):
    X, y = digits
    d = daemons(args=settings(hidden="[32]", input_shape="[8, 8]", augment_shift=1, augment_noise_std=0.1,
                              augment_mixup_alpha=0.2, adversarial_epsilon=1.0, adversarial_fraction=0.5,
                              replay_ratio=0, eval_interval_s=0.3))
    stream(d.ingest, X[:640], y[:640])
    stream(d.ingest, X[640:840], y[640:840], split="dev")
    status = trained(d, 640)
    model = newest_model(d)
    assert model.spec.augment_shift == 1 and model.spec.adversarial_epsilon == 1.0
    assert model.samples_seen == status["samples_trained"] == 640
    # Held-out rows are scored as sent: the daemon's dev figures are the embedded model's.
    record = evaluation_of_version(d, status["model_version"], 200)
    dev = model.evaluate(X[640:840], y[640:840])
    assert record["splits"]["dev"]["loss"] == pytest.approx(dev["loss"], rel=1e-5)
    assert record["splits"]["dev"]["error"] == pytest.approx(dev["error"])
    with Predictor(d.predict) as p:
        served = p.predict(X[840:1000], output="proba")
    assert served.model_version == status["model_version"]
    # Predict rows go through the model as sent: the served answer is the embedded model's.
    np.testing.assert_allclose(served.y, model.predict_proba(X[840:1000]), rtol=1e-5, atol=1e-6)
    # Live: the settings change between steps, and a bad one is refused.
    with Control(d.control) as c:
        assert c.set(augment_noise_std=0.0, freeze_layers=[1])["freeze_layers"] == [1]
        with pytest.raises(LearndError) as err:
            c.set(augment_shift=9)
        assert err.value.code == "bad_setting"


@pytest.mark.parametrize("daemon_mode", ["tree"])
def test_a_follower_answers_the_trainers_fgsm_examples(daemons, digits, tmp_path):
    X, y = digits
    d = daemons(args=settings(hidden="[32]", replay_ratio=0))
    stream(d.ingest, X[:640], y[:640])
    version = trained(d, 640)["model_version"]
    follower = FollowerProcess(tmp_path / "follower", d.endpoints["snapshots"]).start()
    try:
        follower.wait_for_version(version)
        with Predictor(d.predict) as p, Predictor(follower.predict) as q:
            expected = p.adversarial(X[640:700], y[640:700], 1.5)
            got = q.adversarial(X[640:700], y[640:700], 1.5)
        assert got.model_version == expected.model_version == version
        assert np.array_equal(got.x, expected.x)
        assert follower.stop() == 0
    finally:
        follower.kill()
