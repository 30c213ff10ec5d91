"""``auto``: the closed-form leave-one-out reliability, the weights, and the weighted criterion.

Each piece is checked against an independent computation: LOO by re-solving without each point,
the criterion by Σ from a direct solve of the kernel regression, and the two ends of the rule
(β = 0 is variance reduction; β = 1 prefers candidates that inform uncertain points).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkal.lookahead import DenseLookahead
from ntkal.strategies import get_strategy
from ntkal.strategies.auto import Auto, loo_reliability, uncertainty_weights

F64 = torch.float64


def _kernel(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    return x @ x.T / d + 0.1 * torch.eye(n, dtype=F64), g


def test_loo_accuracy_equals_refitting_without_each_point():
    n, k = 25, 3
    theta, g = _kernel(n)
    f0 = 0.3 * torch.randn(n, k, generator=g, dtype=F64)
    y = torch.randint(0, k, (n,), generator=g)
    beta, acc = loo_reliability(theta, f0, y, k, ridge=0.0)
    resid = torch.nn.functional.one_hot(y, k).to(F64) - f0
    hits = 0
    for i in range(n):
        keep = torch.arange(n) != i
        pred = f0[i] + theta[i, keep] @ torch.linalg.solve(theta[keep][:, keep], resid[keep])
        hits += int(pred.argmax() == y[i])
    assert acc == pytest.approx(hits / n)
    assert beta == pytest.approx(max(0.0, (hits / n - 1 / k) / (1 - 1 / k)))


def test_loo_reliability_is_one_for_a_kernel_that_separates_the_classes():
    # Points of a class share a feature direction: every point is predicted by its classmates.
    k, per = 3, 6
    y = torch.arange(k).repeat_interleave(per)
    feats = torch.nn.functional.one_hot(y, k).to(F64) * 3.0 + 0.01 * torch.randn(
        k * per, k, dtype=F64
    )
    theta = feats @ feats.T
    beta, acc = loo_reliability(theta, torch.zeros(k * per, k, dtype=F64), y, k)
    assert acc == 1.0 and beta == 1.0
    assert loo_reliability(theta[:1, :1], torch.zeros(1, k, dtype=F64), y[:1], k) == (0.0, 0.0)


def test_weights_are_flat_at_zero_reliability_and_scale_free():
    ref = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.5, 0.5, 0.1]], dtype=F64)
    assert torch.equal(uncertainty_weights(ref, 0.0), torch.ones(3, dtype=F64))
    w = uncertainty_weights(ref, 1.0)
    gap = torch.tensor([2.0, 0.1, 0.0], dtype=F64)
    torch.testing.assert_close(w, torch.exp(-gap / gap.mean()))
    torch.testing.assert_close(uncertainty_weights(10 * ref, 1.0), w)  # MSE outputs or logits
    torch.testing.assert_close(uncertainty_weights(ref, 0.5), 0.5 + 0.5 * w)
    assert w[2] > w[1] > w[0]  # unsure points weigh more


def _problem(n=5, m=8, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n + m, 3 * (n + m), generator=g, dtype=F64)
    theta = feats @ feats.T / feats.shape[1]
    f0 = 0.5 * torch.randn(n + m, k, generator=g, dtype=F64)
    y = torch.randint(0, k, (n,), generator=g)
    return theta, f0, y, n, m, k


@pytest.mark.parametrize("beta", [0.0, 0.6, 1.0])
def test_score_equals_the_weighted_variance_reduction_from_a_direct_solve(beta):
    theta, f0, y, n, m, k = _problem()
    onehot = torch.nn.functional.one_hot(y, k).to(F64)
    la = DenseLookahead(theta[:n, :n], theta[n:, :n], theta[n:, n:], f0[:n], f0[n:], onehot)
    strategy = Auto()
    strategy.reliability = beta
    ref_eval, ref_cand = strategy.references(la)
    (block,) = list(la.iter_blocks(np.arange(m), m))
    score, _ = strategy.score_block(block, ref_eval, ref_cand)
    # Σ = Θ(S, S) − Θ(S, L) Θ(L, L)⁻¹ Θ(L, S), by a direct solve; E = S here.
    sigma = theta[n:, n:] - theta[n:, :n] @ torch.linalg.solve(theta[:n, :n], theta[:n, n:])
    w = uncertainty_weights(f0[n:], beta)
    expected = [(w * sigma[:, j] ** 2).sum() / sigma[j, j] for j in range(m)]
    np.testing.assert_allclose(score, torch.stack(expected).numpy(), rtol=1e-9)


def test_reliable_network_prefers_the_candidate_that_informs_uncertain_points():
    # E: 6 points the network is sure of (cluster A), 3 it is unsure of (cluster B); one candidate
    # near each cluster. Variance reduction (β = 0) takes A's (more points); β = 1 takes B's.
    k = 2
    a = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    b = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    lab = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    pts = torch.stack([a] * 6 + [b] * 3 + [a * 1.01, b * 1.01])
    pts = pts + 0.01 * torch.randn(pts.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    feats = torch.cat([lab[None], pts])
    theta = feats @ feats.T + 1e-3 * torch.eye(feats.shape[0], dtype=F64)
    f0 = torch.zeros(feats.shape[0], k, dtype=F64)
    f0[1:7, 0] = 3.0  # cluster A: a wide margin
    f0[7:10, 0] = 0.1  # cluster B: nearly tied
    f0[10, 0], f0[11, 0] = 3.0, 0.1
    la = DenseLookahead(
        theta[:1, :1],
        theta[1:, :1],
        theta[1:, 1:],
        f0[:1],
        f0[1:],
        torch.tensor([[0.0, 1.0]], dtype=F64),
    )
    picks = {}
    for beta in (0.0, 1.0):
        strategy = Auto()
        strategy.reliability = beta
        ref_eval, ref_cand = strategy.references(la)
        (block,) = list(la.iter_blocks(np.array([9, 10]), 2))
        score, _ = strategy.score_block(block, ref_eval, ref_cand)
        picks[beta] = int(np.argmax(score))
    assert picks == {0.0: 0, 1.0: 1}


def test_auto_is_registered_greedy_and_reports_its_reliability():
    strategy = get_strategy("auto")
    assert isinstance(strategy, Auto) and strategy.selection == "greedy"
    from torch import nn

    from ntkal.strategies import QueryContext

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(2)
    ctx = QueryContext(
        model=model,
        x_candidates=torch.randn(20, 4, generator=g),
        x_labelled=torch.randn(9, 4, generator=g),
        y_labelled=torch.arange(9) % 3,
        num_classes=3,
    )
    result = strategy.query(ctx, 3)
    assert 0.0 <= result.info["reliability"] <= 1.0
    assert result.info["loo_accuracy"] == pytest.approx(strategy.loo_accuracy)


@pytest.mark.parametrize("n_labelled", [0, 1])
def test_auto_with_fewer_than_two_labels_is_plain_greedy_variance_reduction(n_labelled):
    from torch import nn

    from ntkal.strategies import QueryContext

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(3)
    ctx = QueryContext(
        model=model,
        x_candidates=torch.randn(15, 4, generator=g),
        x_labelled=torch.randn(n_labelled, 4, generator=g),
        y_labelled=torch.arange(n_labelled) % 3,
        num_classes=3,
    )
    result = get_strategy("auto").query(ctx, 3)
    assert result.info["reliability"] == 0.0
    vr = get_strategy("vr", selection="greedy").query(ctx, 3)
    np.testing.assert_array_equal(result.indices, vr.indices)
