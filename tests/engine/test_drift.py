"""ADWIN against River's on the same sequences: the same detections, value for value,
whatever the batches the values come in; and a state that resumes exactly."""
from __future__ import annotations

import numpy as np
import pytest

from learnd.engine import EngineError
from learnd.engine.drift import ADWIN


def _sequences(rng):
    return {
        "bernoulli_shifts": np.concatenate([rng.random(3000) < 0.1, rng.random(3000) < 0.4,
                                            rng.random(3000) < 0.15]).astype(float),
        "stationary": (rng.random(20000) < 0.2).astype(float),
        "gaussian_step": np.concatenate([rng.normal(0, 1, 2000), rng.normal(0.8, 1, 2000)]),
        "gradual": (rng.random(10000) < np.linspace(0.05, 0.5, 10000)).astype(float),
        "short": np.array([0.0, 1.0, 1.0, 0.0, 1.0]),
    }


def _river_positions(seq, **kw):
    from river.drift import ADWIN as RiverADWIN

    d = RiverADWIN(**kw)
    found = []
    for i, v in enumerate(seq):
        d.update(float(v))
        if d.drift_detected:
            found.append(i)
    return found


def _positions(seq, batch, **kw):
    a = ADWIN(**kw)
    found = []
    for k in range(0, len(seq), batch):
        found += (a.update(seq[k:k + batch]) + k).tolist()
    assert a.detections == len(found) and a.seen == len(seq)
    return found


@pytest.mark.parametrize("params", [{}, {"delta": 0.05, "clock": 1}, {"delta": 1e-4, "clock": 8, "max_buckets": 3,
                                                                       "min_window_length": 10, "grace_period": 50}])
def test_detections_are_rivers_value_for_value(params, seed):
    pytest.importorskip("river")
    rng = np.random.default_rng(seed)
    for name, seq in _sequences(rng).items():
        expected = _river_positions(seq, **params)
        for batch in (1, 64, 77, len(seq)):
            assert _positions(seq, batch, **params) == expected, (name, batch)


def test_a_shift_is_found_soon_after_it_and_a_flat_stream_gives_no_alarm(seed):
    rng = np.random.default_rng(seed)
    a = ADWIN()
    assert a.update((rng.random(50_000) < 0.2).astype(float)).tolist() == []
    found = a.update((rng.random(5_000) < 0.6).astype(float))
    assert found.shape == (1,) and found[0] < 500 and a.rises.tolist() == [True]
    assert 0.5 < a.estimation < 0.7
    a.update((rng.random(20_000) < 0.6).astype(float))
    found = a.update((rng.random(5_000) < 0.1).astype(float))    # the errors fall: a change, not a rise
    assert found.shape == (1,) and a.rises.tolist() == [False]


def test_a_restored_state_goes_on_exactly(seed):
    rng = np.random.default_rng(seed)
    seq = (rng.random(12_000) < np.repeat([0.1, 0.5, 0.2], 4000)).astype(float)
    whole = ADWIN()
    expected = whole.update(seq).tolist()
    first = ADWIN()
    got = first.update(seq[:5000]).tolist()
    second = ADWIN()
    second.set_state(first.get_state())
    got += (second.update(seq[5000:]) + 5000).tolist()
    assert got == expected and len(expected) >= 2


@pytest.mark.parametrize("kw", [{"delta": 0.0}, {"delta": 1.5}, {"clock": 0}, {"max_buckets": 2.5}])
def test_bad_parameters_are_refused(kw):
    with pytest.raises(EngineError):
        ADWIN(**kw)
