"""The search space: draws on the scale the setting matters on, seeded, narrowed around
good draws without leaving the original space, and clear errors for a malformed one."""
import math

import numpy as np
import pytest

from learnd.engine import EngineError
from learnd.engine.search_space import DEFAULT_SPACE, SearchSpace


def _draws(space, n, seed):
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def test_log_uniform_spreads_draws_evenly_over_decades(seed):
    """On [1e-4, 1e-1], half the draws fall below the geometric mean 10**-2.5 and each
    decade holds about a third (a linear draw would put 90% in the top decade)."""
    space = SearchSpace.parse({"lr": {"log_uniform": [1e-4, 1e-1]}})
    lr = np.array([d["lr"] for d in _draws(space, 6000, seed)])
    assert lr.min() >= 1e-4 and lr.max() <= 1e-1
    assert abs((lr < 10 ** -2.5).mean() - 0.5) < 0.03
    decades = np.histogram(np.log10(lr), bins=[-4, -3, -2, -1])[0] / lr.size
    assert np.all(np.abs(decades - 1 / 3) < 0.03), decades


def test_one_minus_log_uniform_spreads_betas_over_their_distance_to_one(seed):
    """beta in [0.9, 0.999]: 1 - beta is log-uniform on [1e-3, 1e-1], so half the draws
    are above 1 - 10**-2 = 0.99 (a linear draw would put 9% there)."""
    space = SearchSpace.parse({"beta1": {"one_minus_log_uniform": [0.9, 0.999]}})
    beta = np.array([d["beta1"] for d in _draws(space, 6000, seed)])
    assert beta.min() >= 0.9 and beta.max() <= 0.999
    assert abs((beta > 0.99).mean() - 0.5) < 0.03


def test_int_log_uniform_gives_whole_numbers_on_a_log_scale(seed):
    space = SearchSpace.parse({"width": {"int_log_uniform": [16, 512]}})
    widths = [d["width"] for d in _draws(space, 4000, seed)]
    assert all(isinstance(w, int) and 16 <= w <= 512 for w in widths)
    assert abs(np.mean(np.array(widths) < math.sqrt(16 * 512)) - 0.5) < 0.04


def test_choice_keeps_types_and_covers_every_choice(seed):
    space = SearchSpace.parse({"batch_norm": {"choice": [False, True]},
                               "optimizer": {"choice": ["adam", "rmsprop", "sgd"]}})
    draws = _draws(space, 300, seed)
    assert {d["batch_norm"] for d in draws} == {False, True}
    assert all(type(d["batch_norm"]) is bool for d in draws)
    assert {d["optimizer"] for d in draws} == {"adam", "rmsprop", "sgd"}


def test_the_same_seed_gives_the_same_draws():
    space = SearchSpace.parse(None)
    assert _draws(space, 20, 7) == _draws(space, 20, 7)
    assert _draws(space, 20, 7) != _draws(space, 20, 8)


def test_apply_makes_width_and_depth_into_hidden_and_keeps_unlisted_settings():
    space = SearchSpace.parse({"width": {"int_log_uniform": [8, 64]}, "depth": {"choice": [0, 2]},
                               "lr": {"log_uniform": [1e-3, 1e-2]}})
    settings = space.apply({"task": "binary", "l2": 1e-4, "hidden": (32, 16)},
                           {"width": 24, "depth": 2, "lr": 0.004})
    assert settings["hidden"] == (24, 24)
    assert settings["l2"] == 1e-4 and settings["lr"] == 0.004 and settings["task"] == "binary"
    assert space.apply({"hidden": (32, 16)}, {"depth": 0})["hidden"] == ()
    assert space.apply({"hidden": (32, 16)}, {"width": 8})["hidden"] == (8, 8)


def test_default_space_covers_what_the_course_tunes_and_every_draw_makes_a_model(seed):
    assert {"lr", "width", "depth", "l2", "keep_prob", "batch_norm", "beta1", "beta2"} <= set(DEFAULT_SPACE)
    space = SearchSpace.parse(None)
    for draw in _draws(space, 50, seed):
        space.apply({"task": "multiclass", "n_outputs": 3}, draw)   # raises if a draw is invalid


