"""Behaviour of the baseline strategies on hand-built cases whose right answer is known."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from torch import nn

from ntkal.strategies import (
    BADGE,
    BALD,
    BatchBALD,
    Coreset,
    Entropy,
    LearningLoss,
    LeastConfidence,
    Margin,
    QueryContext,
    RandomSampling,
    Strategy,
    available_strategies,
    get_strategy,
    register_strategy,
)
from ntkal.strategies.bald import _sampled_configurations, batchbald_batch, mutual_information
from ntkal.strategies.forward_passes import mc_dropout_probabilities
from ntkal.strategies.learning_loss import LossPredictionModule, margin_ranking_loss
from ntkal.training import TrainConfig, train


class _FixedNet(nn.Module):
    """embed = identity, optional dropout, fixed linear classifier: logits are ours to choose."""

    def __init__(self, weight, bias=None, dropout=0.0):
        super().__init__()
        weight = torch.as_tensor(weight, dtype=torch.float32)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(
                torch.zeros(weight.shape[0])
                if bias is None
                else torch.as_tensor(bias, dtype=torch.float32)
            )

    def embed(self, x):
        return x

    def forward(self, x):
        return self.classifier(self.dropout(self.embed(x)))


def _ctx(model, x, seed=0, x_lab=None, k=None):
    x = torch.as_tensor(x, dtype=torch.float32)
    k = k or model.classifier.out_features
    x_lab = (
        torch.zeros(0, x.shape[1]) if x_lab is None else torch.as_tensor(x_lab, dtype=torch.float32)
    )
    return QueryContext(
        model=model,
        x_candidates=x,
        x_labelled=x_lab,
        y_labelled=torch.zeros(x_lab.shape[0], dtype=torch.long),
        num_classes=k,
        seed=seed,
        batch_size=4,
    )


def _logit_ctx(probs, seed=0):
    """Candidates whose softmax probabilities are exactly ``probs`` (logits = log p)."""
    probs = np.asarray(probs, dtype=np.float64)
    return _ctx(_FixedNet(torch.eye(probs.shape[1])), np.log(probs), seed=seed)


# ----------------------------------------------------------------------------- uncertainty
@pytest.mark.parametrize("cls", [Entropy, Margin, LeastConfidence])
def test_uncertainty_ranks_uniform_first_and_confident_last(cls):
    probs = [[0.7, 0.2, 0.1], [0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.3, 0.2]]
    result = cls().query(_logit_ctx(probs), 4)
    assert result.indices.tolist() == [2, 3, 0, 1]


def test_margin_uses_the_top_two_probabilities_not_the_first_two_classes():
    # Row 0: top-2 gap 0.05 (classes 2 and 1, not in index order). Row 1: gap 0.1, higher entropy.
    probs = [[0.05, 0.45, 0.5], [0.4, 0.3, 0.3]]
    margin = Margin().query(_logit_ctx(probs), 1)
    np.testing.assert_allclose(margin.scores, [-0.05, -0.1], atol=1e-6)
    assert margin.indices.tolist() == [0]
    assert Entropy().query(_logit_ctx(probs), 1).indices.tolist() == [1]
    assert LeastConfidence().query(_logit_ctx(probs), 1).indices.tolist() == [1]


def test_margin_works_with_two_classes_and_needs_at_least_two():
    np.testing.assert_allclose(Margin().score(np.array([[0.7, 0.3], [0.5, 0.5]])), [-0.4, 0.0])
    with pytest.raises(ValueError, match="at least two classes"):
        Margin().score(np.ones((3, 1)))


@pytest.mark.parametrize("cls", [Entropy, Margin, LeastConfidence, BALD])
def test_ties_are_broken_by_the_seed(cls):
    # Every candidate is identical: which ones come first depends on context.seed only.
    model = _FixedNet(torch.eye(3), dropout=0.5 if cls is BALD else 0.0)
    x = torch.ones(40, 3)
    picks = {seed: cls().query(_ctx(model, x, seed=seed), 5).indices.tolist() for seed in (0, 0, 1)}
    assert picks[0] == cls().query(_ctx(model, x, seed=0), 5).indices.tolist()
    assert picks[0] != picks[1] and picks[0] != [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- coreset
def test_min_squared_distances_in_chunks_of_centres():
    from ntkal.strategies.coreset import _min_sq_distances

    g = torch.Generator().manual_seed(0)
    points, centres = (
        torch.randn(50, 4, generator=g).double(),
        torch.randn(9, 4, generator=g).double(),
    )
    expected = torch.cdist(points, centres).min(dim=1).values ** 2
    for chunk in (1, 2, 4, 9, 100):
        got = _min_sq_distances(points, (points * points).sum(1), centres, chunk=chunk)
        torch.testing.assert_close(got, expected)
        assert got.dtype == torch.float64


def test_coreset_picks_the_far_away_points():
    g = torch.Generator().manual_seed(0)
    near = 0.1 * torch.randn(20, 2, generator=g)
    far = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    x = torch.cat([near[:10], far, near[10:]])
    model = _FixedNet(torch.eye(2))
    labelled = 0.1 * torch.randn(5, 2, generator=g)
    result = Coreset().query(_ctx(model, x, x_lab=labelled), 3)
    assert set(result.indices.tolist()) == {10, 11, 12}
    one = Coreset().query(_ctx(model, x, x_lab=labelled[:1]), 3)  # a single labelled centre
    np.testing.assert_allclose(one.scores, (x - labelled[0]).norm(dim=1).numpy(), rtol=1e-6)
    assert result.scores[10:13].min() > result.scores[np.r_[0:10, 13:23]].max()
    # No labelled points: the first centre is random, the far points must still be covered.
    for seed in range(3):
        picked = Coreset().query(_ctx(model, x, seed=seed), 4)
        assert {10, 11, 12} <= set(picked.indices.tolist())
        assert picked.scores is None


def _cdist_k_center_greedy(emb, labelled, budget, first=None):
    """The k-center greedy written the plain way: pairwise distances from ``torch.cdist``."""
    chosen = [] if first is None else [first]
    dist = (
        torch.cdist(emb, labelled).min(dim=1).values
        if labelled is not None
        else torch.cdist(emb, emb[first : first + 1]).squeeze(1)
    )
    while len(chosen) < budget:
        masked = dist.clone()
        masked[chosen] = -1.0
        chosen.append(int(torch.argmax(masked)))
        dist = torch.minimum(dist, torch.cdist(emb, emb[chosen[-1] : chosen[-1] + 1]).squeeze(1))
    return chosen, dist


@pytest.mark.parametrize("seed", range(3))
def test_coreset_picks_what_the_cdist_greedy_picks(seed):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    x = torch.randn(300, 6, generator=g, dtype=torch.float64) * scale
    labelled = torch.randn(7, 6, generator=g, dtype=torch.float64) * scale
    model = _FixedNet(torch.eye(6))
    result = Coreset().query(_ctx(model, x, x_lab=labelled, seed=seed), 40)
    emb, lab = x.float().double(), labelled.float().double()
    assert len(set(torch.cdist(emb, lab).argmin(dim=1).tolist())) == 7  # every centre matters
    expected, _ = _cdist_k_center_greedy(emb, lab, 40)
    assert result.indices.tolist() == expected
    np.testing.assert_allclose(
        result.scores, torch.cdist(emb, lab).min(dim=1).values.numpy(), rtol=1e-9, atol=1e-9
    )
    first = int(np.random.default_rng(seed).integers(300))
    no_labels = Coreset().query(_ctx(model, x, seed=seed), 40)
    assert no_labels.indices.tolist() == _cdist_k_center_greedy(emb, None, 40, first)[0]


# ----------------------------------------------------------------------------- BADGE
def test_badge_batch_is_diverse():
    g = torch.Generator().manual_seed(1)
    duplicates = torch.tensor([0.3, 0.2, 0.1]) + 1e-4 * torch.randn(10, 3, generator=g)
    distinct = torch.tensor(
        [[1.0, 0.8, 0.0], [0.0, 1.0, 0.8], [0.8, 0.0, 1.0], [-1.0, 0.5, 0.4], [0.2, -1.0, 0.5]]
    )
    x = torch.cat([duplicates, distinct])
    model = _FixedNet(torch.eye(3))
    for seed in range(5):
        result = BADGE().query(_ctx(model, x, seed=seed), 5)
        assert np.sum(result.indices < 10) <= 1, result.indices


def test_badge_scores_are_gradient_embedding_norms():
    x = torch.tensor([[0.3, -0.2, 1.0], [2.0, 0.0, -1.0]])
    model = _FixedNet(torch.eye(3))
    p = torch.softmax(x.double(), 1)
    a = p - torch.nn.functional.one_hot(p.argmax(1), 3)
    g = torch.einsum("nk,nd->nkd", a, torch.cat([x.double(), torch.ones(2, 1)], 1)).flatten(1)
    np.testing.assert_allclose(
        BADGE().query(_ctx(model, x), 1).scores, g.norm(dim=1).numpy(), rtol=1e-6
    )


def _gradient_embeddings(x):
    """BADGE's embeddings for _FixedNet(eye): (p - onehot(argmax p)) ⊗ [x, 1], explicitly."""
    x = torch.as_tensor(x, dtype=torch.float64)
    p = torch.softmax(x, 1)
    a = p - torch.nn.functional.one_hot(p.argmax(1), x.shape[1])
    return torch.einsum("nk,nd->nkd", a, torch.cat([x, torch.ones(len(x), 1)], 1)).flatten(1)


