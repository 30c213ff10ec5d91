"""The look-ahead family (EER, EMOC, variance reduction) and greedy batch selection.

Every criterion is checked against a from-scratch computation: kernel regression re-solved on
L ∪ {(x_j, y)} with an explicit solve (no Σ, no rank-one update), for scalar and full block kernels;
then a behavioural case each, where the criterion must pick a specific point.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkal.lookahead import DenseLookahead
from ntkal.strategies import QueryContext, get_strategy
from ntkal.strategies.expected_error import EER
from ntkal.strategies.lookahead import MLMOC
from ntkal.strategies.output_change import EMOC
from ntkal.strategies.selection import select_greedy
from ntkal.strategies.variance_reduction import VarianceReduction

F64 = torch.float64


# ----------------------------------------------------------------------------- a from-scratch model
def _problem(n=6, m=9, k=3, block=False, seed=0):
    """A random PSD kernel over L ∪ S (scalar (N, N) or full (N, N, k, k)), outputs and labels."""
    g = torch.Generator().manual_seed(seed)
    big = n + m
    p = k if block else 1
    feats = torch.randn(big * p, 3 * big * p, generator=g, dtype=F64)
    flat = feats @ feats.T / feats.shape[1]
    theta = flat.reshape(big, p, big, p).permute(0, 2, 1, 3) if block else flat
    f0 = 0.5 * torch.randn(big, k, generator=g, dtype=F64)
    y = torch.randint(0, k, (n,), generator=g)
    return theta, f0, y, n, m, k


def _lookahead(theta, f0, y, n, k):
    onehot = torch.nn.functional.one_hot(y, k).to(F64)
    return DenseLookahead(theta[:n, :n], theta[n:, :n], theta[n:, n:], f0[:n], f0[n:], onehot)


def _flat(theta, rows, cols, k, block):
    """Θ[rows, cols] as a (|rows| p, |cols| p) matrix indexed (point, class)."""
    sub = theta[rows][:, cols]
    if not block:
        return sub
    return sub.permute(0, 2, 1, 3).reshape(len(rows) * k, len(cols) * k)


def _resolve(theta, f0, train, targets, test, k, block):
    """Kernel regression from scratch: f0(test) + Θ(test, train) Θ(train, train)⁻¹ (Y − f0(train)).
    Scalar kernels act per output (Θ ⊗ I_k)."""
    kt = _flat(theta, train, train, k, block)
    ks = _flat(theta, test, train, k, block)
    resid = targets - f0[train]
    if block:
        sol = torch.linalg.solve(kt, resid.reshape(-1, 1))
        return f0[test] + (ks @ sol).reshape(len(test), k)
    return f0[test] + ks @ torch.linalg.solve(kt, resid)


def _posterior_trace(theta, train, test, k, block):
    """Σ_i tr Cov(x_i) of the kernel-regression posterior on ``test`` given ``train``
    (k × the scalar variance for scalar kernels read as Θ ⊗ I_k, divided back by k below)."""
    kt = _flat(theta, train, train, k, block)
    ks = _flat(theta, test, train, k, block)
    kss = _flat(theta, test, test, k, block)
    return float(torch.diagonal(kss - ks @ torch.linalg.solve(kt, ks.T)).sum())


def _entropy(outputs, t):
    p = torch.softmax(outputs / t, dim=-1)
    return -(p * torch.log(p)).sum(dim=-1)


@pytest.mark.parametrize("block", [False, True])
def test_emoc_and_eer_equal_explicit_re_solves(block):
    theta, f0, y, n, m, k = _problem(block=block)
    la = _lookahead(theta, f0, y, n, k)
    onehot = torch.nn.functional.one_hot(y, k).to(F64)
    lab, cand = list(range(n)), list(range(n, n + m))
    f_bar = _resolve(theta, f0, lab, onehot, cand, k, block)
    t = 0.7
    emoc_direct, eer_direct = np.zeros(m), np.zeros(m)
    for j in range(m):
        probs = torch.softmax(f0[n + j] / t, dim=0)
        for c in range(k):
            targets = torch.cat([onehot, torch.nn.functional.one_hot(torch.tensor([c]), k).to(F64)])
            preds = _resolve(theta, f0, lab + [n + j], targets, cand, k, block)
            emoc_direct[j] += float(probs[c] * (preds - f_bar).abs().sum(dim=1).mean())
            eer_direct[j] += float(probs[c] * _entropy(preds, t).mean())
    eer_direct = float(_entropy(f_bar, t).mean()) - eer_direct

    emoc, _ = EMOC(temperature=t).score_candidates(la)
    eer, _ = EER(temperature=t).score_candidates(la)
    np.testing.assert_allclose(emoc, emoc_direct, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(eer, eer_direct, rtol=1e-7, atol=1e-10)


def test_eer_zero_one_error_equals_explicit_re_solves():
    theta, f0, y, n, m, k = _problem(seed=3)
    la = _lookahead(theta, f0, y, n, k)
    onehot = torch.nn.functional.one_hot(y, k).to(F64)
    lab, cand = list(range(n)), list(range(n, n + m))
    f_bar = _resolve(theta, f0, lab, onehot, cand, k, False)
    err = lambda out: 1.0 - torch.softmax(out, dim=-1).max(dim=-1).values  # noqa: E731
    direct = np.full(m, float(err(f_bar).mean()))
    for j in range(m):
        probs = torch.softmax(f0[n + j], dim=0)
        for c in range(k):
            targets = torch.cat([onehot, torch.nn.functional.one_hot(torch.tensor([c]), k).to(F64)])
            preds = _resolve(theta, f0, lab + [n + j], targets, cand, k, False)
            direct[j] -= float(probs[c] * err(preds).mean())
    got, _ = EER(error="zero_one").score_candidates(la)
    np.testing.assert_allclose(got, direct, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("block", [False, True])
def test_variance_reduction_equals_explicit_posterior_variances(block):
    theta, f0, y, n, m, k = _problem(block=block, seed=1)
    la = _lookahead(theta, f0, y, n, k)
    lab, cand = list(range(n)), list(range(n, n + m))
    before = _posterior_trace(theta, lab, cand, k, block)
    direct = np.array(
        [before - _posterior_trace(theta, lab + [n + j], cand, k, block) for j in range(m)]
    )
    got, own = VarianceReduction().score_candidates(la)
    np.testing.assert_allclose(got, direct, rtol=1e-7, atol=1e-10)
    assert np.all(got > 0)
    # the tie-break is the candidate's own posterior variance
    var = la.posterior_variance()
    expected_own = var.numpy() if not block else torch.diagonal(var, dim1=1, dim2=2).sum(1).numpy()
    np.testing.assert_allclose(own, expected_own, rtol=1e-6)


def test_greedy_second_pick_equals_a_from_scratch_model_conditioned_on_the_first():
    """Greedy VR: after the first pick, the next one maximises the variance reduction of the
    kernel regression re-solved with the first pick added to L (label-free, so exact)."""
    theta, f0, y, n, m, k = _problem(seed=2, m=12)
    lab, cand = list(range(n)), list(range(n, n + m))
    strategy = VarianceReduction(selection="greedy")
    chosen, first_scores, _ = select_greedy(
        strategy, _lookahead(theta, f0, y, n, k), 3, np.random.default_rng(0)
    )
    assert chosen[0] == int(np.argmax(first_scores))
    picked = [chosen[0]]
    for step in (1, 2):
        train = lab + [n + j for j in picked]
        before = _posterior_trace(theta, train, cand, k, False)
        gains = np.array(
            [
                before - _posterior_trace(theta, train + [n + j], cand, k, False)
                if j not in picked
                else -np.inf
                for j in range(m)
            ]
        )
        assert chosen[step] == int(np.argmax(gains))
        picked.append(chosen[step])


def test_greedy_mlmoc_conditions_on_the_pseudo_label():
    """Greedy MLMOC's second pick is the best of a Lookahead built from scratch on
    L ∪ {(x_j1, ŷ_j1)} (ŷ the most likely class), scored against the network's outputs moved by
    what that pseudo-label taught the linearised model."""
    theta, f0, y, n, m, k = _problem(seed=5, m=10)
    strategy = MLMOC(selection="greedy", score="norm")
    la = _lookahead(theta, f0, y, n, k)
    f_bar0 = la.base_predictions()
    chosen, _, _ = select_greedy(strategy, la, 2, np.random.default_rng(0))
    j1 = int(chosen[0])
    pseudo = int(f0[n + j1].argmax())
    train = list(range(n)) + [n + j1]
    targets = torch.cat(
        [
            torch.nn.functional.one_hot(y, k).to(F64),
            torch.nn.functional.one_hot(torch.tensor([pseudo]), k).to(F64),
        ]
    )
    with pytest.warns(RuntimeWarning, match="clamped"):  # x_j1 is in L now: Σ_j1j1 = 0
        fresh = DenseLookahead(
            _flat(theta, train, train, k, False),
            theta[n:, train],
            theta[n:, n:],
            f0[train],
            f0[n:],
            targets,
        )
    rest = np.array([j for j in range(m) if j != j1])
    scores, _ = strategy.score_candidates(fresh, rest, f_bar0)
    assert chosen[1] == rest[int(np.argmax(scores))]
    # and not what an unconditioned top-k would take second
    first, _ = strategy.score_candidates(_lookahead(theta, f0, y, n, k))
    assert int(np.argsort(-first)[1]) != chosen[1]


def test_greedy_mlmoc_does_not_pick_copies_of_one_point():
    """The review's failure: batch MLMOC on a pool where every point appears five times picks
    copies; greedy conditioning on each pick's pseudo-label makes its copies worthless."""
    from ntkal.models import build_model
    from ntkal.training import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    k, d = 3, 5
    centres = 3.0 * torch.randn(k, d, generator=g)
    x_l = torch.cat([centres[c] + 0.5 * torch.randn(4, d, generator=g) for c in range(k)])
    y_l = torch.arange(k).repeat_interleave(4)
    base = torch.cat([centres[c] + 1.5 * torch.randn(8, d, generator=g) for c in range(k)])
    x_c = base.repeat(5, 1)  # every point five times
    torch.manual_seed(0)
    model = build_model("mlp", (d,), k, width=64)
    train(model, x_l, y_l, TrainConfig(epochs=30, batch_size=12, loss="mse", seed=0), num_classes=k)
    context = QueryContext(
        model=model, x_candidates=x_c, x_labelled=x_l, y_labelled=y_l, num_classes=k, seed=0
    )
    budget = 10
    distinct = lambda idx: len({int(i) % base.shape[0] for i in idx})  # noqa: E731
    topk = MLMOC(score="norm").query(context, budget).indices
    greedy = MLMOC(score="norm", selection="greedy").query(context, budget).indices
    assert distinct(topk) <= budget // 2  # the defect: copies of the same few points
    assert distinct(greedy) == budget  # greedy: ten different points
    assert len(set(greedy.tolist())) == budget


