"""EPIG with MC dropout: the estimator against loops, behaviour, and the no-dropout error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkal.strategies import QueryContext, get_strategy
from ntkal.strategies.epig import EPIG, epig_from_probs
from ntkal.strategies.forward_passes import mc_dropout_probabilities


def _random_probs(rng, t, n, k):
    p = rng.random((t, n, k)) ** 3
    return p / p.sum(axis=2, keepdims=True)


def _brute_epig(pool, targ):
    """mean_e Σ_{a,b} p(a,b) log(p(a,b) / (p(a) p(b))), p(a,b) = mean_t p_t(a|x) p_t(b|x*)."""
    t_count, n, k = pool.shape
    out = np.zeros(n)
    for j in range(n):
        total = 0.0
        for e in range(targ.shape[1]):
            for a in range(k):
                for b in range(k):
                    joint = sum(pool[t, j, a] * targ[t, e, b] for t in range(t_count)) / t_count
                    pa, pb = pool[:, j, a].mean(), targ[:, e, b].mean()
                    total += joint * np.log(joint / (pa * pb)) if joint > 0 else 0.0
        out[j] = total / targ.shape[1]
    return out


def test_estimator_matches_loops_in_and_across_chunks():
    rng = np.random.default_rng(0)
    pool, targ = _random_probs(rng, 6, 9, 3), _random_probs(rng, 6, 4, 3)
    expected = _brute_epig(pool, targ)
    np.testing.assert_allclose(epig_from_probs(pool, targ), expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        epig_from_probs(pool, targ, max_elements=40), expected, rtol=1e-10, atol=1e-14
    )
    assert (expected > 0).all()
    with pytest.raises(ValueError, match="disagree"):
        epig_from_probs(pool, targ[:5])


def test_epig_is_zero_without_epistemic_disagreement_and_high_for_shared_disagreement():
    rng = np.random.default_rng(1)
    t = 8
    flip = rng.integers(0, 2, t).astype(float)
    agree = np.stack([flip, 1 - flip], axis=1)  # (T, 2): confident, disagreeing
    targ = np.repeat(agree[:, None, :], 3, axis=1)  # targets follow the same masks
    noisy = np.full((t, 1, 2), 0.5)  # uncertain in every mask: noise
    unrelated = np.repeat(np.stack([1 - np.roll(flip, 1), np.roll(flip, 1)], 1)[:, None], 1, 1)
    pool = np.concatenate([agree[:, None, :], noisy, unrelated], axis=1)
    scores = epig_from_probs(pool, targ)
    assert scores[1] == pytest.approx(0.0, abs=1e-12)
    assert scores[0] > scores[2] and scores[0] > 0.5
    one_mask = epig_from_probs(pool[:1], targ[:1])  # a single network: no information
    np.testing.assert_allclose(one_mask, 0.0, atol=1e-12)


class _DropNet(nn.Module):
    def __init__(self, p):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(p))
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier(self.body(x))


def _context(model, m=15, seed=0):
    g = torch.Generator().manual_seed(4)
    return QueryContext(
        model=model,
        x_candidates=torch.randn(m, 3, generator=g),
        x_labelled=torch.randn(4, 3, generator=g),
        y_labelled=torch.arange(4) % 3,
        num_classes=3,
        seed=seed,
    )


def test_strategy_scores_are_the_estimator_on_its_targets():
    model = _DropNet(0.4)
    ctx = _context(model)
    result = EPIG(num_samples=6, num_targets=5).query(ctx, 3)
    targets = result.info["targets"]
    assert len(targets) == 5 and len(set(targets.tolist())) == 5
    probs = mc_dropout_probabilities(model, ctx.x_candidates, num_samples=6, seed=0)
    np.testing.assert_allclose(result.scores, _brute_epig(probs, probs[:, targets]), rtol=1e-9)
    assert set(result.indices.tolist()) == set(np.argsort(-result.scores)[:3].tolist())
    everything = EPIG(num_samples=2, num_targets=500).query(ctx, 1)
    assert len(everything.info["targets"]) == ctx.num_candidates


def test_needs_dropout_and_checks_its_parameters():
    with pytest.raises(ValueError, match="dropout"):
        EPIG(num_samples=2).query(_context(_DropNet(0.0)), 1)
    assert EPIG.needs_dropout
    with pytest.raises(ValueError, match="num_targets"):
        get_strategy("epig", num_targets=0)
    with pytest.raises(ValueError, match="num_samples"):
        get_strategy("epig", num_samples=True)


def test_epig_never_exceeds_bald():
    # data processing: y → θ → y*, so I(y; y*) <= I(y; θ) for every target, hence on average
    from ntkal.strategies.bald import mutual_information

    rng = np.random.default_rng(5)
    pool = _random_probs(rng, 10, 40, 4)
    scores = epig_from_probs(pool, pool[:, :15])
    assert (scores <= mutual_information(pool) + 1e-12).all()
    assert scores.max() > 0