def test_badge_factorised_distances_equal_explicit_embedding_distances():
    from ntkal.strategies.badge import _sq_distances_to

    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    emb = _gradient_embeddings(x)
    p = torch.softmax(x, 1)
    a = (p - torch.nn.functional.one_hot(p.argmax(1), 3)).numpy()
    h = x.numpy()
    sq_norm = (a * a).sum(1) * ((h * h).sum(1) + 1.0)
    for c in (0, 5, 11):
        np.testing.assert_allclose(
            _sq_distances_to(c, a, h, sq_norm),
            ((emb - emb[c]) ** 2).sum(1).numpy(),
            rtol=1e-9,
            atol=1e-12,
        )


def test_badge_on_identical_candidates_picks_distinct_points_by_seed():
    # Every gradient embedding coincides: D² is 0 everywhere after the first pick, so the rest
    # are drawn uniformly among the unchosen (never a NaN probability, never a repeat).
    model = _FixedNet(torch.eye(3))
    x = torch.tensor([[0.3, 0.2, 0.1]]).repeat(30, 1)
    picks = [BADGE().query(_ctx(model, x, seed=s), 6).indices.tolist() for s in (0, 0, 1)]
    assert picks[0] == picks[1] != picks[2]
    assert all(len(set(p)) == 6 for p in picks)
    whole = BADGE().query(_ctx(model, x[:8], seed=2), 8).indices.tolist()
    assert sorted(whole) == list(range(8))


