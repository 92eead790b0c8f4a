"""Data-parallel steps (engine.collective): ranks that each learn their own rows end with
the model one rank would have made from the union of their batches.

The ranks here are threads joined by an in-process sum (the daemon's ranks are MPI
processes: tests/integration/test_data_parallel.py runs those under mpiexec).
"""
import threading

import numpy as np
import pytest

from learnd import Model
from learnd.engine.collective import pooled_moments


class ThreadGroup:
    """`size` ranks in threads of this process; sum() adds every rank's buffer in rank
    order, so every rank gets the same bits."""

    def __init__(self, size):
        self.size = size
        self._barrier = threading.Barrier(size, timeout=30)
        self._bufs = [None] * size

    def member(self, rank):
        group = self

        class Member:
            def __init__(self):
                self.rank, self.size = rank, group.size

            def sum(self, buf):
                group._bufs[rank] = buf.copy()
                group._barrier.wait()
                total = group._bufs[0].copy()
                for other in group._bufs[1:]:
                    total += other
                group._barrier.wait()
                buf[...] = total

        return Member()


def run_ranks(size, work):
    """work(rank, collective) in one thread per rank; returns their results by rank."""
    group = ThreadGroup(size)
    results, errors = [None] * size, []

    def target(rank):
        try:
            results[rank] = work(rank, group.member(rank))
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)
            group._barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def batches(seed, steps, m, d, task):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        X = rng.normal(3.0, 2.0, (m, d))
        if task == "regression":
            y = X @ rng.normal(size=d) + 50.0 + rng.normal(size=m)
        else:
            y = (X[:, 0] + X[:, 1] > 6.0).astype(np.int64) + (X[:, 2] > 3.0)
        out.append((X, y))
    return out


SETTINGS = {
    "multiclass": dict(task="multiclass", n_outputs=3),
    "regression": dict(task="regression", n_outputs=1, normalize_targets=True),
}


