"""The population: every member learns every row, a bad batch changes no member, the
champion moves only on a difference beyond the noise, each strategy does what it says,
serving answers from the champion or the ensemble, and a restored population goes on
exactly as the one saved, the same draws included."""
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from learnd import Population
from learnd.engine import EngineError
from learnd.engine.datasets import load
from learnd.engine.population import GRACE, NOISE_SIGMAS, paired_difference, row_scores

SMALL = dict(task="multiclass", n_outputs=10, hidden=(16,))
LR_SPACE = {"lr": {"log_uniform": [1e-3, 3e-2]}}


@pytest.fixture(scope="module")
def digits():
    X, y, _ = load("digits")
    order = np.random.default_rng(5).permutation(len(X))
    return X[order].astype(np.float32), y[order]


def _stream(X, y, passes=1, batch=32):
    for _ in range(passes):
        for i in range(0, len(X) - batch + 1, batch):
            yield X[i:i + batch], y[i:i + batch]


def _feed(pop, X, y, passes=1, batch=32):
    for xb, yb in _stream(X, y, passes, batch):
        pop.partial_fit(xb, yb)


def _params(pop):
    return [{k: v.copy() for k, v in mb.model.params.items()} for mb in pop.members]


def test_row_scores_match_a_plain_reference(rng):
    P = rng.dirichlet(np.ones(4), size=50)
    Y = np.eye(4)[rng.integers(0, 4, 50)]
    e, l = np.empty(50), np.empty(50)
    row_scores("multiclass", P, Y, e, l)
    assert_array_equal(e, (P.argmax(1) != Y.argmax(1)).astype(float))
    assert_allclose(l, -np.log((P * Y).sum(1)))
    Pb = rng.random((50, 3))
    Yb = (rng.random((50, 3)) > 0.5).astype(float)
    Yb[0, 1] = np.nan
    row_scores("multilabel", Pb, Yb, e, l)
    wrong = ((Pb >= 0.5) != (Yb >= 0.5)).astype(float)
    assert e[0] == pytest.approx((wrong[0, 0] + wrong[0, 2]) / 2)
    assert_allclose(e[1:], wrong[1:].mean(1))
    R, T = rng.standard_normal((50, 2)), rng.standard_normal((50, 2))
    row_scores("regression", R, T, e, l)
    assert_allclose(e, ((R - T) ** 2).sum(1))
    assert_allclose(l, 0.5 * ((R - T) ** 2).sum(1))


def test_paired_difference_is_the_mean_and_standard_error_of_the_differences(rng):
    a, b = rng.random(400), rng.random(400)
    mean, se, n = paired_difference(a, b)
    d = a - b
    assert (mean, n) == (pytest.approx(d.mean()), 400)
    assert se == pytest.approx(d.std(ddof=1) / 20)


def test_every_member_learns_every_row_and_the_draws_differ(digits):
    X, y = digits
    pop = Population(members=4, search_space=LR_SPACE, interval=10 ** 6, seed=3, **SMALL)
    _feed(pop, X[:640], y[:640])
    assert pop.rows_seen == 640
    assert [mb.model.samples_seen for mb in pop.members] == [640] * 4
    lrs = [mb.model.spec.lr for mb in pop.members]
    assert lrs[0] == 5e-3                          # member 0 is the base settings
    assert len(set(lrs)) == 4 and all(1e-3 <= lr <= 3e-2 for lr in lrs[1:])
    pop.close()


def test_members_train_on_threads_as_they_would_alone(digits):
    """Threads change when a member trains, not what it learns: the same as 1 thread."""
    X, y = digits
    pops = [Population(members=3, search_space=LR_SPACE, interval=5, min_rows=64, seed=2, threads=t, **SMALL)
            for t in (1, 3)]
    for p in pops:
        _feed(p, X[:800], y[:800])
    for a, b in zip(_params(pops[0]), _params(pops[1])):
        for k in a:
            assert_array_equal(a[k], b[k])
    assert pops[0].decisions == pops[1].decisions
    for p in pops:
        p.close()