def test_badge_tiny_distances_still_sample_by_distance():
    # Ten copies of one point and a slightly different one with a smaller gradient norm: after
    # the first pick (a copy), only the odd point is at a distance > 0 (D² = 0.02: a total < 1).
    model = _FixedNet(torch.eye(3))
    x = torch.cat([torch.tensor([[0.3, 0.2, 0.1]]).repeat(10, 1), torch.tensor([[0.5, 0.2, 0.1]])])
    for seed in range(5):
        assert BADGE().query(_ctx(model, x, seed=seed), 2).indices.tolist()[1] == 10


def test_badge_samples_proportionally_to_squared_distance():
    # A tight cluster of 40 points and 3 outliers. After the first (largest-norm) centre, k-means++
    # draws the second with probability ∝ D² (distance to the nearest centre); ∝ D would give the
    # cluster far more mass. Frequencies over 600 seeds must follow D², not D.
    g = torch.Generator().manual_seed(2)
    cluster = torch.tensor([0.2, 0.1, 0.0]) + 0.05 * torch.randn(40, 3, generator=g)
    outliers = torch.tensor([[3.0, -1.0, 0.5], [-2.0, 2.5, 0.0], [0.5, 0.0, 2.8]])
    x = torch.cat([cluster, outliers])
    emb = _gradient_embeddings(x)
    first = int(emb.norm(dim=1).argmax())
    d = (emb - emb[first]).norm(dim=1).numpy()
    p_d2, p_d = d**2 / (d**2).sum(), d / d.sum()
    in_cluster = np.arange(len(x)) < 40
    assert abs(p_d2[in_cluster].sum() - p_d[in_cluster].sum()) > 0.15  # the laws differ (8 s.e.)
    model = _FixedNet(torch.eye(3))
    draws = [BADGE().query(_ctx(model, x, seed=seed), 2).indices for seed in range(600)]
    assert all(int(i[0]) == first for i in draws)
    freq = np.bincount([int(i[1]) for i in draws], minlength=len(x)) / len(draws)
    se = np.sqrt(p_d2[in_cluster].sum() * (1 - p_d2[in_cluster].sum()) / len(draws))
    assert abs(freq[in_cluster].sum() - p_d2[in_cluster].sum()) < 4 * se
    assert 0.5 * np.abs(freq - p_d2).sum() < 0.5 * np.abs(freq - p_d).sum()


