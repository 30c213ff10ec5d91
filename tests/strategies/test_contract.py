"""The query contract of ``ntkal.strategies.base``, checked for every registered strategy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkal.strategies import QueryContext, available_strategies, get_strategy
from ntkal.training import TrainConfig

NUM_CLASSES = 3


class _TinyNet(nn.Module):
    """embed/classifier convention of ntkal.models, with BatchNorm (to catch train-mode passes)
    and dropout before the classifier (for MC dropout)."""

    def __init__(self, d=4, width=8, k=NUM_CLASSES, dropout=0.3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, k)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.dropout(self.embed(x)))


def _train_config():
    return TrainConfig(
        epochs=2,
        batch_size=8,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        schedule="constant",
        loss="mse",
        seed=0,
        device="cpu",
    )


# Small parameters so the whole contract run stays fast.
SMALL = {
    "bald": dict(num_samples=4),
    "batchbald": dict(num_samples=4, max_configurations=9, num_sampled_configurations=16),
    "sgd_lookahead": dict(finetune=None),
}
NAMES = sorted(available_strategies())


def _make(name):
    params = dict(SMALL.get(name, {}))
    if name == "sgd_lookahead":
        params["finetune"] = _train_config()
    return get_strategy(name, **params)


def _context(m=12, n_lab=6, seed=0):
    g = torch.Generator().manual_seed(123)
    return QueryContext(
        model=_MODEL,
        x_candidates=torch.randn(m, 4, generator=g),
        x_labelled=torch.randn(n_lab, 4, generator=g),
        y_labelled=torch.arange(n_lab) % NUM_CLASSES,
        num_classes=NUM_CLASSES,
        seed=seed,
        batch_size=5,
    )


torch.manual_seed(0)
_MODEL = _TinyNet()


@pytest.mark.parametrize("name", NAMES)
def test_strategy_contract(name):
    strategy = _make(name)
    model = _MODEL
    if name == "ll4al":  # LL4AL owns its training: the loss module exists only after it
        g = torch.Generator().manual_seed(5)
        x, y = torch.randn(16, 4, generator=g), torch.arange(16) % NUM_CLASSES
        strategy.train(model, x, y, _train_config(), NUM_CLASSES)
    model.train()  # a strategy must restore the caller's mode and leave the weights untouched
    before = {k: v.clone() for k, v in model.state_dict().items()}

    ctx = _context()
    budget = 4
    result = strategy.query(ctx, budget)
    idx = np.asarray(result.indices)
    assert idx.shape == (budget,)
    assert np.issubdtype(idx.dtype, np.integer)
    assert len(set(idx.tolist())) == budget
    assert idx.min() >= 0 and idx.max() < ctx.num_candidates
    if result.scores is not None:
        scores = np.asarray(result.scores, dtype=np.float64)
        assert scores.shape == (ctx.num_candidates,)
        assert np.isfinite(scores).all()
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    again = strategy.query(_context(), budget)
    np.testing.assert_array_equal(idx, np.asarray(again.indices))

    full = strategy.query(ctx, ctx.num_candidates)  # the whole pool is a valid budget
    assert sorted(np.asarray(full.indices).tolist()) == list(range(ctx.num_candidates))

    with pytest.raises(ValueError):
        strategy.query(ctx, ctx.num_candidates + 1)
    with pytest.raises(ValueError):
        strategy.query(_context(m=0), 1)
    model.eval()


def test_every_family_is_registered():
    expected = {
        "random",
        "entropy",
        "margin",
        "least_confidence",
        "bald",
        "batchbald",
        "badge",
        "coreset",
        "ll4al",
        "mlmoc",
        "sgd_lookahead",
        "epig",
        "ntk_epig",
        "ntk_bald",
        "maxherding",
        "uherding",
    }
    assert expected <= set(NAMES)


def test_top_k_orders_by_score_then_secondary_then_seeded_tiebreak():
    from ntkal.strategies.base import top_k

    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1])
    assert top_k(scores, 3).tolist() == [1, 0, 2]  # stable without rng
    secondary = np.array([1.0, 0.0, 3.0, 2.0, 9.0])
    assert top_k(scores, 4, secondary=secondary).tolist() == [1, 2, 3, 0]
    ties = np.zeros(50)
    a = top_k(ties, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, top_k(ties, 5, np.random.default_rng(3)))
    assert a.tolist() != list(range(5))
    with pytest.raises(FloatingPointError):
        top_k(scores, 1, secondary=np.array([np.nan, 0, 0, 0, 0]))
