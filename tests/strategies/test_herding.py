"""MaxHerding and uncertainty herding: the greedy coverage against brute force, and behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkal.strategies import QueryContext, get_strategy
from ntkal.strategies.herding import (
    MaxHerding,
    UncertaintyHerding,
    coverage_gains,
    margin_uncertainty,
)


class _Logits(torch.nn.Module):
    """Logits from a fixed linear map of 2-D inputs; ``embed`` is the identity."""

    def __init__(self, weight):
        super().__init__()
        self.lin = torch.nn.Linear(2, weight.shape[0], bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(weight)

    def embed(self, x):
        return x

    def forward(self, x):
        return self.lin(x)


def _context(x_c, x_l=None, model=None, seed=0):
    x_l = x_c[:0] if x_l is None else x_l
    model = torch.nn.Identity() if model is None else model
    return QueryContext(
        model=model,
        x_candidates=x_c,
        x_labelled=x_l,
        y_labelled=torch.zeros(x_l.shape[0], dtype=torch.long),
        num_classes=2,
        seed=seed,
    )


def _coverage(points, chosen, sigma, weights):
    """Σ_i w_i max_{s ∈ chosen} exp(-|x_i - x_s|² / σ²), by loops (0 for an empty set)."""
    total = 0.0
    for i, xi in enumerate(points):
        best = 0.0
        for s in chosen:
            best = max(best, float(np.exp(-np.sum((xi - s) ** 2) / sigma**2)))
        total += weights[i] * best
    return total


def _brute_greedy(cand, lab, sigma, weights, budget):
    chosen, left = [], list(range(len(cand)))
    for _ in range(budget):
        base = _coverage(cand, list(lab) + [cand[c] for c in chosen], sigma, weights)
        gains = [
            _coverage(cand, list(lab) + [cand[c] for c in chosen] + [cand[j]], sigma, weights)
            - base
            for j in left
        ]
        chosen.append(left.pop(int(np.argmax(gains))))
    return chosen


def test_maxherding_is_the_greedy_maximiser_of_kernel_coverage():
    g = torch.Generator().manual_seed(0)
    x_c, x_l = torch.randn(25, 2, generator=g), torch.randn(3, 2, generator=g)
    sigma = 0.7
    result = MaxHerding(representation="inputs", bandwidth=sigma, normalize=False).query(
        _context(x_c, x_l), 6
    )
    cand, lab = x_c.double().numpy(), x_l.double().numpy()
    assert result.indices.tolist() == _brute_greedy(cand, lab, sigma, np.ones(25), 6)
    # scores: each candidate's coverage gain before the first pick, divided by m
    base = _coverage(cand, list(lab), sigma, np.ones(25))
    expected = [
        (_coverage(cand, list(lab) + [cand[j]], sigma, np.ones(25)) - base) / 25 for j in range(25)
    ]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-10, atol=1e-14)


def test_coverage_gains_match_an_explicit_sum():
    rng = np.random.default_rng(1)
    kernel, covered, w = rng.random((7, 7)), rng.random(7), rng.random(7)
    expected = [
        sum(w[i] * max(kernel[i, j] - covered[i], 0.0) for i in range(7)) / 7 for j in range(7)
    ]
    np.testing.assert_allclose(coverage_gains(kernel, covered, w), expected, rtol=1e-12)


def _clusters():
    """A dense clump of 30 near-duplicates and two smaller clumps of 8 points each."""
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    sizes = (30, 8, 8)
    x = torch.cat([c + 0.05 * torch.randn(s, 2, generator=g) for c, s in zip(centres, sizes)])
    return x, np.repeat(np.arange(3), sizes)


def test_maxherding_spreads_over_clusters_and_skips_covered_ones():
    x, blob = _clusters()
    strategy = MaxHerding(representation="inputs", bandwidth=1.0, normalize=False)
    chosen = strategy.query(_context(x), 3).indices
    assert blob[chosen[0]] == 0  # the densest clump first
    assert sorted(blob[chosen].tolist()) == [0, 1, 2]  # never two in one clump
    covered = strategy.query(_context(x, x[blob == 0][:1]), 2).indices
    assert sorted(blob[covered].tolist()) == [1, 2]


def test_uherding_moves_toward_uncertain_points():
    x, blob = _clusters()
    # logits x0 - x1 vs 0: the decision boundary x0 = x1 runs through clump 0 only
    model = _Logits(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    u = margin_uncertainty(model(x.float()).detach().double().numpy())
    assert u[blob == 0].mean() > u[blob != 0].mean()
    plain = MaxHerding(representation="inputs", bandwidth=0.3, normalize=False)
    weighted = UncertaintyHerding(representation="inputs", bandwidth=0.3, normalize=False)
    x_l = x[blob == 0][:1]
    assert blob[plain.query(_context(x, x_l, model), 1).indices[0]] != 0
    picks = weighted.query(_context(x, x_l, model), 1).indices
    assert blob[picks[0]] == 0  # the uncertain clump despite its label


def test_uherding_weights_are_margins_and_its_bandwidth_follows_the_labelled_set():
    x, _blob = _clusters()
    model = _Logits(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    strategy = UncertaintyHerding(representation="inputs", normalize=False)
    x_l = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0]])
    result = strategy.query(_context(x, x_l, model), 2)
    assert result.info["bandwidth"] == pytest.approx(0.5)  # smallest labelled distance
    logits = model(x).detach().double().numpy()
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(margin_uncertainty(logits), 1 - np.abs(p[:, 0] - p[:, 1]))
    hot = margin_uncertainty(logits, temperature=10.0)
    assert (hot >= margin_uncertainty(logits) - 1e-12).all()
    sigma = 0.5
    lab = x_l.double().numpy()
    cand = x.double().numpy()
    w = margin_uncertainty(logits)
    base = _coverage(cand, list(lab), sigma, w)
    expected = [
        (_coverage(cand, list(lab) + [cand[j]], sigma, w) - base) / len(cand)
        for j in range(len(cand))
    ]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-9, atol=1e-14)


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="bandwidth"):
        get_strategy("maxherding", bandwidth=0.0)
    with pytest.raises(ValueError, match="temperature"):
        get_strategy("uherding", temperature=-1.0)
    with pytest.raises(ValueError, match="normalize"):
        get_strategy("uherding", normalize=1)
    with pytest.raises(ValueError, match="representation"):
        get_strategy("maxherding", representation="nope")