# ----------------------------------------------------------------------------- BALD, BatchBALD
def test_bald_prefers_disagreement_over_noise():
    # Feature 0 passes dropout: "on" -> confident class 0, "off" -> 50/50. Point (0, 0) is 50/50
    # under every mask (highest entropy, no disagreement); (10, 0) is where the samples disagree.
    model = _FixedNet([[1.0, 0.0], [0.0, 0.0]], dropout=0.5)
    x = [[0.0, 0.0], [10.0, 0.0], [0.3, 0.0]]
    assert BALD(num_samples=64).query(_ctx(model, x), 1).indices.tolist() == [1]
    assert Entropy().query(_ctx(model, x), 1).indices.tolist() == [0]


def test_sample_counts_are_positive_integers():
    assert BALD(num_samples=1).num_samples == 1
    assert BatchBALD(max_configurations=1, num_sampled_configurations=1).max_configurations == 1
    for bad in (0, -3, True, 2.0, "4"):
        with pytest.raises(ValueError, match=r"num_samples must be a positive integer"):
            BALD(num_samples=bad)
    with pytest.raises(ValueError, match=r"max_configurations must be a positive integer, got 0"):
        BatchBALD(max_configurations=0)
    with pytest.raises(ValueError, match=r"num_sampled_configurations must be a positive integer"):
        BatchBALD(num_sampled_configurations=0)


def test_batchbald_query_is_batchbald_batch_on_the_seeded_mc_dropout_probabilities():
    torch.manual_seed(5)
    model = _FixedNet(torch.randn(3, 5), dropout=0.4)
    x = torch.randn(9, 5)
    strategy = BatchBALD(num_samples=6, max_configurations=3, num_sampled_configurations=40)
    result = strategy.query(_ctx(model, x, seed=3), 5)
    probs = mc_dropout_probabilities(model, x, num_samples=6, seed=3)
    chosen, estimates, exact_steps = batchbald_batch(
        probs, 5, max_configurations=3, num_sampled_configurations=40, rng=np.random.default_rng(3)
    )
    assert result.indices.tolist() == chosen and exact_steps == 2
    np.testing.assert_allclose(result.info["mutual_information_estimates"], estimates)
    np.testing.assert_allclose(result.scores, mutual_information(probs))
    other = batchbald_batch(
        probs, 5, max_configurations=3, num_sampled_configurations=40, rng=np.random.default_rng(0)
    )[1]
    assert not np.allclose(other, estimates)  # the seed matters once sampling starts


def test_batchbald_with_impossible_labels_and_its_default_seed():
    # Class 2 has probability exactly 0 under every mask: its configurations have zero mass and
    # must be dropped, not turned into 0 * log 0 = NaN. Without an rng the result is repeatable.
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(2), size=(8, 6))
    probs = np.concatenate([probs, np.zeros((8, 6, 1))], axis=2)
    chosen, estimates, exact_steps = batchbald_batch(
        probs, 5, max_configurations=8, num_sampled_configurations=64
    )
    assert np.isfinite(estimates).all() and exact_steps == 3 and len(set(chosen)) == 5
    assert (
        batchbald_batch(probs, 5, max_configurations=8, num_sampled_configurations=64)[1]
        == estimates
    )


def test_bald_without_dropout_tells_the_user_to_add_it():
    with pytest.raises(ValueError, match="dropout > 0"):
        BALD().query(_ctx(_FixedNet(torch.eye(2)), [[0.0, 1.0], [1.0, 0.0]]), 1)


def _duplicate_case():
    # Point a = 10 e0 flips between confident classes with its dropout unit (MI ~ log 2); three
    # copies of it. Points b_j = 2.9 e_j depend on other, independent units (MI ~ 0.3 each).
    model = _FixedNet([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], bias=[-5.0, 0.0], dropout=0.5)
    a = [10.0, 0.0, 0.0, 0.0]
    x = [a, a, a] + [[2.9 * (i == j) for i in range(4)] for j in (1, 2, 3)]
    return model, x


def test_batchbald_avoids_the_duplicates_bald_picks():
    model, x = _duplicate_case()
    bald = BALD(num_samples=100).query(_ctx(model, x), 3)
    assert set(bald.indices.tolist()) == {0, 1, 2}
    for strategy in (
        BatchBALD(num_samples=100),
        BatchBALD(num_samples=100, max_configurations=2, num_sampled_configurations=500),
    ):
        batch = strategy.query(_ctx(model, x), 3)
        assert np.sum(batch.indices < 3) == 1, batch.indices
        assert batch.info["mutual_information_estimates"][0] == pytest.approx(bald.scores.max())


