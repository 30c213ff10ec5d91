"""The one label validator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkal.data.labels import as_class_labels


def test_accepted_forms_give_int64_arrays():
    for value in ([0, 2, 1], np.array([0, 2, 1], dtype=np.int32), torch.tensor([0, 2, 1])):
        out = as_class_labels(value, 3)
        assert out.dtype == np.int64 and out.tolist() == [0, 2, 1]
    assert as_class_labels(2, 3).tolist() == [2]
    assert as_class_labels(np.int64(1), 3).tolist() == [1]
    assert as_class_labels(torch.tensor(1), 3).tolist() == [1]
    assert as_class_labels([], 3).shape == (0,)
    assert as_class_labels([7, 0], None).tolist() == [7, 0]


@pytest.mark.parametrize(
    "value,match",
    [
        ([0.0, 1.0], "integer class indices, got dtype float64"),
        (torch.tensor([0.0, 1.0]), "integer class indices"),
        ([True, False], "integer class indices, got dtype bool"),
        (["a", "b"], "integer class indices"),
        (np.array([1 + 0j]), "integer class indices"),
        (np.zeros((2, 2), dtype=int), "1-D array of class indices, got shape"),
        (
            [0, 3],
            r"y_train has labels in \[0, 3\] but there are 3 classes: label 3 is out of range",
        ),
        (
            [-1, 2],
            r"label -1 is out of range \(labels must lie in \[0, 3\), i.e. valid labels are 0..2\)",
        ),
    ],
)
def test_refused_forms_name_the_input(value, match):
    with pytest.raises(ValueError, match=match):
        as_class_labels(value, 3, name="y_train")


def test_length_and_unbounded_checks():
    with pytest.raises(
        ValueError, match="y and the inputs have different lengths: 3 inputs, 2 labels"
    ):
        as_class_labels([0, 1], 2, name="y", expected=3)
    with pytest.raises(ValueError, match="labels and the indices have different lengths"):
        as_class_labels([0, 1], 2, expected=1, against="indices")
    with pytest.raises(ValueError, match="y has label -2: class labels must be >= 0"):
        as_class_labels([1, -2], None, name="y")
