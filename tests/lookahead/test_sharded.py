"""Whole-pool look-ahead scoring on executors equals the single-process streaming engine.

The engine-level pieces (blocks of inputs that are not an engine's candidates, conditioning on
such an input) are compared block by block with the engine that has the whole pool as its
candidates; the strategy-level query (scores and picks, top-k and greedy) with
``SerialBlockExecutor`` for several criteria and kernels, and once on two Ray CPU actors.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ntkal.kernels.distributed import SerialBlockExecutor
from ntkal.lookahead import Lookahead, LookaheadSettings
from ntkal.lookahead.sharded import (
    ShardedPool,
    condition_on_input,
    eval_engine,
    outside_blocks,
)
from ntkal.lookahead.span import mean_prior
from ntkal.strategies.auto import Auto
from ntkal.strategies.base import QueryContext
from ntkal.strategies.expected_error import EER
from ntkal.strategies.information import NTKEPIG
from ntkal.strategies.lookahead import MLMOC
from ntkal.strategies.variance_reduction import VarianceReduction

HAVE_RAY = importlib.util.find_spec("ray") is not None
F64 = torch.float64
RTOL = 1e-10


def _net(bias: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8, bias=bias), nn.Tanh(), nn.Linear(8, 3, bias=bias)).double()


def _data(n=10, m=60, seed=1):
    g = torch.Generator().manual_seed(seed)
    xl = torch.randn(n, 4, generator=g, dtype=F64)
    yl = torch.randint(0, 3, (n,), generator=g)
    xc = torch.randn(m, 4, generator=g, dtype=F64)
    return xl, yl, xc


def _close(a, b, rtol=RTOL, scale=0.0):
    """Equal to ``rtol`` of the largest of ``b`` (or of ``scale``, where ``b`` is rounding noise:
    Σ[E, j] of a candidate in the labelled span is zero up to rounding of Θ's size)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if not b.numel():
        return a.numel() == 0
    scale = max(float(b.abs().max()), scale, 1e-300)
    return float((a - b).abs().max()) <= rtol * scale


# ----------------------------------------------------------------------------- engine level
def _engines(kernel: str, eval_size: int = 20):
    net = _net()
    xl, yl, xc = _data()
    settings = LookaheadSettings(kernel=kernel, eval_size=eval_size, engine="streaming")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        whole = Lookahead.fit(net, xl, yl, xc, settings=settings, eval_seed=2)
    pos = whole.eval_positions.numpy()
    y1h = torch.nn.functional.one_hot(yl, 3).to(F64)
    part = eval_engine(net, xl, y1h, xc[pos], settings, int(xc.shape[0]))
    return whole, part, xc


def _compare_blocks(whole, part, xc, positions, fallback):
    js = torch.as_tensor(positions)
    ref = list(whole.iter_blocks(js, block_size=9))
    got = [b for b, _, _ in outside_blocks(part, xc[js], js, fallback=fallback, block_size=9)]
    assert len(ref) == len(got)
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(a.positions, b.positions)
        assert _close(b.cov, a.cov, scale=fallback)
        for name in ("pivot_evals", "f_bar_cand", "f0_cand", "f_bar_eval", "f0_eval"):
            assert _close(getattr(b, name), getattr(a, name)), name
        for name in ("step_a", "step_b", "lev"):
            va, vb = getattr(a, name), getattr(b, name)
            assert (va is None) == (vb is None), name
            if va is not None:
                assert _close(vb, va, 1e-8), name
        if a.pivot_evecs is not None:  # eigenvectors up to sign: compare the projectors
            pa = a.pivot_evecs @ a.pivot_evecs.transpose(1, 2)
            pb = b.pivot_evecs @ b.pivot_evecs.transpose(1, 2)
            assert _close(pb, pa)


@pytest.mark.parametrize("kernel", ["pseudo", "full", "last_layer"])
def test_outside_blocks_and_conditioning_equal_the_whole_pool_engine(kernel):
    whole, part, xc = _engines(kernel)
    m = whole.num_candidates
    fallback = mean_prior(whole._prior)
    _compare_blocks(whole, part, xc, np.arange(m), fallback)
    # condition on a pick outside E and on one inside it, with a class and a soft target
    outside = int(np.setdiff1d(np.arange(m), whole.eval_positions.numpy())[3])
    inside = int(whole.eval_positions[5])
    soft = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    for j, y in ((outside, 1), (inside, soft)):
        target = (
            torch.nn.functional.one_hot(torch.tensor(y), 3).to(F64) if isinstance(y, int) else y
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            whole.condition(j, target)
            condition_on_input(part, xc[j : j + 1], target)
    assert part.rank == whole.rank
    rest = np.setdiff1d(np.arange(m), [outside, inside])
    _compare_blocks(whole, part, xc, rest, fallback)


# ----------------------------------------------------------------------------- queries
def _context(bias=True, zeros=0, m=60):
    xl, yl, xc = _data(m=m)
    if zeros:
        xc[:zeros] = 0.0
    return QueryContext(_net(bias), xc, xl, yl, 3, seed=3)


CASES = {
    "mlmoc": (MLMOC, {}),
    "mlmoc-greedy-expected": (MLMOC, dict(selection="greedy", greedy_target="expected")),
    "mlmoc-norm-base": (MLMOC, dict(score="norm", reference="base", selection="greedy")),
    "mlmoc-full-greedy": (MLMOC, dict(kernel="full", selection="greedy", score="expected")),
    "mlmoc-last-layer-greedy": (MLMOC, dict(kernel="last_layer", selection="greedy")),
    "auto": (Auto, {}),
    "auto-topk": (Auto, dict(selection="topk", eval_size="all")),
    "vr": (VarianceReduction, {}),
    "vr-greedy": (VarianceReduction, dict(selection="greedy")),
    "eer": (EER, {}),
}


def _both(cls, params, ctx, budget=5, executor=None):
    base = dict(engine="streaming", eval_size=25, block_size=7)
    base.update(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = cls(**base).query(ctx, budget)
        got = cls(executor=executor or SerialBlockExecutor(), **base).query(ctx, budget)
    return ref, got


def _assert_same(ref, got):
    np.testing.assert_array_equal(got.indices, ref.indices)
    assert _close(got.scores, ref.scores)
    assert _close(got.info["secondary_scores"], ref.info["secondary_scores"])
    assert got.info["rank"] == ref.info["rank"]
    assert got.info["num_clamped"] == ref.info["num_clamped"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_serial_executor_query_equals_the_single_process_query(case):
    cls, params = CASES[case]
    ref, got = _both(cls, params, _context())
    _assert_same(ref, got)
    if cls is Auto:
        assert got.info["reliability"] == ref.info["reliability"]


def test_zero_prior_candidates_get_the_floor_of_the_whole_pool():
    # A bias-free network has Θ(0, 0) = 0: such a candidate's clamped Σ_jj is eps times the mean
    # prior of every candidate, which the workers learn only after the first pass.
    ctx = _context(bias=False, zeros=3)
    ref, got = _both(VarianceReduction, dict(selection="topk"), ctx)
    _assert_same(ref, got)
    assert ref.info["num_clamped"] >= 3
    assert got.info["secondary_scores"][:3].min() > 0


def test_parts_of_any_size_give_the_same_scores():
    ctx = _context(m=23)
    settings = LookaheadSettings(eval_size=9, engine="streaming")
    strategy = MLMOC(settings=settings)
    scores = []
    for size in (1, 5, 23, 100):
        pool = ShardedPool(
            ctx.model,
            ctx.x_labelled,
            ctx.y_labelled,
            ctx.x_candidates,
            settings,
            SerialBlockExecutor(),
            eval_seed=ctx.seed,
            part_size=size,
        )
        scores.append(pool.score(strategy))
        pool.close()
    for p, s in scores[1:]:
        assert _close(p, scores[0][0]) and _close(s, scores[0][1])


# ----------------------------------------------------------------------------- errors
class _DropsAPart(SerialBlockExecutor):
    def map(self, job, parts):
        for i, out in super().map(job, parts):
            if i != 1:
                yield i, out


def test_bad_input_gets_clear_errors():
    ctx = _context()
    with pytest.raises(TypeError, match="block executor"):
        MLMOC(executor=object())
    with pytest.raises(ValueError, match="cannot score on an executor"):
        NTKEPIG(executor=SerialBlockExecutor())
    with pytest.raises(RuntimeError, match="returned 3 of 4 parts"):
        MLMOC(executor=_DropsAPart(), eval_size=10).query(ctx, 2)
    empty = QueryContext(ctx.model, ctx.x_candidates[:0], ctx.x_labelled, ctx.y_labelled, 3)
    with pytest.raises(ValueError, match="empty"):
        MLMOC(executor=SerialBlockExecutor()).query(empty, 1)
    settings = LookaheadSettings(eval_size=10)
    args = (ctx.model, ctx.x_labelled, ctx.y_labelled)
    with pytest.raises(ValueError, match="empty"):
        ShardedPool(*args, ctx.x_candidates[:0], settings, SerialBlockExecutor())
    with pytest.raises(ValueError, match="part_size"):
        ShardedPool(*args, ctx.x_candidates, settings, SerialBlockExecutor(), part_size=0)
    with pytest.raises(ValueError, match="per-example shape"):
        ShardedPool(*args, torch.zeros(5, 3, dtype=F64), settings, SerialBlockExecutor())
    with pytest.raises(ValueError, match="same length"):
        ShardedPool(
            ctx.model,
            ctx.x_labelled,
            ctx.y_labelled[:3],
            ctx.x_candidates,
            settings,
            SerialBlockExecutor(),
        )
    pool = ShardedPool(*args, ctx.x_candidates, settings, SerialBlockExecutor())
    with pytest.raises(ValueError, match="first scoring pass"):
        pool.score(MLMOC(), [0, 1])
    with pytest.raises(IndexError, match="positions"):
        pool.score(MLMOC(), [0, 60])
    with pytest.raises(ValueError, match="3 values"):
        pool.condition(0, torch.zeros(2))


# ----------------------------------------------------------------------------- on Ray actors
@pytest.fixture(scope="module")
def two_actors():
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'ntkal[ray]')")
    from ntkal.kernels.distributed import RayBlockExecutor

    ex = RayBlockExecutor(workers=2, num_cpus=2)
    try:
        yield ex
    finally:
        ex.close()


def test_ray_actors_give_the_single_process_scores_and_picks(two_actors):
    ctx = _context()
    for cls, params in (CASES["mlmoc"], CASES["auto"]):
        ref, got = _both(cls, params, ctx, budget=4, executor=two_actors)
        _assert_same(ref, got)
        assert got.info["workers"] == 2
