"""Dataset validation and stratified sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkal.data import Dataset
from ntkal.data.sampling import stratified_indices


def _make(**overrides):
    kw = dict(
        name="toy",
        x_train=np.zeros((4, 1, 2, 2), np.float32),
        y_train=np.array([0, 1, 2, 1]),
        x_test=np.zeros((2, 1, 2, 2), np.float32),
        y_test=np.array([2, 0]),
        classes=("a", "b", "c"),
    )
    kw.update(overrides)
    return Dataset(**kw)


def test_converts_and_exposes_shape():
    d = _make(x_train=np.zeros((4, 1, 2, 2), np.float64))
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.in_shape == (1, 2, 2) and d.num_classes == 3
    assert "in_shape=(1, 2, 2)" in repr(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "other"  # frozen


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(y_train=np.array([0, 1, 2])), "x_train has 4 rows but y_train has 3"),
        (dict(y_test=np.array([0, 3])), r"labels in \[0, 3\] but there are 3 classes"),
        (dict(y_train=np.array([0, -2, 2, 1])), "valid labels are 0..2"),  # -1 only: unlabelled
        (dict(y_test=np.array([0, -1])), "valid labels are 0..2"),  # a test set is labelled
        (dict(x_train=np.full((4, 1, 2, 2), np.nan, np.float32)), "NaN or infinite"),
        (dict(x_test=np.full((2, 1, 2, 2), np.inf, np.float32)), "NaN or infinite"),
        (dict(x_train=np.zeros((4, 1, 2, 2), np.uint8)), "floating-point"),
        (dict(y_train=np.zeros(4, np.float32)), "integer class indices"),
        (dict(x_test=np.zeros((2, 1, 3, 3), np.float32)), "train inputs have shape"),
        (dict(classes=()), "at least one class"),
        (dict(classes=("a", "a", "b")), "distinct"),
    ],
)
def test_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        _make(**overrides)


def test_stratified_indices_proportions_and_minimum_one():
    y = np.array([0] * 90 + [1] * 9 + [2] * 1)
    idx = stratified_indices(y, 10, np.random.default_rng(0))
    assert np.bincount(y[idx], minlength=3).tolist() == [8, 1, 1]
    assert len(set(idx.tolist())) == 10 and np.all(np.diff(idx) > 0)
    few = stratified_indices(y, 2, np.random.default_rng(0))
    assert len(np.unique(y[few])) == 2
    assert stratified_indices(y, 100, np.random.default_rng(0)).tolist() == list(range(100))
    with pytest.raises(ValueError):
        stratified_indices(y, 101, np.random.default_rng(0))


def test_subset_method_matches_sizes():
    d = _make()
    s = d.subset(train_size=3, test_size=None, seed=1)
    assert s.num_train == 3 and s.num_test == 2 and set(s.y_train.tolist()) == {0, 1, 2}


@settings(max_examples=50, deadline=None)
@given(
    y=st.lists(st.integers(0, 5), min_size=1, max_size=60),
    frac=st.floats(0, 1),
    seed=st.integers(0, 99),
)
def test_stratified_indices_properties(y, frac, seed):
    y = np.array(y)
    n = round(frac * len(y))
    idx = stratified_indices(y, n, np.random.default_rng(seed))
    assert (
        idx.shape == (n,)
        and len(np.unique(idx)) == n
        and (n == 0 or 0 <= idx.min() <= idx.max() < len(y))
    )
    k = len(np.unique(y))
    assert len(np.unique(y[idx])) == min(n, k)
    assert np.array_equal(idx, stratified_indices(y, n, np.random.default_rng(seed)))