@pytest.mark.parametrize("bad, words", [
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), y), "finite"),
    (lambda X, y: (X[:, :10], y), "features"),
    (lambda X, y: (X, y + 10), "label"),
    (lambda X, y: (X, y[:-1]), "shape"),
])
def test_a_bad_batch_is_refused_and_changes_no_member(digits, bad, words):
    X, y = digits
    pop = Population(members=3, search_space=LR_SPACE, interval=1, min_rows=32, **SMALL)
    _feed(pop, X[:256], y[:256])
    before, rows, decisions = _params(pop), pop.rows_seen, list(pop.decisions)
    with pytest.raises(EngineError, match=words):
        pop.partial_fit(*bad(X[256:288], y[256:288]))
    assert pop.rows_seen == rows and pop.decisions == decisions
    for a, b in zip(before, _params(pop)):
        for k in a:
            assert_array_equal(a[k], b[k])
    pop.close()


def test_a_one_row_batch_is_refused_when_any_member_uses_batch_norm(digits):
    X, y = digits
    pop = Population(members=2, search_space={"batch_norm": {"choice": [True]}}, **SMALL)
    with pytest.raises(EngineError, match="batch norm"):
        pop.partial_fit(X[:1], y[:1])
    assert pop.rows_seen == 0 and all(mb.model.samples_seen == 0 for mb in pop.members)
    pop.close()


def test_the_champion_moves_to_a_clearly_better_member_and_says_by_how_much(digits):
    """The base learning rate 1e-5 barely learns in one pass; every draw learns well."""
    X, y = digits
    pop = Population(members=4, search_space={"lr": {"log_uniform": [3e-3, 1e-2]}}, interval=4,
                     min_rows=256, seed=1, **{**SMALL, "lr": 1e-5})
    _feed(pop, X, y)
    assert pop.champion is not pop.members[0]
    moves = [d for d in pop.decisions if d["kind"] == "champion"]
    assert moves and moves[0]["previous"] == 0
    first = moves[0]
    assert first["difference"] + first["sigmas"] * first["standard_error"] < 0
    assert first["rows"] >= 256
    pop.close()


def test_the_champion_stays_among_equals(rng):
    """Labels drawn independently of the inputs: no member can be better than another,
    so every difference between them is noise.  Over 3,000 rows decided every 4
    batches, among 8 members of different learning rates, the champion stays."""
    for seed in (0, 1, 2):
        X = rng.standard_normal((3000, 8)).astype(np.float32)
        y = rng.integers(0, 4, 3000)
        pop = Population(members=8, search_space={"lr": {"log_uniform": [1e-3, 1e-2]}}, interval=4,
                         min_rows=256, seed=seed, task="multiclass", n_outputs=4, hidden=(8,))
        _feed(pop, X, y)
        assert [d for d in pop.decisions if d["kind"] == "champion"] == []
        assert pop.champion is pop.members[0]
        pop.close()


def test_the_bar_for_a_champion_rises_with_the_number_of_challengers():
    """... and is higher on few rows than on many (a confidence sequence), never below
    the plain rule."""
    pop = Population(members=2, min_rows=256, **SMALL)
    for rows in (256, 1024, 4096):
        bars = [pop.champion_sigmas(k, rows) for k in (1, 3, 7)]
        assert NOISE_SIGMAS < bars[0] < bars[1] < bars[2] < 5.0
    assert pop.champion_sigmas(7, 256) > pop.champion_sigmas(7, 4096)
    pop.close()


def test_random_replaces_losers_with_draws_from_the_space_around_the_best(digits):
    X, y = digits
    space = {"lr": {"log_uniform": [1e-5, 3e-2]}}
    pop = Population(members=8, search_space=space, strategy="random", interval=4, min_rows=200, seed=4,
                     **SMALL)
    _feed(pop, X, y, passes=2)
    replaced = [d for d in pop.decisions if d["kind"] == "replace"]
    assert replaced, "a space from 1e-5 to 3e-2 has clear losers"
    for d in replaced:
        lo, hi = d["space"]["lr"]["log_uniform"]
        assert lo <= d["draw"]["lr"] <= hi
        assert 1e-5 <= lo and hi <= 3e-2 and math.log10(hi / lo) < math.log10(3e-2 / 1e-5)
        assert d["replaced"] != d["member"] and d["replaced_figure"]["rows"] >= 200
        assert d["replaced_age"] >= GRACE * 200           # a newcomer gets time to learn first
    ids = {mb.id for mb in pop.members}
    assert all(d["replaced"] not in ids for d in replaced)      # a replaced member is gone
    for mb in pop.members:                                      # a newcomer learns from its first row on
        assert mb.model.samples_seen == pop.rows_seen - mb.born_row
    pop.close()