def _brute_force_joint_mi(probs, subset):
    _t, _, k = probs.shape
    joint = np.zeros(k ** len(subset))
    for c, labels in enumerate(itertools.product(range(k), repeat=len(subset))):
        joint[c] = np.mean(np.prod([probs[:, j, y] for j, y in zip(subset, labels)], axis=0))
    h_joint = -np.sum(joint * np.log(joint))
    h_cond = -np.sum(probs[:, subset] * np.log(probs[:, subset]), axis=2).mean(0).sum()
    return h_joint - h_cond


def test_batchbald_exact_joint_mutual_information_matches_brute_force():
    torch.manual_seed(3)
    model = _FixedNet(torch.randn(3, 5), dropout=0.4)
    x = torch.randn(7, 5)
    ctx = _ctx(model, x, seed=2)
    result = BatchBALD(num_samples=8).query(ctx, 3)
    probs = mc_dropout_probabilities(model, x, num_samples=8, seed=2)
    chosen = result.indices.tolist()
    assert result.info["exact_steps"] == 3 and result.info["exact_joint_entropy"]
    for step in range(1, 4):
        assert result.info["mutual_information_estimates"][step - 1] == pytest.approx(
            _brute_force_joint_mi(probs, chosen[:step]), rel=1e-8, abs=1e-10
        )
    assert result.info["batch_mutual_information"] == pytest.approx(
        _brute_force_joint_mi(probs, chosen), rel=1e-8
    )


def test_batchbald_sampled_joint_entropy_estimates_the_exact_one():
    torch.manual_seed(4)
    model = _FixedNet(torch.randn(3, 5), dropout=0.4)
    x = torch.randn(7, 5)
    probs = mc_dropout_probabilities(model, x, num_samples=8, seed=1)
    # Beyond the first pick every step is sampled (3 configurations > max_configurations=2).
    result = BatchBALD(num_samples=8, max_configurations=2, num_sampled_configurations=20000).query(
        _ctx(model, x, seed=1), 4
    )
    assert not result.info["exact_joint_entropy"] and result.info["exact_steps"] == 1
    assert result.info["batch_mutual_information"] is None  # only estimates: not the batch's MI
    chosen = result.indices.tolist()
    for step in range(2, 5):
        assert result.info["mutual_information_estimates"][step - 1] == pytest.approx(
            _brute_force_joint_mi(probs, chosen[:step]), rel=0.05
        )


def test_batchbald_samples_the_same_number_of_configurations_per_mask():
    # Mask t predicts class t % 3 for every point with certainty, so each configuration drawn from
    # mask t is (t % 3, t % 3, ...): the draws per mask are visible in the labels' pattern.
    t_count, k = 6, 3
    probs = np.full((t_count, 4, k), 1e-9)
    for t in range(t_count):
        probs[t, :, t % k] = 1.0
    probs /= probs.sum(axis=2, keepdims=True)
    log_p, ratio = _sampled_configurations(probs, [0, 2, 3], 20, np.random.default_rng(0))
    assert log_p.shape == (18,) and ratio.shape == (t_count, 18)  # 20 // 6 = 3 per mask
    assert _sampled_configurations(probs, [1], 4, np.random.default_rng(0))[0].shape == (6,)
    # p(y_A = (c, c, c)) = 2/6 for each class c: two masks predict it.
    np.testing.assert_allclose(np.exp(log_p), 1 / 3, rtol=1e-6)
    for t in range(t_count):
        block = ratio[:, 3 * t : 3 * t + 3]  # configurations drawn from mask t
        np.testing.assert_allclose(
            block[[u for u in range(t_count) if u % k == t % k]], 3.0, rtol=1e-6
        )
    np.testing.assert_allclose(ratio.mean(axis=0), 1.0)


def _monte_carlo_joint_mi(probs, subset, per_mask=3000, seed=11):
    """I(y_A; w) under the MC-dropout mixture by plain Monte Carlo: H(y_A) = -E log p(y_A) with
    y_A drawn mask by mask, minus Σ_j E_t H(y_j | w_t). Independent of ntkal's estimator."""
    rng = np.random.default_rng(seed)
    t_count, _, k = probs.shape
    sub = probs[:, subset, :]
    neg_log_p = []
    for t in range(t_count):
        labels = np.stack(
            [rng.choice(k, size=per_mask, p=sub[t, j]) for j in range(len(subset))], 1
        )
        log_pt = np.log(sub[:, np.arange(len(subset)), labels]).sum(axis=2)  # (T, per_mask)
        neg_log_p.append(-np.log(np.exp(log_pt).mean(axis=0)))
    neg_log_p = np.concatenate(neg_log_p)
    cond = -(sub * np.log(sub)).sum(axis=2).mean(axis=0).sum()
    return neg_log_p.mean() - cond, neg_log_p.std() / np.sqrt(neg_log_p.size)


