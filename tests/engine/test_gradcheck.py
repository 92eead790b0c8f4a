"""Model.gradient_check: the backward pass agrees with two-sided differences for every
activation x head x batch norm x penalty, and the report names a planted wrong gradient."""
import numpy as np
import pytest

from learnd.engine import GradCheckReport
from learnd.engine.network import Network

from . import reference as ref
from .helpers import ACTIVATIONS, TASKS, assert_same_state, batch, full_state, moved_model, targets

RIGHT = 1e-7
BUG = 1e-3


def small_model(activation="tanh", task="multiclass", batch_norm=True, rng=None, **kw):
    """helpers.moved_model: three sgd steps on 6-row batches."""
    return moved_model(activation, task, batch_norm, rng, steps=3, rows=6, seed=11, **kw)


@pytest.mark.parametrize("penalty", [{"l2": 0.1}, {"l1": 0.05}], ids=["l2", "l1"])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_is_right_for_every_combination(rng, activation, task, batch_norm, penalty):
    model = small_model(activation, task, batch_norm, rng, **penalty)
    X, y = batch(task, 6, 5, rng, scale=2.0, offset=1.0)
    report = model.gradient_check(X, y)
    assert report.overall < RIGHT, str(report)
    assert report.ok and report.verdict() == "right"
    # Per array the finite differences carry roundoff of about 1e-16 |J| / eps, which
    # is relatively large for arrays whose gradient is small; 1e-6 is still 1000x
    # below the bug line.  With a linear activation followed by another batch-norm
    # layer, beta1's gradient is exactly zero (the next layer's batch mean removes any
    # constant shift), so the ratio of two round-off residues means nothing there.
    vanishing = set()
    if activation == "linear" and batch_norm:
        vanishing.add("beta1")
        net = ref.Net(model.spec)
        norm = model.normalizer
        _, grads, _ = ref.forward_backward(net, ref.params64(model), X, targets(task, y, net.sizes[-1]),
                                           shift=norm.shift, inv_scale=norm.inv_scale, **penalty)
        assert np.abs(grads["beta1"]).max() < 1e-12
        assert np.abs(model.network.grads["beta1"]).max() < 1e-12
    for name, value in report.per_param.items():
        if name not in vanishing:
            assert value < 1e-6, str(report)


def test_gradient_is_right_with_one_hot_labels_weights_and_both_penalties(rng):
    model = small_model("leaky_relu", "multiclass", True, rng, l2=0.05, l1=0.02)
    X, y = batch("multiclass", 6, 5, rng)
    onehot = np.eye(3)[y]
    report = model.gradient_check(X, onehot, sample_weight=rng.uniform(0.1, 4.0, size=6))
    assert report.overall < RIGHT, str(report)


@pytest.mark.parametrize("hidden", [(), (3,), (5, 4, 3, 2)])
def test_gradient_is_right_for_any_depth_and_per_layer_activations(rng, hidden):
    acts = ("sigmoid", "relu", "tanh", "leaky_relu")[:len(hidden)] or "relu"
    model = small_model(acts, "regression", True, rng, hidden=hidden, l2=0.01)
    report = model.gradient_check(*batch("regression", 6, 5, rng))
    assert report.overall < RIGHT, str(report)


def test_gradient_check_turns_dropout_off_and_runs_in_float64_for_a_float32_model(rng):
    model = small_model("relu", "binary", True, rng, dtype="float32", keep_prob=(0.5, 0.7))
    X, y = batch("binary", 6, 5, rng)
    report = model.gradient_check(X, y)
    assert report.overall < RIGHT, str(report)


def test_report_is_overall_and_per_parameter_and_changes_nothing(rng):
    model = small_model("tanh", "multilabel", True, rng, keep_prob=0.8)
    X, y = batch("multilabel", 6, 5, rng)
    before = full_state(model)
    report = model.gradient_check(X, y)
    assert_same_state(before, full_state(model))          # params, stats, rng, normalizer
    assert isinstance(report, GradCheckReport)
    assert list(report.per_param) == list(model.network.params)
    assert report.checked == {k: v.size for k, v in model.network.params.items()}
    d = report.to_dict()
    assert d["verdict"] == "right" and set(d["per_param"]) == set(model.network.params)
    assert "W1" in str(report)
    sampled = model.gradient_check(X, y, max_entries=5)
    assert max(sampled.checked.values()) == 5
    assert sampled.overall < RIGHT


@pytest.mark.parametrize("planted", ["W2", "b2", "b3", "gamma1"])
def test_planted_wrong_gradient_is_named_by_the_report(monkeypatch, rng, planted):
    batch_norm = planted == "gamma1"
    model = small_model("tanh", "multiclass", batch_norm, rng)
    X, y = batch("multiclass", 6, 5, rng)
    real = Network.loss_and_grad

    def wrong(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        if kwargs.get("grad", True):
            self.grads[planted][...] *= 1.5         # 50% too large in one array only
        return loss

    monkeypatch.setattr(Network, "loss_and_grad", wrong)
    report = model.gradient_check(X, y)
    assert report.worst() == planted
    assert report.per_param[planted] > BUG
    assert report.overall > BUG and not report.ok and report.verdict() == "BUG"
    others = {k: v for k, v in report.per_param.items() if k != planted}
    assert max(others.values()) < RIGHT, str(report)