def test_halving_keeps_the_top_third_at_each_rung(digits):
    X, y = digits
    pop = Population(members=6, search_space={"lr": {"log_uniform": [1e-5, 3e-2]}}, strategy="halving", eta=3,
                     interval=2, min_rows=128, seed=2, **SMALL)
    _feed(pop, X, y, passes=2)
    events = {}
    for d in pop.decisions:
        if d["kind"] in ("promote", "replace") and "compared" in d:
            events.setdefault((d["batch"], tuple(c["member"] for c in d["compared"])), []).append(d)
    assert events
    for (_, order), ds in events.items():
        promoted = [d["member"] for d in ds if d["kind"] == "promote" and d.get("why") != "champion"]
        assert promoted == list(order[:math.ceil(len(order) / 3)])      # the best, in order
        values = [c["value"] for c in ds[0]["compared"]]
        assert values == sorted(values)
    assert max(mb.rung for mb in pop.members) >= 1
    pop.close()


def test_pbt_copies_a_winner_and_perturbs_its_live_settings(digits):
    X, y = digits
    space = {"lr": {"log_uniform": [1e-5, 3e-2]}, "l2": {"log_uniform": [1e-6, 1e-3]}}
    pop = Population(members=8, search_space=space, strategy="pbt", interval=10 ** 6, min_rows=200, seed=6,
                     **SMALL)
    _feed(pop, X[:1024], y[:1024])
    donors = {mb.id: (mb, {k: v.copy() for k, v in mb.model.params.items()}) for mb in pop.members}
    made = [d for d in pop.decide() if d["kind"] == "copy"]
    assert made
    for d in made:
        new = next(mb for mb in pop.members if mb.id == d["member"])
        donor, params = donors[d["parent"]]
        for k, v in params.items():                      # weights copied, untouched since
            assert_array_equal(new.model.params[k], v)
        assert new.model.samples_seen == donor.model.samples_seen
        assert new.model.optimizer.t == donor.model.optimizer.t
        for name in ("lr", "l2"):
            lo, hi = space[name]["log_uniform"]
            start = min(max(getattr(donor.model.spec, name), lo), hi)   # the base's l2 = 0 counts as lo
            allowed = [pytest.approx(min(max(start * f, lo), hi)) for f in (0.8, 1.25)]
            assert getattr(new.model.spec, name) in allowed, (name, start)
    pop.close()


def test_each_member_replays_with_its_drawn_recency_which_pbt_perturbs_and_a_restore_keeps(digits, tmp_path):
    X, y = digits
    space = {"lr": {"log_uniform": [1e-3, 3e-2]}, "replay_recency": {"log_uniform": [128, 4096]}}
    pop = Population(members=6, search_space=space, strategy="pbt", interval=10 ** 6, min_rows=200, seed=2,
                     replay_ratio=1, replay_recency=300.0, **SMALL)
    assert pop.members[0].replay.recency == 300.0 == pop.members[0].draw["replay_recency"]   # the base's
    for mb in pop.members[1:]:
        assert mb.replay.recency == mb.draw["replay_recency"] and 128 <= mb.replay.recency <= 4096
    _feed(pop, X[:1024], y[:1024])
    recency = {mb.id: mb.replay.recency for mb in pop.members}
    made = [d for d in pop.decide() if d["kind"] == "copy"]
    assert made
    for d in made:                 # x0.8 or x1.25 of the donor's, within the space
        new = next(mb for mb in pop.members if mb.id == d["member"])
        allowed = [pytest.approx(min(max(recency[d["parent"]] * f, 128), 4096)) for f in (0.8, 1.25)]
        assert new.replay.recency == pytest.approx(new.draw["replay_recency"]) and new.replay.recency in allowed
        assert "replay_recency" not in new.settings
    with pytest.raises(EngineError, match="replay_recency is searched"):
        pop.set_replay_recency(64.0)
    pop.save(tmp_path / "pop.npz")
    back = Population.load(tmp_path / "pop.npz", threads=1)
    assert [mb.replay.recency for mb in back.members] == [mb.replay.recency for mb in pop.members]
    pop.close()
    back.close()

    uniform = Population(members=2, search_space=space, interval=0, replay_ratio=1, replay_recency=None, **SMALL)
    assert "replay_recency" not in uniform.members[0].draw and uniform.members[0].replay.recency is None
    uniform.close()

    fixed = Population(members=3, search_space=LR_SPACE, interval=0, replay_ratio=1, **SMALL)
    fixed.set_replay_recency(None)                 # not searched: every member takes it
    assert [mb.replay.recency for mb in fixed.members] == [None] * 3
    fixed.close()