def test_selection_and_temperature_are_validated():
    with pytest.raises(ValueError, match="selection"):
        get_strategy("vr", selection="best")
    with pytest.raises(ValueError, match="greedy_target"):
        get_strategy("mlmoc", greedy_target="mode")
    with pytest.raises(ValueError, match="temperature"):
        get_strategy("eer", temperature=0.0)
    with pytest.raises(ValueError, match="error"):
        get_strategy("eer", error="hinge")
    with pytest.raises(ValueError, match="order"):
        get_strategy("emoc", order=0.5)


# ----------------------------------------------------------------------------- behavioural cases
def _rbf_problem():
    """1-D inputs with an RBF kernel: L = one point of each class far away; candidates: a dense
    cluster A of 8 points at ~0 where the network is unsure ([.5, .5]), a cluster B of 8 at ~6
    where it is confident ([1, 0]), and a lone point C at 20 where it is unsure."""
    xs_l = torch.tensor([-10.0, 30.0], dtype=F64)
    a = torch.linspace(-0.3, 0.3, 8, dtype=F64)
    b = 6.0 + torch.linspace(-0.3, 0.3, 8, dtype=F64)
    xs_c = torch.cat([a, b, torch.tensor([20.0], dtype=F64)])
    xs = torch.cat([xs_l, xs_c])
    theta = torch.exp(-0.5 * (xs[:, None] - xs[None, :]) ** 2)
    f0 = torch.cat(
        [
            torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64),
            torch.full((8, 2), 0.5, dtype=F64),
            torch.tensor([[1.0, 0.0]], dtype=F64).repeat(8, 1),
            torch.tensor([[0.5, 0.5]], dtype=F64),
        ]
    )
    y = torch.tensor([0, 1])
    return _lookahead(theta, f0, y, 2, 2), np.arange(0, 8), np.arange(8, 16), 16


