"""Pool invariants, errors that leave the state unchanged, and serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkal.data import Pool


def _snapshot(pool: Pool):
    return pool.labelled_indices.tolist(), pool.unlabelled_indices.tolist()


def test_basic_bookkeeping():
    pool = Pool(6, labelled=[4, 1])
    assert pool.labelled_indices.tolist() == [4, 1]
    assert pool.unlabelled_indices.tolist() == [0, 2, 3, 5]
    assert pool.labelled_indices.dtype == np.int64 and pool.unlabelled_indices.dtype == np.int64
    assert (pool.num_labelled, pool.num_unlabelled, len(pool)) == (2, 4, 6)
    assert pool.label(np.array([5, 0])).tolist() == [5, 0]
    assert pool.label(3).tolist() == [3]
    assert pool.labelled_indices.tolist() == [4, 1, 5, 0, 3]
    assert pool.is_labelled(4) and not pool.is_labelled(2)
    assert repr(pool) == "Pool(size=6, labelled=5, unlabelled=1)"
    assert pool.label([]).size == 0


def test_accepts_numpy_and_torch_integers():
    import torch

    pool = Pool(5)
    pool.label(torch.tensor([3, 1]))
    pool.label(np.int32(4))
    assert pool.labelled_indices.tolist() == [3, 1, 4]
    assert pool.is_labelled(np.int64(1)) and pool.class_counts(torch.arange(5) % 2).tolist() == [
        1,
        2,
    ]


@pytest.mark.parametrize(
    "bad, message",
    [
        ([2, 2], "appears more than once"),
        ([1, 3], "already labelled"),
        ([6], "out of range"),
        ([-1], "out of range"),
        ([2.0], "integers"),
        ([True], "integers"),
        (np.array([0.5]), "integers"),
        ("3", "integers"),
        ([[2]], "integers|one-dimensional"),
        (np.array([[2]]), "one-dimensional"),
    ],
)
def test_label_errors_leave_state_unchanged(bad, message):
    pool = Pool(6, labelled=[1])
    before = _snapshot(pool)
    with pytest.raises(ValueError, match=message):
        pool.label(bad)
    assert _snapshot(pool) == before


def test_constructor_and_is_labelled_validation():
    with pytest.raises(ValueError, match=r"already labelled|more than once"):
        Pool(3, labelled=[0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        Pool(-1)
    with pytest.raises(TypeError):
        Pool(2.5)
    with pytest.raises(ValueError, match="out of range"):
        Pool(3).is_labelled(3)


def test_class_counts():
    y = np.array([0, 1, 1, 2, 2, 2])
    pool = Pool(6, labelled=[1, 3, 4])
    assert pool.class_counts(y).tolist() == [0, 1, 2]
    assert pool.class_counts(y, num_classes=5).tolist() == [0, 1, 2, 0, 0]
    with pytest.raises(ValueError, match="6 points"):
        pool.class_counts(y[:5])


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 40), data=st.data())
def test_random_label_sequences_keep_a_partition(size, data):
    pool = Pool(size)
    order: list[int] = []
    for _ in range(data.draw(st.integers(0, 8))):
        batch = data.draw(st.lists(st.integers(-3, size + 3), max_size=6))
        before = _snapshot(pool)
        valid = (
            len(set(batch)) == len(batch)
            and all(0 <= i < size for i in batch)
            and not set(batch) & set(order)
        )
        if valid:
            pool.label(batch)
            order += batch
        else:
            with pytest.raises(ValueError):
                pool.label(batch)
            assert _snapshot(pool) == before
        lab, unl = pool.labelled_indices, pool.unlabelled_indices
        assert lab.tolist() == order
        assert sorted(lab.tolist() + unl.tolist()) == list(range(size))
        assert not set(lab.tolist()) & set(unl.tolist())
        assert unl.tolist() == sorted(unl.tolist())
        assert pool.num_labelled + pool.num_unlabelled == size
        assert all(pool.is_labelled(i) for i in order)
    again = Pool.from_state_dict(json.loads(json.dumps(pool.state_dict())))
    assert _snapshot(again) == _snapshot(pool) and len(again) == size


def test_state_dict_validation():
    with pytest.raises(ValueError, match="keys 'size' and 'labelled'"):
        Pool.from_state_dict({"size": 3})
    with pytest.raises(ValueError, match="version"):
        Pool.from_state_dict({"size": 3, "labelled": [], "version": 99})
    with pytest.raises(ValueError, match="out of range"):
        Pool.from_state_dict({"size": 3, "labelled": [5]})


def test_copy_is_independent():
    pool = Pool(4, [0])
    other = pool.copy()
    other.label(1)
    assert pool.labelled_indices.tolist() == [0] and other.labelled_indices.tolist() == [0, 1]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_classes=st.integers(1, 6), n_initial=st.integers(0, 30))
def test_random_initial_is_deterministic_and_stratified(seed, n_classes, n_initial):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=30)
    y[:n_classes] = np.arange(n_classes)  # every class present
    a = Pool.random_initial(30, n_initial, seed, y=y, stratified=True)
    b = Pool.random_initial(30, n_initial, seed, y=y, stratified=True)
    assert a.labelled_indices.tolist() == b.labelled_indices.tolist()
    assert a.num_labelled == n_initial
    present = len(np.unique(y[a.labelled_indices]))
    assert present == min(n_initial, n_classes)
    plain = Pool.random_initial(30, n_initial, seed)
    assert (
        plain.labelled_indices.tolist()
        == Pool.random_initial(30, n_initial, seed).labelled_indices.tolist()
    )


def test_random_initial_errors():
    with pytest.raises(ValueError, match="between 0 and the pool size 5"):
        Pool.random_initial(5, 6, 0)
    with pytest.raises(ValueError, match="needs the pool labels"):
        Pool.random_initial(5, 2, 0, stratified=True)
    with pytest.raises(ValueError, match="4 labels but the pool has 5"):
        Pool.random_initial(5, 2, 0, y=[0, 1, 0, 1], stratified=True)
    picks = {tuple(Pool.random_initial(100, 10, s).labelled_indices.tolist()) for s in range(5)}
    assert len(picks) == 5  # the seed matters
