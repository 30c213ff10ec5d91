"""SQLite label store: durability, validation, syncing into a learner."""
from __future__ import annotations

import numpy as np
import pytest

from ntkal.labelstore import LabelStore


def test_labels_persist_in_order_and_requests_clear(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path, pool_size=50, num_classes=3) as store:
        store.request([7, 3, 9])
        store.add([9, 3], [2, 0], annotator="ana")
        np.testing.assert_array_equal(store.pending(), [7])
    with LabelStore(path) as store:
        idx, lab = store.labelled()
        assert idx.tolist() == [9, 3] and lab.tolist() == [2, 0] and len(store) == 2
        with pytest.raises(ValueError, match="created with num_classes=3"):
            LabelStore(path, num_classes=4)


def test_invalid_adds_change_nothing(tmp_path):
    store = LabelStore(":memory:", pool_size=10, num_classes=3)
    store.add([1], [1])
    for indices, labels, match in [([2, 1], [0, 0], "already labelled"),
                                   ([12], [0], "out of range"),
                                   ([2], [3], r"label 3 is out of range"),
                                   ([2, 2], [0, 0], "more than once"),
                                   ([2], [0.5], "integers"),
                                   ([2, 3], [0], "2 indices but 1 labels")]:
        with pytest.raises(ValueError, match=match):
            store.add(indices, labels)
    assert len(store) == 1
    with pytest.raises(ValueError, match="required"):
        LabelStore(":memory:", pool_size=10)


def test_sync_teaches_only_new_labels():
    import torch
    from torch import nn

    from ntkal.learner import ActiveLearner

    x = torch.randn(20, 2)
    model = nn.Linear(2, 3)
    learner = ActiveLearner(model, "random", x, labelled=[0], labels=[1], num_classes=3,
                            train_config=None)
    store = LabelStore(":memory:", pool_size=20, num_classes=3)
    store.add([0, 5, 6], [1, 2, 0])
    assert store.sync(learner).tolist() == [5, 6]
    assert learner.labelled_indices.tolist() == [0, 5, 6]
    assert store.sync(learner).size == 0
    other = LabelStore(":memory:", pool_size=20, num_classes=3)
    other.add([0], [2])
    with pytest.raises(ValueError, match="different one"):
        other.sync(learner)