def test_variance_reduction_prefers_the_dense_cluster_over_the_outlier():
    la, cluster_a, cluster_b, outlier = _rbf_problem()
    scores, own = VarianceReduction().score_candidates(la)
    # label-free: the two clusters are alike for it (only the outputs differ)
    assert int(np.argmax(scores)) in set(cluster_a) | set(cluster_b)
    np.testing.assert_allclose(scores[cluster_a], scores[cluster_b], rtol=1e-6)
    # the outlier is as uncertain as any cluster point (its own variance is the largest) ...
    assert own[outlier] >= own.max() - 1e-12
    # ... but labelling it reduces the variance of nothing else
    assert scores[outlier] < 0.5 * scores.max()


def test_eer_picks_from_the_dense_uncertain_cluster():
    la, cluster_a, cluster_b, outlier = _rbf_problem()
    scores, _ = EER(temperature=0.1).score_candidates(la)
    assert int(np.argmax(scores)) in set(cluster_a)
    assert scores[cluster_a].min() > max(scores[cluster_b].max(), scores[outlier])


def test_emoc_picks_from_the_dense_uncertain_cluster():
    la, cluster_a, cluster_b, outlier = _rbf_problem()
    scores, _ = EMOC(temperature=0.1).score_candidates(la)
    assert int(np.argmax(scores)) in set(cluster_a)
    # a confident cluster barely moves, the outlier moves only itself
    assert scores[cluster_a].min() > 3 * max(scores[cluster_b].max(), scores[outlier])