def test_ensemble_serves_the_mean_of_the_top_members_in_one_call(digits):
    """Members of different shapes (depth 0-2, batch norm or not): the kernel's mean
    equals the members' own predictions averaged."""
    X, y = digits
    space = {"width": {"int_log_uniform": [8, 32]}, "depth": {"choice": [0, 1, 2]},
             "batch_norm": {"choice": [False, True]}}
    pop = Population(members=5, search_space=space, serve="ensemble", ensemble_k=3, interval=4,
                     min_rows=128, seed=8, **SMALL)
    _feed(pop, X[:1024], y[:1024])
    served = pop.served()
    assert len(served) == 3 and served[0] is pop.champion
    expected = np.mean([mb.model.predict_proba(X[1024:1100]) for mb in served], axis=0)
    assert_allclose(pop.predict_proba(X[1024:1100]), expected, rtol=1e-5, atol=1e-6)
    assert_array_equal(pop.predict(X[1024:1100]), expected.argmax(1))
    snap = pop.snapshot(version=7)
    assert snap.meta == {"member": "ensemble", "members": [mb.id for mb in served]} and snap.version == 7
    pop.close()


def test_champion_serving_is_the_champions_own_prediction(digits):
    X, y = digits
    pop = Population(members=3, search_space=LR_SPACE, interval=4, min_rows=128, **SMALL)
    _feed(pop, X[:512], y[:512])
    assert_array_equal(pop.predict_proba(X[600:650]), pop.champion.model.predict_proba(X[600:650]))
    assert pop.snapshot().meta == {"member": pop.champion.id}
    pop.close()


def test_leaderboard_ranks_members_on_shared_rows(digits):
    X, y = digits
    pop = Population(members=4, search_space={"lr": {"log_uniform": [1e-5, 3e-2]}}, interval=4, min_rows=128,
                     seed=3, **SMALL)
    _feed(pop, X[:1024], y[:1024])
    board = pop.leaderboard()
    assert [row["member"] for row in board] != [] and sum(row["champion"] for row in board) == 1
    judged = [row for row in board if row["rank"] is not None]
    assert [row["rank"] for row in judged] == list(range(1, len(judged) + 1))
    assert [row["value"] for row in judged] == sorted(row["value"] for row in judged)
    assert len({row["rows_compared"] for row in judged}) == 1
    for row in board:
        assert set(row) >= {"member", "draw", "rows_trained", "age_rows", "value", "standard_error", "state"}
        if row["age_rows"] == 0:                 # replaced at the last decision
            assert row["value"] is None and row["rows_compared"] == 0
        else:
            assert 0 <= row["value"] <= 1 and row["standard_error"] > 0
    pop.close()


@pytest.mark.parametrize("strategy", ["random", "halving", "pbt"])
def test_a_restored_population_goes_on_exactly_as_the_saved_one(digits, tmp_path, strategy):
    """Members, champion, score rings, decisions and the draws still to come."""
    X, y = digits
    kw = dict(members=5, search_space={"lr": {"log_uniform": [1e-5, 3e-2]}, "width": {"int_log_uniform": [8, 32]}},
              strategy=strategy, interval=3, min_rows=96, seed=11, replay_ratio=2, **SMALL)
    pop = Population(**kw)
    _feed(pop, X[:800], y[:800])
    pop.save(tmp_path / "pop.npz")
    again = Population.load(tmp_path / "pop.npz")
    assert again.champion.id == pop.champion.id and again.decisions == pop.decisions
    for a, b in ((pop, X[800:]), (again, X[800:])):
        _feed(a, b, y[800:])
    assert [mb.id for mb in again.members] == [mb.id for mb in pop.members]
    assert again.decisions == pop.decisions and len(pop.decisions) > 0
    assert again.champion.id == pop.champion.id
    for a, b in zip(_params(pop), _params(again)):
        for k in a:
            assert_array_equal(a[k], b[k])
    assert again.leaderboard() == pop.leaderboard()
    pop.close()
    again.close()


def test_a_damaged_population_file_is_refused(tmp_path):
    path = tmp_path / "pop.npz"
    path.write_bytes(b"not a population")
    with pytest.raises(EngineError, match="population"):
        Population.load(path)