def test_batchbald_batch_carries_more_information_than_top_bald():
    # 20 masks, 4 classes. Points 0-11 are copies of one point that every mask predicts confidently
    # (a random class per mask: BALD ~ log 4); points 12-41 are distinct, each with its own random
    # classes per mask, somewhat less confident. Top-10 BALD takes ten copies, whose labels tell
    # nearly the same thing; a batch of 10 has 4^10 configurations, so BatchBALD samples.
    rng = np.random.default_rng(0)
    t_count, k = 20, 4

    def confident(classes, p_top):
        out = np.full((t_count, k), (1 - p_top) / (k - 1))
        out[np.arange(t_count), classes] = p_top
        return out

    copy = confident(rng.integers(k, size=t_count), 0.97)
    distinct = [confident(rng.integers(k, size=t_count), 0.9) for _ in range(30)]
    probs = np.stack([copy] * 12 + distinct, axis=1)
    bald = np.argsort(-mutual_information(probs), kind="stable")[:10]
    assert set(bald.tolist()) == set(range(10))
    chosen, estimates, exact_steps = batchbald_batch(probs, 10, rng=np.random.default_rng(1))
    # The 4^5 = 1024 configurations of the first five picks are summed exactly; then sampled.
    assert exact_steps == 6 and len(set(chosen)) == 10
    mi_batch, se_batch = _monte_carlo_joint_mi(probs, chosen)
    mi_bald, se_bald = _monte_carlo_joint_mi(probs, list(bald))
    assert mi_batch - mi_bald > 5 * np.hypot(se_batch, se_bald) + 0.5, (mi_batch, mi_bald)
    assert sum(c < 12 for c in chosen) <= 2
    # The greedy's sampled estimate is close to the batch's information, but only an estimate.
    assert estimates[-1] == pytest.approx(mi_batch, abs=0.15)


# ----------------------------------------------------------------------------- LL4AL
class _SmallMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.classifier = nn.Linear(16, 2)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.embed(x))


def _noisy_halves(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] + 0.5 * torch.randn(n, generator=g) > 0).long()  # noisier near the boundary
    return x, y


def test_ll4al_loss_module_learns_to_rank_losses():
    torch.manual_seed(0)
    model = _SmallMLP()
    x, y = _noisy_halves(256, 0)
    config = TrainConfig(
        epochs=30,
        batch_size=32,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        loss="ce",
        seed=0,
        device="cpu",
    )
    strategy = LearningLoss()
    history = strategy.train(model, x, y, config, 2)
    assert history.losses[-1] < history.losses[0]
    module = strategy.loss_module

    x_test, y_test = _noisy_halves(300, 1)
    with torch.no_grad():
        true_loss = torch.nn.functional.cross_entropy(model(x_test), y_test, reduction="none")
    result = strategy.query(_ctx(model, x_test), 10)
    rho = spearmanr(result.scores, true_loss.numpy()).statistic
    assert rho > 0.2, rho

    strategy.train(model, x, y, dataclasses.replace(config, epochs=1), 2)
    assert strategy.loss_module is module  # kept between active-learning cycles


def _record_optimiser_steps(monkeypatch):
    """Record, at every SGD step, each group's learning rate and momentum and the global norm of
    the gradients about to be applied."""
    steps = []
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        )
        steps.append(([(g["lr"], g["momentum"]) for g in self.param_groups], norm))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return steps


def test_ll4al_trains_through_the_one_training_loop(monkeypatch):
    # The CIFAR protocol (OneCycle from lr 0.3 to max_lr 1.25, no momentum cycling), with
    # min_steps lengthening the run (40 examples, batch 16: 3 steps an epoch, 2 epochs -> 4) and
    # a tight grad_clip: LL4AL must step exactly like plain training.
    x, y = _noisy_halves(40, 3)
    config = TrainConfig.reference(epochs=2, batch_size=16, min_steps=12, grad_clip=0.01)
    steps = _record_optimiser_steps(monkeypatch)
    torch.manual_seed(0)
    plain = train(_SmallMLP(), x, y, config, num_classes=2)
    plain_steps = list(steps)
    steps.clear()
    torch.manual_seed(0)
    strategy = LearningLoss()
    joint = strategy.train(_SmallMLP(), x, y, config, 2)
    torch.manual_seed(config.seed)  # the loss module's initialisation, redone
    initial = LossPredictionModule(strategy.loss_module.in_dims, strategy.hidden)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(initial.state_dict().values(), strategy.loss_module.state_dict().values())
    ]
    assert all(moved)  # the loss module is optimised with the model
    assert plain.steps == joint.steps == len(steps) == 12
    assert [s[0] for s in steps] == [s[0] for s in plain_steps]
    lrs = [groups[0][0] for groups, _ in steps]
    assert max(lrs) == pytest.approx(1.25, rel=0.02) and lrs[0] == pytest.approx(0.3)
    assert {groups[0][1] for groups, _ in steps} == {0.9}
    assert max(norm for _, norm in steps) <= 0.01 * (1 + 1e-4)  # clipped, loss module included
    assert len(joint.losses) == len(joint.extra_losses) == 4