@pytest.mark.parametrize("order", [2.0, 3.0])
def test_emoc_order_is_the_norm_of_the_output_change(order):
    """EMOC with order p equals Σ_y p(y|x_j) mean_i ‖Δ_i‖_p from explicit re-solves (kills an
    EMOC that ignores ``order``: the ℓ1 values differ)."""
    theta, f0, y, n, m, k = _problem(seed=3)
    la = _lookahead(theta, f0, y, n, k)
    onehot = torch.nn.functional.one_hot(y, k).to(F64)
    lab, cand = list(range(n)), list(range(n, n + m))
    f_bar = _resolve(theta, f0, lab, onehot, cand, k, False)
    want, l1 = np.zeros(m), np.zeros(m)
    for j in range(m):
        probs = torch.softmax(f0[n + j], dim=0)
        for c in range(k):
            targets = torch.cat([onehot, torch.nn.functional.one_hot(torch.tensor([c]), k).to(F64)])
            delta = _resolve(theta, f0, lab + [n + j], targets, cand, k, False) - f_bar
            want[j] += float(probs[c] * torch.linalg.vector_norm(delta, ord=order, dim=1).mean())
            l1[j] += float(probs[c] * delta.abs().sum(dim=1).mean())
    got, _ = EMOC(order=order).score_candidates(la)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-10)
    assert not np.allclose(got, l1, rtol=1e-3)


def test_greedy_pseudo_targets_include_what_earlier_picks_taught():
    """Each greedy pick after the first is conditioned on softmax(f0 + f̄_t − f̄_0) at that pick
    (greedy_target="expected"): the trained network moved by the batch's earlier pseudo-labels.
    Kills a pseudo-target taken from f0 alone (without the f̄_0 shift)."""
    theta, f0, y, n, _m, k = _problem(seed=5, m=10)
    strategy = MLMOC(selection="greedy", greedy_target="expected")
    la = _lookahead(theta, f0, y, n, k)
    f_bar0 = la.base_predictions()
    seen = []
    condition = la.condition

    def recording(j, target):
        seen.append((j, torch.as_tensor(target).clone(), la.base_predictions()))
        condition(j, target)

    la.condition = recording
    select_greedy(strategy, la, 4, np.random.default_rng(0), "expected")
    assert len(seen) == 3
    shifted = 0
    for j, target, f_bar_t in seen:
        want = torch.softmax(f0[n + j] + f_bar_t[j] - f_bar0[j], dim=0)
        torch.testing.assert_close(target.reshape(-1), want, rtol=1e-12, atol=1e-12)
        shifted += int(not torch.allclose(want, torch.softmax(f0[n + j], dim=0), atol=1e-6))
    assert shifted >= 2
