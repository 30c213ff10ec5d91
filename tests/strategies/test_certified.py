"""Certified fp32 selection (strategies/certified.py): MLMOC's picks and picked scores equal the
float64 run's on a small real case (digits, MLP), with near-ties; the intervals hold the float64
values; the pick rule against brute force; where fp32 does not apply the query is float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkal.data import load_dataset
from ntkal.lookahead import Lookahead
from ntkal.models import build_model
from ntkal.strategies import certified
from ntkal.strategies.base import QueryContext
from ntkal.strategies.lookahead import MLMOC
from ntkal.strategies.lookahead_scores import EvalMargins, flips_and_norms, onehot
from ntkal.training import TrainConfig, train


@pytest.fixture(scope="module")
def case():
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("mlp", tuple(ds.in_shape), ds.num_classes, width=48)
    xl, yl = ds.x_train[:40], ds.y_train[:40]
    cfg = TrainConfig(epochs=3, batch_size=64, schedule="constant", seed=0)
    train(model, xl, yl, cfg, num_classes=ds.num_classes)
    return model, xl, yl, ds.x_train[40:240], ds.num_classes


def _ctx(case, xs=None, seed=1):
    model, xl, yl, pool, k = case
    return QueryContext(
        model=model,
        x_candidates=pool if xs is None else xs,
        x_labelled=xl,
        y_labelled=yl,
        num_classes=k,
        seed=seed,
    )


def _pair(ctx, budget, **kw):
    a = MLMOC(engine="streaming", **kw).query(ctx, budget)
    b = MLMOC(engine="streaming", score_precision="fp32", **kw).query(ctx, budget)
    assert a.info["score_precision"] == "float64" and b.info["score_precision"] == "fp32"
    return a, b


def _assert_same(a, b):
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores[a.indices], b.scores[b.indices])
    sa, sb = a.info["secondary_scores"], b.info["secondary_scores"]
    np.testing.assert_array_equal(sa[a.indices], sb[b.indices])


@pytest.mark.parametrize("budget", [1, 5, 20])
@pytest.mark.parametrize("eval_size", [30, "all"])
@pytest.mark.parametrize("score", ["flip", "norm"])
def test_bitwise_same_picks_as_float64(case, budget, eval_size, score):
    # block_size=1: the float64 run and the float64 recomputation run the very same blocks, so
    # every picked score must be bitwise equal, not just close
    for seed in (1, 2) if budget == 5 else (1,):
        a, b = _pair(_ctx(case, seed=seed), budget, score=score, eval_size=eval_size, block_size=1)
        _assert_same(a, b)
        info = b.info["fp32"]
        assert budget <= info["recomputed_float64"] < 200  # most candidates never recomputed
        assert 0 <= info["uncertain_pair_fraction"] < 0.01
        assert info["blocks_fp32"] == 200 and info["blocks_float64"] == 0


def test_same_picks_with_default_blocks(case):
    # with other block shapes the float64 path's own BLAS rounding differs in the last bits
    a, b = _pair(_ctx(case), 20, eval_size=60)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(b.scores[b.indices], a.scores[a.indices], rtol=1e-12, atol=0)
    # the others' scores are float32 estimates, close to float64
    np.testing.assert_allclose(b.info["secondary_scores"], a.info["secondary_scores"], rtol=1e-3)


def test_near_ties(case):
    # every candidate three times, two copies perturbed by 1e-7: exact and near ties in both
    # scores, which only the secondary score or the seeded keys break
    _model, _xl, _yl, pool, _k = case
    base = pool[:60]
    xs = torch.cat([base, base + 1e-7 * torch.randn_like(base), base.clone()])
    for score in ("flip", "norm"):
        for budget in (1, 5, 20):
            a, b = _pair(_ctx(case, xs), budget, score=score, eval_size=50, block_size=1)
            _assert_same(a, b)


def test_greedy_and_sequential_use_it(case):
    ctx = _ctx(case)
    a, b = _pair(ctx, 3, eval_size=40, block_size=1, selection="greedy")
    # the picks are exact; the reported (first-round) scores are exact for the first pick only,
    # the later picks were not candidates for the first round's top 1
    np.testing.assert_array_equal(a.indices, b.indices)
    first = a.indices[0]
    assert a.scores[first] == b.scores[first]
    assert a.info["secondary_scores"][first] == b.info["secondary_scores"][first]
    assert (
        b.info["fp32"]["recomputed_per_round"] and len(b.info["fp32"]["recomputed_per_round"]) == 3
    )
    proposals = {}
    for prec in ("float64", "fp32"):
        s = MLMOC(
            engine="streaming", eval_size=40, block_size=1, score_precision=prec
        ).begin_sequential(ctx)
        s.lookahead._cov_cache = None  # score blocks afresh each step (as when Σ[E, C] is too big)
        got = []
        for _ in range(2):
            pos, sc = s.propose()
            got.append((pos, sc))
            s.observe(pos, 0)
        proposals[prec] = got
    assert proposals["float64"] == proposals["fp32"]


def test_intervals_hold_the_float64_values(case):
    model, xl, yl, pool, k = case
    la = Lookahead.fit(
        model, xl, yl, pool, engine="streaming", eval_size=50, score_precision="fp32"
    )
    fp = la.fp32_blocks()
    ref_eval = la.on_eval(la.f0_candidates)
    ref_cls = ref_eval.argmax(dim=1)
    total_unsure = 0
    for (b32, err), b64 in zip(fp.iter_blocks(None, 40), la.iter_blocks(None, 40)):
        targets = onehot(la.f0_candidates[b32.positions].argmax(dim=1), k)
        margins = EvalMargins(b32.f_bar_eval, ref_cls)
        bb = certified.flip_norm_bounds(b32, err, targets, ref_cls, margins)
        flips, norms = flips_and_norms(b64, targets, ref_cls, margins)
        assert bool(((bb.flips_lo <= flips) & (flips <= bb.flips_hi)).all())
        assert bool(((bb.norms_lo <= norms) & (norms <= bb.norms_hi)).all())
        assert bool(((bb.flips_lo <= bb.flips_est) & (bb.flips_est <= bb.flips_hi)).all())
        assert bool(((bb.norms_lo <= bb.norms_est) & (bb.norms_est <= bb.norms_hi)).all())
        total_unsure += bb.uncertain
    assert total_unsure < 0.01 * la.num_candidates * la.num_eval


def test_could_be_picked_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, budget = int(rng.integers(2, 9)), 0
        budget = int(rng.integers(1, n + 1))
        p_lo = rng.integers(0, 4, n).astype(float)
        p_hi = p_lo + rng.integers(0, 2, n)
        s_lo = rng.integers(0, 3, n).astype(float)
        s_hi = s_lo + rng.integers(0, 2, n)
        keys = rng.random(n)
        mask = certified.could_be_picked(p_lo, p_hi, s_lo, s_hi, keys, budget)
        # brute force: j can be picked iff fewer than budget others surely precede it
        for j in range(n):
            sure = 0
            for i in range(n):
                if i == j:
                    continue
                lo_i, hi_j = (p_lo[i], s_lo[i], -keys[i]), (p_hi[j], s_hi[j], -keys[j])
                sure += lo_i > hi_j
            assert mask[j] == (sure < budget)


def test_float64_where_fp32_does_not_apply(case):
    ctx = _ctx(case)
    for kw in (dict(score="expected"), dict(kernel="full"), dict(engine="dense")):
        opts = dict(engine="streaming", eval_size=20, score_precision="fp32")
        opts.update(kw)
        res = MLMOC(**opts).query(ctx, 2)
        assert res.info["score_precision"] == "float64" and "fp32" not in res.info
