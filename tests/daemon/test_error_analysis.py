"""Error analysis on its own: confusion, errors by tag and confident-learning suspects
against plain loops written from their definitions; tags on the wire; the tag vocabulary;
reservoirs keeping tags and ids through a checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

from learnd.clients.protocol import ProtocolError
from learnd.daemon.ingest.tags import check_tags
from learnd.daemon.training.error_analysis import analyse, class_outputs, confusion, suspects, tag_table
from learnd.daemon.training.evaluation import Reservoir
from learnd.daemon.training.tags import OTHER, TagVocabulary


def _softmax_rows(rng, n, k, sharp=3.0):
    z = rng.standard_normal((n, k)) * sharp
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_confusion_counts_every_pair_like_a_loop():
    rng = np.random.default_rng(1)
    true, pred = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    ref = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(true, pred):
        ref[t, p] += 1
    assert np.array_equal(confusion(true, pred, 4), ref)


def test_binary_rows_become_two_classes():
    P = np.array([[0.2], [0.7], [0.5]], dtype=np.float32)
    Y = np.array([[1.0], [0.0], [1.0]], dtype=np.float32)
    true, pred, probs = class_outputs("binary", P, Y)
    assert true.tolist() == [1, 0, 1] and pred.tolist() == [0, 1, 1]
    np.testing.assert_allclose(probs, [[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]], rtol=1e-6)
    a = analyse("binary", P, Y, np.zeros((3, 0), bool), [], np.zeros(3, np.int64), np.zeros(3, bool), 10)
    # row 0 (label 1, p 0.2) and row 1 (label 0, p 0.7) are wrong; 0.5 counts as 1
    assert a["errors"] == 2 and a["confusion"] == [[0, 1], [1, 1]]


def test_the_tag_table_is_the_course_table():
    rng = np.random.default_rng(2)
    n, T = 400, 3
    wrong = rng.random(n) < 0.2
    tags = rng.random((n, T)) < [0.1, 0.3, 0.0]
    table = tag_table(wrong, tags, ["blurry", "dog", "unused"])
    assert [t["tag"] for t in table] == ["blurry", "dog"]      # a tag no row carries is left out
    for t, col in zip(table, (0, 1)):
        rows = sum(1 for i in range(n) if tags[i, col])
        errors = sum(1 for i in range(n) if tags[i, col] and wrong[i])
        assert (t["rows"], t["errors"]) == (rows, errors)
        assert t["error"] == pytest.approx(errors / rows)
        assert t["share"] == pytest.approx(errors / wrong.sum())
        assert t["ceiling"] == pytest.approx(errors / n)
        # fixing every error with the tag lowers the split's error by the ceiling
        fixed = wrong & ~tags[:, col]
        assert wrong.mean() - fixed.mean() == pytest.approx(t["ceiling"])


def _suspects_by_loop(probs, true):
    n, C = probs.shape
    thr = [np.mean([probs[i, j] for i in range(n) if true[i] == j]) if (true == j).any() else np.nan
           for j in range(C)]
    found = []
    for i in range(n):
        others = [(probs[i, j], j) for j in range(C) if j != true[i] and probs[i, j] >= thr[j]]
        if probs[i, true[i]] < thr[true[i]] and others:
            p, j = max(others)
            found.append((p - probs[i, true[i]], i, j))
    found.sort(key=lambda f: -f[0])
    return [i for _, i, _ in found], [j for _, _, j in found]


def test_suspects_follow_confident_learning_rule_for_rule():
    rng = np.random.default_rng(3)
    probs = _softmax_rows(rng, 300, 5)
    true = rng.integers(0, 4, 300)             # class 4 is never a given label: no threshold
    rows, suggested, margin = suspects(probs, true)
    ref_rows, ref_suggested = _suspects_by_loop(probs, true)
    assert rows.tolist() == ref_rows and suggested.tolist() == ref_suggested
    assert np.all(np.diff(margin) <= 0) and np.all(margin > 0)
    assert 4 not in suggested.tolist()


def test_a_flipped_label_on_a_confident_model_is_the_first_suspect():
    rng = np.random.default_rng(4)
    n, C = 200, 3
    true = rng.integers(0, C, n)
    probs = np.full((n, C), 0.05)
    probs[np.arange(n), true] = 0.9
    given = true.copy()
    given[17] = (true[17] + 1) % C
    rows, suggested, _ = suspects(probs, given)
    assert rows.tolist() == [17] and suggested.tolist() == [true[17]]


def test_analyse_lists_ids_of_suspects_and_bounds_the_list():
    rng = np.random.default_rng(5)
    n, C = 300, 3
    P = _softmax_rows(rng, n, C).astype(np.float32)
    y = rng.integers(0, C, n)
    Y = np.eye(C, dtype=np.float32)[y]
    ids = np.arange(1000, 1000 + n)
    has_id = np.arange(n) % 2 == 0
    a = analyse("multiclass", P, Y, np.zeros((n, 1), bool), ["t"], ids, has_id, 5)
    assert a["suspects"]["count"] > 5 and len(a["suspects"]["listed"]) == 5
    for s in a["suspects"]["listed"]:
        assert s["id"] is None or (s["id"] - 1000) % 2 == 0
    assert analyse("regression", P, Y, np.zeros((n, 1), bool), ["t"], ids, has_id, 5) is None


@pytest.mark.parametrize("tags, header, code", [
    (np.array([0, 1, 2, 0], np.int32), {"tag_names": ["a", "b"]}, "bad_tag"),          # code 2 of 2 names
    (np.array([0, -2, 1, 0], np.int32), {"tag_names": ["a", "b"]}, "bad_tag"),
    (np.array([[0, 2], [1, 0], [0, 0], [1, 1]]), {"tag_names": ["a", "b"]}, "bad_tag"),
    (np.array([0.0, 1.0, 0.0, 1.0]), {"tag_names": ["a", "b"]}, "bad_array"),           # floats
    (np.array([0, 1, 0], np.int32), {"tag_names": ["a", "b"]}, "shape_mismatch"),      # 3 rows for 4
    (np.zeros((4, 3), np.int8), {"tag_names": ["a", "b"]}, "shape_mismatch"),          # 3 columns for 2 names
    (np.zeros(4, np.int32), {}, "bad_header"),                                          # no tag_names
    (np.zeros(4, np.int32), {"tag_names": ["a", "a"]}, "bad_header"),
    (np.zeros(4, np.int32), {"tag_names": [f"t{i}" for i in range(5)]}, "too_large"),  # max_tags 4
])
def test_bad_tags_get_their_code(tags, header, code):
    with pytest.raises(ProtocolError) as err:
        check_tags(tags, header, 4, max_tags=4)
    assert err.value.code == code


def test_codes_and_multi_hot_tags_mean_the_same():
    names = {"tag_names": ["a", "b", "c"]}
    hot, got = check_tags(np.array([0, 2, -1, 1], np.int32), names, 4, max_tags=8)
    assert got == ("a", "b", "c")
    assert hot.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]]
    again, _ = check_tags(hot.astype(np.uint8), names, 4, max_tags=8)
    assert np.array_equal(again, hot)


def test_the_vocabulary_maps_any_order_alike_and_is_bounded():
    v = TagVocabulary(max_tags=2)
    a = v.widen(np.array([[1, 0], [0, 1]], bool), ("x", "y"))
    b = v.widen(np.array([[0, 1], [1, 0]], bool), ("y", "x"))    # the same rows, named in another order
    assert np.array_equal(a, b) and a.shape == (2, 3)
    c = v.widen(np.array([[1, 1, 0]], bool), ("z", "w", "x"))    # two new names past max_tags
    assert c.tolist() == [[False, False, True]]
    assert v.column_names() == ["x", "y", OTHER]
    w = TagVocabulary(2)
    w.load_state(v.to_state())
    assert w.names == ["x", "y"]


def test_a_reservoir_keeps_tags_and_ids_through_its_state():
    rng = np.random.default_rng(6)
    r = Reservoir(50, 3, 1, np.float32, n_tags=4)
    x = rng.standard_normal((80, 3)).astype(np.float32)
    Y = (x[:, :1] > 0).astype(np.float32)
    tags = rng.random((80, 4)) < 0.3
    ids = np.arange(80, dtype=np.int64) * 7
    r.offer(x[:40], Y[:40], None, tags[:40], ids[:40])
    r.offer(x[40:], Y[40:])                                       # untagged, without ids
    held_x, _, _ = r.rows()
    t, i, has = r.annotations()
    by_row = {bytes(row): k for k, row in enumerate(x)}
    for row, tt, ii, hh in zip(held_x, t, i, has):
        k = by_row[bytes(row)]
        assert hh == (k < 40)
        if k < 40:
            assert ii == ids[k] and np.array_equal(tt, tags[k])
        else:
            assert not tt.any()
    back = Reservoir(50, 3, 1, np.float32, n_tags=4)
    back.load_state(r.to_state())
    order = np.argsort(r.keys[:r.filled])
    order_back = np.argsort(back.keys[:back.filled])
    for a, b in zip(r.annotations(), back.annotations()):
        assert np.array_equal(a[order], b[order_back])


def test_the_id_store_keeps_each_rows_tags_until_its_label_comes():
    from learnd.daemon.ingest.idstore import IdStore

    store = IdStore(100, 60.0)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.put(np.array([1, 2]), x[:2], (np.array([[1, 0], [1, 1]], bool), ("a", "b")))
    store.put(np.array([3, 4]), x[2:], (np.array([[0, 1], [0, 0]], bool), ("c", "a")))
    store.put(np.array([5]), x[:1])                              # no tags
    hot, names = store.tags(np.array([4, 3, 2, 1]))
    assert names == ("a", "b")                                   # "c" is on no row
    assert hot.tolist() == [[False, False], [True, False], [True, True], [True, False]]
    assert store.tags(np.array([5])) == (None, ())