def test_ll4al_divergence_is_reported():
    x, y = _noisy_halves(40, 3)
    config = TrainConfig(epochs=3, batch_size=8, lr=1e6, schedule="constant", loss="mse")
    with pytest.raises(FloatingPointError, match="diverged"):
        LearningLoss().train(_SmallMLP(), x, y, config, 2)
    strategy = LearningLoss()
    strategy.weight = float("nan")  # a ranking term that turns NaN is caught like the loss
    with pytest.raises(FloatingPointError, match="diverged"):
        strategy.train(_SmallMLP(), x, y, dataclasses.replace(config, lr=0.01), 2)


def test_ll4al_pools_feature_maps_and_taps_named_layers():
    from ntkal.strategies.learning_loss import _pool

    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    torch.testing.assert_close(_pool(maps), maps.mean(dim=(2, 3)))
    torch.testing.assert_close(_pool(maps[:, :, 0]), maps[:, :, 0].mean(dim=2))  # (n, C, L)
    flat = torch.randn(2, 7, dtype=torch.float64)
    assert _pool(flat) is not None and torch.equal(_pool(flat), flat)

    x, y = _noisy_halves(32, 2)
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, schedule="constant", loss="ce")
    strategy = LearningLoss(feature_layers=["body.0", "body.2"], hidden=4)
    strategy.train(_SmallMLP(), x, y, config, 2)
    assert strategy.loss_module.in_dims == (16, 16, 16)  # two tapped layers + the embedding
    with pytest.raises(ValueError, match="feature_layers: 'nope' is not a submodule of _SmallMLP"):
        LearningLoss(feature_layers=["nope"]).train(_SmallMLP(), x, y, config, 2)
    headless = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(
        TypeError,
        match="Sequential has no `classifier` module; LL4AL reads the penultimate embedding",
    ):
        LearningLoss().train(headless, x, y, config, 2)


def test_ll4al_query_before_training_is_an_error():
    with pytest.raises(RuntimeError, match="untrained"):
        LearningLoss().query(_ctx(_SmallMLP(), torch.zeros(3, 2)), 1)


def test_margin_ranking_loss_is_zero_for_a_well_separated_correct_order():
    target = torch.tensor([3.0, 2.0, 0.0, 1.0])
    assert float(margin_ranking_loss(2 * target, target)) == 0.0
    assert float(margin_ranking_loss(-2 * target, target)) > 0.0


# ----------------------------------------------------------------------------- random, registry
def test_random_depends_only_on_the_seed():
    ctx = lambda seed: _ctx(_FixedNet(torch.eye(2)), torch.randn(50, 2), seed=seed)  # noqa: E731
    a, b = RandomSampling().query(ctx(1), 10), RandomSampling().query(ctx(1), 10)
    assert a.indices.tolist() == b.indices.tolist()
    assert a.indices.tolist() != RandomSampling().query(ctx(2), 10).indices.tolist()


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(
        ValueError,
        match=r"unknown strategy 'no_such_strategy'; available: "
        r"auto, badge, bald, batchbald, coreset, eer, emoc, entropy",
    ):
        get_strategy("no_such_strategy")
    with pytest.raises(
        TypeError,
        match=r"strategy 'bald' got unknown parameter\(s\) samples, "
        r"size; valid parameters: num_samples$",
    ):
        get_strategy("bald", samples=3, size=2)
    with pytest.raises(TypeError, match=r"valid parameters: \(none\)$"):
        get_strategy("random", seed=1)
    assert isinstance(get_strategy("batchbald", num_samples=3), BatchBALD)

    class Impostor(Strategy):
        name = "entropy"

        def query(self, context, budget):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ValueError, match="already taken"):
        register_strategy(Impostor)
    with pytest.raises(TypeError, match="only Strategy subclasses can be registered"):
        register_strategy(int)