@pytest.mark.parametrize("kw, words", [
    (dict(members=1), "members >= 2"),
    (dict(strategy="grid"), "strategy"),
    (dict(metric="accuracy"), "metric"),
    (dict(serve="best"), "serve"),
    (dict(interval=-1), "interval"),
    (dict(min_rows=10_000, window=4096), "min_rows"),
    (dict(search_space={"lr": {"log_uniform": [0, 1]}}), "search_space"),
    (dict(lr=-1.0), "lr"),
])
def test_bad_population_settings_are_refused(kw, words):
    with pytest.raises(EngineError, match=words):
        Population(**{**SMALL, **kw})


def test_a_dev_metric_decides_on_the_dev_rows_every_member_scored(digits):
    X, y = digits

    def trained():
        pop = Population(members=4, search_space={"lr": {"log_uniform": [3e-3, 1e-2]}}, metric="dev_error",
                         interval=0, min_rows=128, min_dev_rows=100, seed=1, **{**SMALL, "lr": 1e-5})
        _feed(pop, X[:1200], y[:1200])
        assert pop.decisions == []                   # interval 0: only decide() decides
        return pop

    few = trained()                                  # 50 dev rows: too few, the training rows decide
    moves = [d for d in few.decide(dev=(X[1200:1250], y[1200:1250])) if d["kind"] == "champion"]
    assert moves and moves[0]["rows"] >= 128 and moves[0]["rows"] != 50
    few.close()
    pop = trained()
    moves = [d for d in pop.decide(dev=(X[1200:], y[1200:])) if d["kind"] == "champion"]
    assert moves and moves[0]["rows"] == len(X) - 1200 and pop.champion is not pop.members[0]
    assert pop.dev_figures[0]["value"] > pop.dev_figures[pop.champion.id]["value"]   # 0 may be replaced since
    champion_row = next(row for row in pop.leaderboard() if row["champion"])
    assert champion_row["dev"] == pop.dev_figures[pop.champion.id] and champion_row["dev"]["rows"] == len(X) - 1200
    pop.close()


def test_rehearse_takes_one_replay_step_for_every_member(digits):
    X, y = digits
    pop = Population(members=3, search_space=LR_SPACE, interval=0, replay_rows=256, **SMALL)
    assert pop.rehearse() == 0
    _feed(pop, X[:128], y[:128])
    steps = [mb.model.steps for mb in pop.members]
    assert pop.rehearse() == 3
    assert [mb.model.steps for mb in pop.members] == [s + 1 for s in steps]
    assert [mb.model.samples_seen for mb in pop.members] == [128] * 3     # replay rows are not new rows
    pop.close()