def test_narrowed_space_holds_the_good_draws_inside_the_original_and_is_smaller():
    space = SearchSpace.parse({"lr": {"log_uniform": [1e-5, 1e-1]}, "keep_prob": {"uniform": [0.5, 1.0]},
                               "beta1": {"one_minus_log_uniform": [0.8, 0.999]},
                               "depth": {"choice": [1, 2, 3]}})
    good = [{"lr": 1e-3, "keep_prob": 0.9, "beta1": 0.95, "depth": 2},
            {"lr": 3e-3, "keep_prob": 0.8, "beta1": 0.97, "depth": 2}]
    fine = space.narrowed(good)
    for name in ("lr", "keep_prob", "beta1"):
        d, o = fine.dims[name], space.dims[name]
        assert o.lo <= d.lo <= min(g[name] for g in good) and max(g[name] for g in good) <= d.hi <= o.hi
        (a, b), (oa, ob) = d.unit_bounds, o.unit_bounds
        assert b - a < 0.5 * (ob - oa), name      # much narrower on its own scale
    assert fine.dims["depth"].choices == (2,)
    # narrowing again starts from the narrowed space but pads by the original's range
    finer = fine.narrowed(good)
    assert finer.dims["lr"].lo == pytest.approx(fine.dims["lr"].lo)
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = fine.sample(rng)
        assert fine.dims["lr"].lo <= d["lr"] <= fine.dims["lr"].hi and d["depth"] == 2


def test_a_base_value_outside_a_log_space_narrows_to_its_bound():
    """l2 = 0 (the default) has no logarithm: it counts as the lower bound."""
    space = SearchSpace.parse({"l2": {"log_uniform": [1e-6, 1e-2]}})
    fine = space.narrowed([{"l2": 0.0}, {"l2": 1e-5}])
    assert fine.dims["l2"].lo == pytest.approx(1e-6) and fine.dims["l2"].hi < 1e-2


@pytest.mark.parametrize("spec, words", [
    ({"lr": {"log_uniform": [0, 1e-1]}}, "lr: log_uniform needs lo > 0"),
    ({"lr": {"log_uniform": [1e-1, 1e-3]}}, "lo <= hi"),
    ({"lr": {"log_uniform": [1e-3]}}, "needs [lo, hi]"),
    ({"lr": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
    ({"lr": 0.01}, "must be one distribution"),
    ({"lr": {"log_uniform": [1e-3, 1e-2], "uniform": [0, 1]}}, "must be one distribution"),
    ({"learning_rate": {"log_uniform": [1e-3, 1e-2]}}, "not a model setting"),
    ({"task": {"choice": ["binary"]}}, "cannot vary 'task'"),
    ({"keep_prob": {"uniform": [0.5, 1.5]}}, "keep_prob: 1.5 is not a valid value"),
    ({"optimizer": {"choice": ["adam", "lbfgs"]}}, "'lbfgs' is not a valid value"),
    ({"optimizer": {"choice": []}}, "non-empty list"),
    ({"width": {"uniform": [8, 64]}}, "width: draw it with choice or int_log_uniform"),
    ({"width": {"int_log_uniform": [8.5, 64]}}, "whole-number bounds"),
    ({"depth": {"choice": [1, 2.5]}}, "whole numbers of layers"),
    ({"replay_recency": {"uniform": [0, 512]}}, "replay_recency: 0.0 is not a valid value"),
    ({"replay_recency": {"choice": [256, None]}}, "replay_recency: None is not a valid value"),
    ({"beta1": {"one_minus_log_uniform": [0.9, 1.0]}}, "values below 1"),
    ({"hidden": {"choice": [[8]]}, "width": {"int_log_uniform": [8, 64]}}, "not both"),
    ({}, "non-empty table"),
    ("lr=0.1", "non-empty table"),
])
def test_a_malformed_space_is_refused_with_what_is_wrong(spec, words):
    with pytest.raises(EngineError, match="search_space") as err:
        SearchSpace.parse(spec)
    assert words in str(err.value)


def test_replay_recency_is_a_members_replay_setting_not_its_models():
    space = SearchSpace.parse({"lr": {"log_uniform": [1e-3, 1e-2]}, "replay_recency": {"log_uniform": [128, 4096]}})
    draw = space.sample(np.random.default_rng(0))
    assert 128 <= draw["replay_recency"] <= 4096
    settings = space.apply({"hidden": (8,)}, draw)
    assert "replay_recency" not in settings and settings["lr"] == draw["lr"]
    assert space.replay_settings(draw) == {"recency": draw["replay_recency"]}
    assert space.replay_settings({"lr": 0.1}) == {}
    assert "replay_recency" in DEFAULT_SPACE