@pytest.mark.parametrize("task", ["multiclass", "regression"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_two_ranks_equal_one_model_on_the_concatenated_batches(task, optimizer):
    kw = dict(hidden=(16, 8), dtype="float64", seed=3, input_dim=5, optimizer=optimizer, lr=0.01,
              l2=1e-3, schedule="inverse_time", decay_rate=0.5, epoch_size=100, **SETTINGS[task])
    A = batches(1, 30, 12, 5, task)
    B = batches(2, 30, 7, 5, task)          # a different batch size on each rank

    def work(rank, collective):
        model = Model(**kw)
        model.join(collective)
        for (xa, ya), (xb, yb) in zip(A, B):
            model.partial_fit(*((xa, ya) if rank == 0 else (xb, yb)))
        return model

    ranks = run_ranks(2, work)
    alone = Model(**kw)
    for (xa, ya), (xb, yb) in zip(A, B):
        alone.partial_fit(np.vstack([xa, xb]), np.concatenate([ya, yb]))
    for model in ranks:
        for name, value in alone.params.items():
            np.testing.assert_allclose(model.params[name], value, rtol=0, atol=1e-10, err_msg=name)
        assert model.samples_seen == alone.samples_seen == 30 * 19
        assert model.learning_rate == alone.learning_rate
        np.testing.assert_allclose(model.normalizer.mean, alone.normalizer.mean, atol=1e-10)
        np.testing.assert_allclose(model.normalizer.m2, alone.normalizer.m2, rtol=1e-12)
        np.testing.assert_allclose(model.targets.out_shift, alone.targets.out_shift, atol=1e-10)
    X = batches(9, 1, 50, 5, task)[0][0]
    np.testing.assert_array_equal(ranks[0].predict_proba(X), ranks[1].predict_proba(X))


def test_a_rank_without_rows_contributes_weight_zero():
    kw = dict(hidden=(8,), task="multiclass", n_outputs=3, dtype="float64", seed=0, input_dim=5)
    A = batches(4, 10, 16, 5, "multiclass")

    def work(rank, collective):
        model = Model(**kw)
        model.join(collective)
        for i, (x, y) in enumerate(A):
            if rank == 0 or i % 2:       # rank 1 learns only the odd batches' second half
                if rank == 0:
                    model.partial_fit(x[:8] if i % 2 else x, y[:8] if i % 2 else y)
                else:
                    model.partial_fit(x[8:], y[8:])
            else:
                assert model.step_without_rows() == 16
        return model

    ranks = run_ranks(2, work)
    alone = Model(**kw)
    for x, y in A:
        alone.partial_fit(x, y)
    for model in ranks:
        for name, value in alone.params.items():
            np.testing.assert_allclose(model.params[name], value, atol=1e-10, err_msg=name)
        assert model.steps == alone.steps == 10


def test_batch_norm_running_statistics_are_those_of_the_union():
    """Each rank normalizes with its own batch statistics; the running statistics every
    rank keeps are those of the union of the batches, so the ranks stay equal."""
    kw = dict(hidden=(6, 4), task="multiclass", n_outputs=3, dtype="float64", seed=5, input_dim=5,
              batch_norm=True, bn_beta=0.5, normalize_inputs=False)
    A = batches(6, 1, 10, 5, "multiclass")[0]
    B = batches(7, 1, 4, 5, "multiclass")[0]
    W1 = Model(**kw).params["W1"].copy()     # every rank starts from the seed's weights

    def work(rank, collective):
        model = Model(**kw)
        model.join(collective)
        model.partial_fit(*(A if rank == 0 else B))
        for _ in range(5):
            model.partial_fit(*(A if rank == 0 else B))
        return model

    ranks = run_ranks(2, work)
    for name, value in ranks[0].params.items():
        np.testing.assert_array_equal(ranks[1].params[name], value, err_msg=name)
    # After one step: running = 0.5 * initial + 0.5 * the union's statistics of layer 1's Z.
    first = run_ranks(2, lambda rank, c: (lambda m: (m.join(c), m.partial_fit(*(A if rank == 0 else B)), m)[2])(
        Model(**kw)))
    Z = np.vstack([A[0], B[0]]) @ W1.T
    m = Z.shape[0]
    np.testing.assert_allclose(first[0].params["running_mean1"], 0.5 * Z.mean(0), atol=1e-12)
    np.testing.assert_allclose(first[0].params["running_var1"], 0.5 + 0.5 * Z.var(0) * m / (m - 1), atol=1e-12)
    one_rank = Model(**kw)
    one_rank.partial_fit(*A)
    assert not np.allclose(one_rank.params["running_mean1"], first[0].params["running_mean1"])


def test_a_non_finite_step_on_one_rank_is_skipped_by_every_rank():
    kw = dict(hidden=(8,), task="regression", n_outputs=1, dtype="float64", seed=0, input_dim=3,
              normalize_inputs=False)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 3)), rng.normal(size=8)

    def work(rank, collective):
        model = Model(**kw)
        model.join(collective)
        model.partial_fit(X, y)
        bad = y.copy()
        if rank == 1:
            bad[0] = 1e300           # its squared error overflows to inf
        model.partial_fit(X, bad)
        return model

    ranks = run_ranks(2, work)
    for model in ranks:
        assert model.nonfinite_steps == 1 and model.steps == 1
    np.testing.assert_array_equal(ranks[0].params["W1"], ranks[1].params["W1"])


def test_pooled_moments_equal_those_of_the_concatenation():
    rng = np.random.default_rng(1)
    parts = [rng.normal(5.0, 3.0, (n, 4)) for n in (7, 0, 20)]

    def work(rank, collective):
        x = parts[rank]
        mean = x.mean(0) if len(x) else np.zeros(4)
        m2 = ((x - mean) ** 2).sum(0) if len(x) else np.zeros(4)
        return pooled_moments(collective, float(len(x)), mean, m2)

    whole = np.vstack(parts)
    for count, mean, m2 in run_ranks(3, work):
        assert count == 27
        np.testing.assert_allclose(mean, whole.mean(0), rtol=1e-13)
        np.testing.assert_allclose(m2, ((whole - whole.mean(0)) ** 2).sum(0), rtol=1e-12)


def test_dropout_streams_differ_by_rank_and_rank_zero_keeps_the_models():
    kw = dict(hidden=(8,), task="binary", dtype="float64", seed=11, input_dim=3, keep_prob=0.5)
    states = run_ranks(2, lambda rank, c: (lambda m: (m.join(c), m.rng_state.copy())[1])(Model(**kw)))
    np.testing.assert_array_equal(states[0], Model(**kw).rng_state)
    assert not np.array_equal(states[0], states[1])