def test_each_members_replay_cuts_its_window_when_its_error_rises(tmp_path):
    """A binary stream whose hyperplane is replaced at row 3,000: every member's ring
    stops drawing the old concept's rows, and a saved population keeps the cut."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((6000, 4)).astype(np.float32)
    y = np.where(np.arange(6000) < 3000, X[:, 0] + 0.5 * X[:, 1] > 0, X[:, 2] - X[:, 0] > 0).astype(int)
    pop = Population(members=3, search_space=LR_SPACE, interval=0, replay_ratio=1, replay_rows=8192,
                     task="binary", hidden=(8,), threads=1)
    _feed(pop, X, y)
    for mb in pop.members:     # ADWIN places a change to within its buckets: a few old rows may stay
        assert mb.replay.cuts >= 1 and mb.replay.window <= 3000 + 256 < mb.replay.filled
    pop.save(tmp_path / "pop.npz")
    back = Population.load(tmp_path / "pop.npz", threads=1)
    assert [(mb.replay.window, mb.replay.cuts) for mb in back.members] == \
        [(mb.replay.window, mb.replay.cuts) for mb in pop.members]
    pop.close()
    back.close()


def test_an_ensemble_travels_as_one_buffer_and_predicts_the_same_from_it(digits):
    from learnd.engine.ensemble import Ensemble, snapshot_from_buffer
    X, y = digits
    pop = Population(members=3, search_space={"depth": {"choice": [1, 2]}}, serve="ensemble", ensemble_k=3,
                     interval=0, **SMALL)
    _feed(pop, X[:256], y[:256])
    ens = pop.snapshot(version=5)
    back = snapshot_from_buffer(ens.to_bytes())
    assert isinstance(back, Ensemble) and back.version == 5 and back.meta == ens.meta
    Xq = np.ascontiguousarray(X[300:340])
    out = [e.predict_into(Xq, np.empty((40, 10), np.float32), e.new_workspace()) for e in (ens, back)]
    assert_array_equal(out[0], out[1])
    single = snapshot_from_buffer(pop.members[0].model.snapshot(version=2).to_bytes())
    assert single.version == 2 and not isinstance(single, Ensemble)
    pop.close()


@pytest.mark.parametrize("task, n_outputs", [("binary", 1), ("multilabel", 3), ("regression", 2)])
def test_every_task_trains_scores_and_serves(rng, task, n_outputs):
    X = rng.standard_normal((768, 6)).astype(np.float32)
    if task == "regression":
        y = np.stack([X[:, 0] + 0.5 * X[:, 1], X[:, 2] - X[:, 3]], axis=1)
    else:
        y = (X[:, :n_outputs] + 0.2 * rng.standard_normal((768, n_outputs)) > 0).astype(float)
        if task == "multilabel":
            y[::7, 1] = np.nan                     # no label: masked out of scores and loss
        y = y.reshape(768, n_outputs) if n_outputs > 1 else y[:, 0]
    pop = Population(members=4, search_space=LR_SPACE, serve="ensemble", ensemble_k=2, interval=4, min_rows=64,
                     task=task, n_outputs=n_outputs, hidden=(8,))
    _feed(pop, X, y)
    board = pop.leaderboard()
    assert all(row["value"] is None or math.isfinite(row["value"]) for row in board)
    served = pop.served()
    expected = np.mean([mb.model.predict_proba(X[:20]) for mb in served], axis=0)
    assert_allclose(pop.predict_proba(X[:20]), expected, rtol=1e-5, atol=1e-6)
    assert pop.predict(X[:20]).shape == ((20, n_outputs) if task != "multiclass" else (20,))
    pop.close()


def test_a_buffer_refilled_at_once_changes_nothing_the_members_learn(digits):
    """partial_fit returns before every member has learned the batch (they go on in the
    background); each reads its own copy, so a caller that refills its buffer at once,
    as the daemon's re-batching does, changes nothing: the same as one thread."""
    X, y = digits
    alone, piped = (Population(members=4, search_space=LR_SPACE, interval=0, seed=3, threads=t, **SMALL)
                    for t in (1, 2))
    buf_x, buf_y = np.empty((32, X.shape[1]), np.float32), np.empty(32, np.int64)
    for xb, yb in _stream(X[:960], y[:960]):
        alone.partial_fit(xb, yb)
        buf_x[:], buf_y[:] = xb, yb
        piped.partial_fit(buf_x, buf_y)
        buf_x[:], buf_y[:] = -1e3, 0          # what the buffer holds while members may still learn
    for a, b in zip(_params(alone), _params(piped)):
        for k in a:
            assert_array_equal(a[k], b[k])
    assert [mb.model.samples_seen for mb in piped.members] == [960] * 4    # `members` waits for them
    assert_array_equal(alone._error, piped._error)
    for p in (alone, piped):
        p.close()


def test_skipped_steps_are_counted_across_members(digits):
    """A member whose steps are not finite skips them; the population counts them all."""
    X, y = digits
    pop = Population(members=3, search_space={"lr": {"log_uniform": [1e30, 1e31]}}, interval=0, seed=1,
                     threads=2, optimizer="sgd", **SMALL)
    _feed(pop, X[:320], y[:320])
    per_member = [mb.model.nonfinite_steps for mb in pop.members]
    assert per_member[0] == 0 and min(per_member[1:]) > 0, per_member
    assert pop.nonfinite_steps() == sum(per_member)
    pop.close()


def test_renew_replaces_the_worst_quarter_from_the_whole_space_and_keeps_the_champion(digits):
    X, y = digits
    pop = Population(members=8, search_space=LR_SPACE, interval=10 ** 6, min_rows=64, seed=5, **SMALL)
    _feed(pop, X[:640], y[:640])
    champion = pop.champion
    assert len(pop.ranking()) == 8                                   # every member judged
    worst = [mb.id for mb in pop.ranking() if mb is not champion][-2:]
    made = pop.renew()
    assert [d["replaced"] for d in made] == worst and all(d["reason"] == "drift" for d in made)
    assert pop.champion is champion and champion in pop.members
    assert {d["member"] for d in made} <= {mb.id for mb in pop.members}
    assert all(d["space"] == pop.space.to_dict() for d in made)      # not a narrowed space
    for d in made:
        (mb,) = [m for m in pop.members if m.id == d["member"]]
        assert mb.model.samples_seen == 0
    pop.close()