def test_register_strategy_rules(monkeypatch):
    from ntkal.strategies import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Nameless(Strategy):
        def query(self, context, budget):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ValueError, match="Nameless needs a non-empty class attribute `name`"):
        register_strategy(Nameless)

    def make():
        class Fresh(Strategy):
            """First line of the description.

            More."""

            name = "fresh_for_test"

            def query(self, context, budget):  # pragma: no cover - never called
                raise AssertionError

        return Fresh

    first = make()
    assert register_strategy(first) is first and register_strategy(first) is first
    again = make()  # the same class re-created (a module reload): it replaces the first
    assert register_strategy(again) is again

    class Other(Strategy):  # same module, another class: the name is taken
        name = "fresh_for_test"

        def query(self, context, budget):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ValueError, match="already taken"):
        register_strategy(Other)
    assert isinstance(get_strategy("fresh_for_test"), again)
    assert available_strategies()["fresh_for_test"] == "First line of the description."

    class Undocumented(Strategy):
        name = "undocumented_for_test"

        def query(self, context, budget):  # pragma: no cover - never called
            raise AssertionError

    Undocumented.__doc__ = "   "  # blank (None would inherit the base class docstring)
    register_strategy(Undocumented)
    assert available_strategies()["undocumented_for_test"] == "Undocumented"

    class Open(Strategy):
        name = "open_for_test"

        def __init__(self, **options):
            self.options = options

        def query(self, context, budget):  # pragma: no cover - never called
            raise AssertionError

    register_strategy(Open)
    assert get_strategy("open_for_test", anything=1).options == {"anything": 1}


# ----------------------------------------------------------------------------- scores, modes
@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.floats(-8, 8), min_size=4, max_size=4), min_size=2, max_size=6))
def test_uncertainty_scores_match_their_definitions(logits):
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), 1).numpy()
    ordered = np.sort(probs, axis=1)
    np.testing.assert_allclose(Margin().score(probs), ordered[:, -2] - ordered[:, -1], atol=1e-12)
    np.testing.assert_allclose(LeastConfidence().score(probs), 1 - ordered[:, -1], atol=1e-12)
    np.testing.assert_allclose(Entropy().score(probs), -(probs * np.log(probs)).sum(1), atol=1e-9)


def test_forward_batches_of_one():
    probs = [[0.7, 0.2, 0.1], [0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3]]
    ctx = _logit_ctx(probs)
    ctx.batch_size = 1
    assert Entropy().query(ctx, 3).indices.tolist() == [2, 0, 1]
    ctx.batch_size = 0
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        Entropy().query(ctx, 1)


def test_query_restores_mixed_module_modes():
    model = _FixedNet([[1.0, 0.0], [0.0, 0.0]], dropout=0.5)
    model.train()
    model.classifier.eval()  # a caller's deliberate mix of modes survives a query
    for strategy in (Entropy(), BALD(num_samples=2), BADGE(), Coreset()):
        strategy.query(_ctx(model, [[0.0, 1.0], [1.0, 0.0]]), 1)
        assert model.training and model.dropout.training and not model.classifier.training


def test_ll4al_state_round_trip_gives_the_same_query():
    torch.manual_seed(0)
    model = _SmallMLP()
    x, y = _noisy_halves(64, 0)
    config = TrainConfig(
        epochs=3,
        batch_size=32,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        loss="ce",
        seed=0,
        device="cpu",
    )
    trained = LearningLoss()
    assert trained.state_dict() is None
    trained.train(model, x, y, config, 2)
    restored = LearningLoss()
    restored.load_state_dict(trained.state_dict())
    x_test, _ = _noisy_halves(50, 1)
    a = trained.query(_ctx(model, x_test), 5)
    b = restored.query(_ctx(model, x_test), 5)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.scores, b.scores)
    with pytest.raises(ValueError, match="hidden"):
        LearningLoss(hidden=8).load_state_dict(trained.state_dict())
    narrow = LearningLoss(hidden=8)
    narrow.train(model, x, y, config, 2)
    restored = LearningLoss(hidden=8)
    restored.load_state_dict(narrow.state_dict())
    np.testing.assert_allclose(
        restored.query(_ctx(model, x_test), 5).scores, narrow.query(_ctx(model, x_test), 5).scores
    )
    restored.load_state_dict(None)
    assert restored.loss_module is None
    with pytest.raises(RuntimeError, match="untrained"):
        restored.query(_ctx(model, x_test), 1)
