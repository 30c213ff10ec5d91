"""ActiveLearner: ask/tell loop, validation, sequential mode and save/load (small stand-ins)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from learner_doubles import (
    Cfg as _Cfg,
)
from learner_doubles import (
    MaxEntropy as _MaxEntropy,
)
from learner_doubles import (
    Net as _Net,
)
from learner_doubles import (
    Sequential as _Sequential,
)
from learner_doubles import blobs as _blobs
from learner_doubles import make_learner as _learner

from ntkal.learner import ActiveLearner


def test_ask_tell_loop_grows_labelled_set_without_repeats():
    learner = _learner(subset=50)
    x, y = _blobs()
    for _ in range(3):
        learner.fit()
        idx = learner.query(7)
        assert idx.shape == (7,) and np.unique(idx).size == 7
        assert not np.isin(idx, learner.labelled_indices).any()
        learner.teach(idx, y[idx])
    assert learner.labelled_indices.size == 6 + 21
    np.testing.assert_array_equal(learner.labels, y.numpy()[learner.labelled_indices])
    assert learner.cycle == 3 and learner.strategy.train_calls == 3
    learner.fit()
    assert learner.score(x, y) > 0.8


def test_query_is_reproducible_and_subset_seeded():
    a, b = _learner(subset=30, seed=3), _learner(subset=30, seed=3)
    np.testing.assert_array_equal(a.query(5), b.query(5))


def test_teach_validation_leaves_state_unchanged():
    learner = _learner()
    with pytest.raises(ValueError, match="already labelled"):
        learner.teach([0], [0])
    with pytest.raises(ValueError, match="out of range"):
        learner.teach([1000], [0])
    with pytest.raises(ValueError, match="label 3 is out of range"):
        learner.teach([10], [3])
    with pytest.raises(ValueError, match="must match"):
        learner.teach([10, 11], [1])
    with pytest.raises(ValueError, match="integer"):
        learner.teach([10], [1.5])
    with pytest.raises(ValueError, match="more than once"):
        learner.teach([10, 10], [1, 1])
    assert learner.labelled_indices.size == 6


def test_bad_inputs_raise_clear_errors():
    x, y = _blobs()
    bad = x.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ActiveLearner(_Net(), _MaxEntropy(), bad, num_classes=3, train_config=_Cfg())
    with pytest.raises(ValueError, match="empty"):
        ActiveLearner(_Net(), _MaxEntropy(), x[:0], num_classes=3, train_config=_Cfg())
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        ActiveLearner(_Net(), _MaxEntropy(), x, num_classes=4, train_config=_Cfg())
    with pytest.raises(ValueError, match="out of range"):
        ActiveLearner(_Net(), _MaxEntropy(), x, y_pool=y + 5, num_classes=3, train_config=_Cfg())
    with pytest.raises(ValueError, match="mode"):
        _learner(mode="greedy")
    learner = _learner()
    with pytest.raises(ValueError, match="larger than"):
        learner.query(1000)
    with pytest.raises(ValueError, match="larger subset"):
        _learner(subset=5).query(6)


def test_registry_name_and_unknown_name():
    learner = _learner("random")
    assert learner.strategy.name == "random"
    with pytest.raises(ValueError, match="unknown strategy"):
        _learner("no_such_strategy")


def test_sequential_mode_conditions_without_sgd():
    strategy = _Sequential()
    learner = _learner(
        strategy, mode="sequential", subset=40, y_pool=None, labels=[0, 1, 2, 0, 1, 2]
    )
    with pytest.raises(ValueError, match="query one at a time"):
        learner.query(3)
    first = learner.query(1)
    learner.teach(first, [2])
    second = learner.query(1)
    assert second[0] != first[0]
    assert len(strategy.session.observed) == 1 and strategy.session.observed[0][1] == 2
    assert strategy.train_calls == 0
    learner.fit()
    learner.query(1)
    assert strategy.session.observed == []  # a new session per cycle


def test_sequential_batch_with_oracle_observes_each_step():
    strategy = _Sequential()
    learner = _learner(strategy, mode="sequential")
    _, y = _blobs()
    idx = learner.query(4)
    assert np.unique(idx).size == 4 and len(strategy.session.observed) == 4
    learner.teach(idx, y[idx])
    assert len(strategy.session.observed) == 4  # already conditioned: not observed twice
    assert learner.labelled_indices.size == 10


def test_save_load_round_trip_gives_identical_next_query(tmp_path):
    learner = _learner(_MaxEntropy(temperature=2.0), subset=40, seed=5)
    _, y = _blobs()
    learner.fit()
    idx = learner.query(4)
    learner.teach(idx, y[idx])
    learner.fit()
    path = tmp_path / "al.pt"
    learner.save(path)
    other = ActiveLearner.load(
        path, model=_Net(), strategy=_MaxEntropy(temperature=2.0), train_config=_Cfg()
    )
    np.testing.assert_array_equal(other.labelled_indices, learner.labelled_indices)
    np.testing.assert_array_equal(other.labels, learner.labels)
    assert other.cycle == learner.cycle and other.subset == 40
    np.testing.assert_array_equal(other.query(4), learner.query(4))
    assert not list(tmp_path.glob(".*tmp"))


def test_save_without_pool_needs_it_back(tmp_path):
    learner = _learner()
    path = tmp_path / "al.pt"
    learner.save(path, include_pool=False)
    with pytest.raises(ValueError, match="x_pool"):
        ActiveLearner.load(path, model=_Net(), strategy=_MaxEntropy(), train_config=_Cfg())
    x, _ = _blobs()
    with pytest.raises(ValueError, match="shape"):
        ActiveLearner.load(
            path, model=_Net(), strategy=_MaxEntropy(), train_config=_Cfg(), x_pool=x[:10]
        )
    ok = ActiveLearner.load(
        path, model=_Net(), strategy=_MaxEntropy(), train_config=_Cfg(), x_pool=x
    )
    assert ok.labelled_indices.size == 6


def test_load_rejects_foreign_file(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(ValueError, match="not an ActiveLearner"):
        ActiveLearner.load(path, model=_Net())


def test_sequential_mlmoc_conditions_in_closed_form():
    """Teaching a proposed point moves the linearised predictions exactly to its label, no SGD."""
    from ntkal.strategies import get_strategy

    strategy = get_strategy("mlmoc")
    sgd_calls = []
    strategy.train = lambda *a, **k: sgd_calls.append(1)
    learner = _learner(strategy, mode="sequential", subset=30)
    _, y = _blobs()
    weights = {k: v.clone() for k, v in learner.model.state_dict().items()}
    first = learner.query(1)
    session = learner.session
    pos = int(np.searchsorted(learner.session_candidates, first[0]))
    before = session.lookahead.base_predictions().clone()
    label = int((before[pos].argmax() + 1) % 3)  # a label the model does not predict
    learner.teach(first, [label])
    after = session.lookahead.base_predictions()
    assert session.observed == [pos] and not torch.allclose(before, after)
    target = torch.nn.functional.one_hot(torch.tensor(label), 3).to(after.dtype)
    torch.testing.assert_close(after[pos], target, atol=1e-5, rtol=1e-5)
    second = learner.query(1)
    assert second[0] != first[0] and learner.session is session
    for k, v in learner.model.state_dict().items():
        torch.testing.assert_close(v, weights[k])
    assert not sgd_calls
    idx = learner.query(3) if learner.y_pool is not None else None
    assert len(session.observed) == 4 and not np.isin(idx, learner.labelled_indices).any()
    learner.teach(idx, y[idx])
    assert learner.labelled_indices.size == 6 + 1 + 3


def test_digits_loop_with_registry_strategy_and_full_round_trip(tmp_path):
    """Real data, model, trainer and strategy; load rebuilds strategy and config from the file."""
    from ntkal.data import load_dataset
    from ntkal.models import build_model
    from ntkal.training import TrainConfig

    ds = load_dataset("digits", train_size=400, test_size=200)
    torch.manual_seed(0)
    learner = ActiveLearner(
        build_model("mlp", ds.in_shape, 10, width=32),
        "margin",
        ds.x_train,
        y_pool=ds.y_train,
        labelled=np.arange(20),
        num_classes=10,
        train_config=TrainConfig(epochs=50, batch_size=32, lr=0.1),
        subset=200,
        seed=1,
    )
    y = ds.y_train.numpy()
    for _ in range(2):
        learner.fit()
        idx = learner.query(10)
        assert np.unique(idx).size == 10 and not np.isin(idx, learner.labelled_indices).any()
        learner.teach(idx, y[idx])
    learner.fit()
    assert learner.score(ds.x_test, ds.y_test) > 0.4  # chance is 0.1
    learner.save(tmp_path / "digits.pt")
    torch.manual_seed(123)
    other = ActiveLearner.load(
        tmp_path / "digits.pt", model=build_model("mlp", ds.in_shape, 10, width=32)
    )
    assert other.strategy.name == "margin" and other.train_config == learner.train_config
    assert other.score(ds.x_test, ds.y_test) == learner.score(ds.x_test, ds.y_test)
    np.testing.assert_array_equal(other.query(10), learner.query(10))
