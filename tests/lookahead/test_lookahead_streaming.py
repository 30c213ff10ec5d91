"""The streaming look-ahead engine against the dense one, the evaluation set, and memory budgets."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ntkal.kernels import empirical_ntk, make_featuriser
from ntkal.lookahead import (
    Lookahead,
    StreamingLookahead,
    choose_engine,
    dense_bytes,
    eval_positions_for,
)
from ntkal.strategies.base import QueryContext
from ntkal.strategies.lookahead import MLMOC

F64 = torch.float64


def _setup(seed=0, n=12, m=48, d=6, k=3):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, k)
    )
    x = torch.randn(n + m, d)
    return model, x[:n], torch.randint(0, k, (n,)), x[n:]


def _pair(kernel, eval_size, max_memory=10**8, ridge=0.0, seed=0):
    model, xl, yl, xs = _setup(seed)
    kw = dict(kernel=kernel, eval_size=eval_size, ridge=ridge, eval_seed=3)
    dense = Lookahead.fit(model, xl, yl, xs, engine="dense", **kw)
    stream = Lookahead.fit(model, xl, yl, xs, engine="streaming", max_memory=max_memory, **kw)
    assert isinstance(dense, Lookahead) and isinstance(stream, StreamingLookahead)
    return dense, stream


def _assert_blocks_equal(dense, stream, positions=None, block_size=7):
    bd = list(dense.iter_blocks(positions, block_size))
    bs = list(stream.iter_blocks(positions, block_size))
    assert len(bd) == len(bs)
    for a, b in zip(bd, bs):
        assert torch.equal(a.positions, b.positions)
        assert a.cov.shape == b.cov.shape
        for name in ("cov", "pivot_evals", "f_bar_eval", "f_bar_cand", "f0_eval", "f0_cand"):
            x, y = getattr(a, name), getattr(b, name)
            scale = float(x.abs().max()) + 1e-30
            assert float((x - y).abs().max()) <= 1e-10 * scale, name


def test_featuriser_blocks_equal_empirical_ntk():
    model, xl, _, xs = _setup()
    for kind in ("pseudo", "full", "last_layer"):
        fz = make_featuriser(model, xs, kind=kind)
        fa, _ = fz.featurise(xl)
        fb, logits = fz.featurise(xs)
        want = empirical_ntk(model, xl, xs, kind=kind)
        torch.testing.assert_close(fz.kernel(fa, fb), want, rtol=1e-12, atol=1e-12)
        diag = torch.stack(
            [empirical_ntk(model, xs[i : i + 1], kind=kind)[0, 0] for i in range(12)]
        )
        torch.testing.assert_close(fz.diagonal(fb, chunk=5)[:12], diag, rtol=1e-12, atol=1e-12)
        with torch.no_grad():  # logits of the float64 copy the kernel is computed on
            want_logits = copy.deepcopy(model).double()(xs.double())
        torch.testing.assert_close(logits, want_logits, rtol=1e-12, atol=1e-12)
        assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("kernel", ["pseudo", "trace", "full"])
@pytest.mark.parametrize("eval_size", ["all", 20])
def test_streaming_blocks_equal_dense(kernel, eval_size):
    dense, stream = _pair(kernel, eval_size)
    assert stream.num_eval == (48 if eval_size == "all" else 20)
    _assert_blocks_equal(dense, stream)
    _assert_blocks_equal(dense, stream, positions=[40, 3, 17, 3], block_size=3)


@pytest.mark.parametrize("kernel", ["pseudo", "trace", "full"])
@pytest.mark.parametrize("score", ["flip", "norm", "expected"])
def test_streaming_scores_equal_dense(kernel, score):
    dense, stream = _pair(kernel, 20, ridge=0.05)
    for reference in ("f0", "base"):
        strat = MLMOC(kernel=kernel, score=score, reference=reference, block_size=9)
        pd, sd = strat.score_candidates(dense)
        ps, ss = strat.score_candidates(stream)
        np.testing.assert_allclose(ps, pd, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ss, sd, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kernel", ["pseudo", "full"])
@pytest.mark.parametrize("max_memory", [16_000, 10**8], ids=["nothing-cached", "all-cached"])
def test_sequential_streaming_equals_dense_conditioning(kernel, max_memory):
    """condition() on the streaming engine (Cholesky extension of L) equals the dense rank-one
    update of Σ, with and without the cached features / V_C / Σ[E, C]."""
    dense, stream = _pair(kernel, 20, max_memory=max_memory)
    cached = stream.cache_covariance()
    assert cached == (max_memory > 16_000)
    assert all(stream.cached.values()) == cached and any(stream.cached.values()) == cached
    steps = [(5, 1), (30, 0), (int(stream.eval_positions[2]), 2)]
    for j, y in steps:
        dense.condition(j, y)
        stream.condition(j, y)
        torch.testing.assert_close(
            stream.base_predictions(), dense.base_predictions(), rtol=0, atol=1e-10
        )
        live = np.setdiff1d(np.arange(48), dense.conditioned)
        _assert_blocks_equal(dense, stream, positions=live, block_size=11)
    assert stream.conditioned == dense.conditioned == [j for j, _ in steps]
    live = np.setdiff1d(np.arange(48), dense.conditioned)
    for score in ("flip", "expected"):  # criteria read the held Σ[E, C] as views
        strat = MLMOC(kernel=kernel, score=score, block_size=13)
        for a, b in zip(strat.score_candidates(dense, live), strat.score_candidates(stream, live)):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="already"):
        stream.condition(5, 0)


def test_streaming_conditioned_point_is_interpolated():
    _, stream = _pair("pseudo", "all")
    stream.condition(7, 2)
    torch.testing.assert_close(
        stream.base_predictions()[7], torch.eye(3, dtype=F64)[2], rtol=0, atol=1e-9
    )


# ----------------------------------------------------------------------------- evaluation set
def test_eval_positions_sampling():
    a = eval_positions_for(100, 30, seed=1)
    assert a.size == 30 and np.all(np.diff(a) > 0) and a.max() < 100
    np.testing.assert_array_equal(a, eval_positions_for(100, 30, seed=1))
    assert not np.array_equal(a, eval_positions_for(100, 30, seed=2))
    np.testing.assert_array_equal(eval_positions_for(10, 30), np.arange(10))
    np.testing.assert_array_equal(eval_positions_for(10, "all"), np.arange(10))
    np.testing.assert_array_equal(eval_positions_for(10, 3, positions=[4, 1, 4]), [1, 4])
    for bad in (0, -2, "some", True):
        with pytest.raises(ValueError, match="eval_size"):
            eval_positions_for(10, bad)
    with pytest.raises(ValueError, match="eval_positions"):
        eval_positions_for(10, positions=[3, 10])


@pytest.mark.parametrize("engine", ["dense", "streaming"])
def test_scores_are_measured_on_the_eval_set_only(engine):
    """The flip score over E equals the fraction of E whose class changes under the explicit
    look-ahead on all candidates (dense retrained predictions restricted to E)."""
    model, xl, yl, xs = _setup(1)
    full = Lookahead.fit(model, xl, yl, xs, engine="dense", eval_size="all")
    la = Lookahead.fit(
        model, xl, yl, xs, engine=engine, eval_size=15, eval_seed=5, max_memory=10**8
    )
    e = eval_positions_for(48, 15, seed=5)
    np.testing.assert_array_equal(la.eval_positions.cpu().numpy(), e)
    primary, secondary = MLMOC(score="flip").score_candidates(la)
    ref = full.f0_candidates[e].argmax(1)
    pseudo = full.f0_candidates.argmax(1)
    for j in (0, 11, 47):
        preds = full.retrained_predictions(j, int(pseudo[j]))[e]
        assert primary[j] == pytest.approx(float((preds.argmax(1) != ref).double().mean()))
        want_norm = float((preds - full.base_predictions()[e]).norm(dim=1).sum())
        assert secondary[j] == pytest.approx(want_norm, rel=1e-9)


def test_strategy_passes_eval_size_and_seed():
    model, xl, yl, xs = _setup(2)
    ctx = QueryContext(
        model=model, x_candidates=xs, x_labelled=xl, y_labelled=yl, num_classes=3, seed=4
    )
    la = MLMOC(eval_size=5, max_memory=10**8).lookahead(ctx)
    assert isinstance(la, StreamingLookahead)
    np.testing.assert_array_equal(la.eval_positions.numpy(), eval_positions_for(48, 5, seed=4))
    assert isinstance(MLMOC(eval_size="all").lookahead(ctx), Lookahead)


# ----------------------------------------------------------------------------- memory
def test_engine_rule():
    assert choose_engine(10, 100, 100, 1, 10**9) == "dense"
    assert choose_engine(10, 100, 50, 1, 10**9) == "dense"  # E half the pool: dense
    assert choose_engine(10, 100, 20, 1, 10**9) == "streaming"  # E a small sample
    assert choose_engine(1000, 10_000, 5000, 1, 10**10) == "dense"
    assert choose_engine(1000, 20_000, 5000, 1, 10**11) == "streaming"
    assert choose_engine(1000, 60_000, 5000, 1, 10**12) == "streaming"
    need = dense_bytes(1000, 10_000, 1)
    assert need == 8 * (11_000**2 + 10**7)
    assert choose_engine(1000, 10_000, 10_000, 1, need) == "dense"
    assert choose_engine(1000, 10_000, 10_000, 1, need - 1) == "streaming"
    assert dense_bytes(10, 20, 3) == 8 * 9 * (2 * 30**2 + 200)
    assert choose_engine(10, 100, 50, 1, 10**9, engine="dense") == "dense"
    with pytest.raises(ValueError, match="engine"):
        choose_engine(1, 1, 1, 1, 1, engine="fast")


@pytest.mark.parametrize("budget", [2 * 10**5, 6 * 10**5, 4 * 10**6])
def test_block_size_respects_budget(budget):
    """Resident state plus one block's working set stays within max_memory, and blocks are as
    large as that allows (doubling them would not fit); caches go when they would not fit."""
    _, stream = _pair("pseudo", 20, max_memory=budget)
    b = stream.default_block_size(block_memory=10**12)
    per = stream.block_bytes_per_candidate()
    resident = stream.resident_bytes()
    assert b >= 1
    if b < stream.num_candidates:
        assert resident + b * per <= budget < resident + (b + 1) * per
    # a tighter per-block budget shrinks blocks the same way
    assert stream.default_block_size(block_memory=int(3 * per)) == min(b, 3)
    for key, held in stream.cached.items():
        if key == "eval_features" and held:
            assert 20 * stream.featuriser.bytes_per_example <= 0.25 * budget


def test_streaming_never_builds_candidate_by_candidate_matrices(monkeypatch):
    """No m x m (or C x C kernel) tensor is allocated by the streaming engine."""
    _, stream = _pair("pseudo", 10, max_memory=10**8)
    shapes = []
    real = stream.featuriser.kernel

    def spy(a, b, **kw):
        out = real(a, b, **kw)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(stream.featuriser, "kernel", spy)
    list(stream.iter_blocks(block_size=8))
    stream.condition(3, 1)
    assert shapes and all(min(s[:2]) <= 12 for s in shapes)  # one side is always L, E or J


def test_fit_leaves_model_modes_and_weights_alone():
    model, xl, yl, xs = _setup()
    model.train()
    model[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for engine in ("dense", "streaming"):
        Lookahead.fit(model, xl, yl, xs, engine=engine, eval_size=10)
        assert model.training and not model[1].training and model[0].training
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_streaming_errors():
    model, xl, yl, xs = _setup()
    with pytest.raises(ValueError, match="cannot be applied"):
        Lookahead.fit(model, xl, yl, torch.randn(5, 7), engine="streaming")
    with pytest.raises(ValueError, match="max_memory"):
        Lookahead.fit(model, xl, yl, xs, max_memory=0)
    with pytest.raises(ValueError, match="eval_size"):
        Lookahead.fit(model, xl, yl, xs, eval_size=0)
    with pytest.raises(ValueError, match="ridge"):
        Lookahead.fit(model, xl, yl, xs, engine="streaming", ridge=-1.0)
    with pytest.raises(ValueError, match="num_classes"):
        Lookahead.fit(model, xl, yl, xs, engine="streaming", num_classes=5)
    with pytest.raises(ValueError, match="labels"):
        Lookahead.fit(model, xl, yl + 3, xs, engine="streaming")
    with pytest.raises(IndexError):
        next(Lookahead.fit(model, xl, yl, xs, engine="streaming").iter_blocks([48]))


def test_streaming_clamps_duplicates_without_nan():
    model, xl, yl, xs = _setup()
    xs = torch.cat([xs[:10], xs[:4], xl[:2]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = Lookahead.fit(model, xl, yl, xs, engine="streaming", eval_size="all")
    assert la.num_clamped >= 2
    p, s = MLMOC(score="norm").score_candidates(la)
    assert np.isfinite(p).all() and np.isfinite(s).all()


def test_row_buffer_grows_in_place_and_keeps_every_row():
    """The conditioning factor's row storage: appends past its capacity keep all earlier rows in
    order (a sequential session longer than the spare rows takes this path)."""
    from ntkal.lookahead.streaming import _RowBuffer

    g = torch.Generator().manual_seed(0)
    buf = _RowBuffer(3, 4, torch.device("cpu"), spare=1)
    want = torch.randn(3, 4, generator=g, dtype=torch.float64)
    buf.rows.copy_(want)
    start_capacity = buf.capacity_numel
    for size in (1, 2, 5, 1, 13):
        new = torch.randn(size, 4, generator=g, dtype=torch.float64)
        buf.append(new)
        want = torch.cat([want, new])
        assert torch.equal(buf.rows, want)
    assert buf.rows.shape == (25, 4) and buf.capacity_numel >= 25 * 4 > start_capacity
    capacity = buf.capacity_numel
    buf.append(torch.zeros(0, 4, dtype=torch.float64))
    assert buf.capacity_numel == capacity and torch.equal(buf.rows, want)


@pytest.mark.parametrize("kernel", ["pseudo", "full"])
def test_one_interface_one_row_convention(kernel):
    """Both engines are Lookaheads; retrained predictions have rows on E for both (the same
    values), and both give Σ_jj on the candidates and, through eval_positions, on E."""
    dense, stream = _pair(kernel, 20, ridge=0.01)
    assert isinstance(dense, Lookahead) and isinstance(stream, Lookahead)
    assert dense.num_eval == stream.num_eval == 20
    for la in (dense, stream):
        assert la.retrained_predictions(5, 1).shape == (20, 3)
        assert la.retrained_predictions_batch([5, 9], [1, 0]).shape == (2, 20, 3)
    torch.testing.assert_close(
        stream.retrained_predictions(5, 1), dense.retrained_predictions(5, 1), rtol=1e-9, atol=1e-10
    )
    torch.testing.assert_close(
        stream.posterior_variance(), dense.posterior_variance(), rtol=1e-9, atol=1e-12
    )
    e = dense.eval_positions
    torch.testing.assert_close(
        stream.posterior_variance(e), dense.posterior_variance()[e], rtol=1e-9, atol=1e-12
    )
    # rows on E of the explicit dense look-ahead over every candidate
    full = Lookahead.fit(*_setup(0), kernel=kernel, ridge=0.01, engine="dense", eval_size="all")
    torch.testing.assert_close(
        stream.retrained_predictions(5, 1),
        full.retrained_predictions(5, 1)[e],
        rtol=1e-9,
        atol=1e-10,
    )
    # Σ_jj on a block equals the engine's posterior variance (clamped only when tiny)
    block = next(stream.iter_blocks([5, 9]))
    want = stream.posterior_variance([5, 9])
    got = (
        block.pivot_evals
        if not block.full_kernel
        else block.pivot_evecs
        @ torch.diag_embed(block.pivot_evals)
        @ block.pivot_evecs.transpose(1, 2)
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kernel", ["pseudo", "full"])
@pytest.mark.parametrize("max_memory", [16_000, 10**8], ids=["nothing-cached", "all-cached"])
@pytest.mark.parametrize("engine", ["dense", "streaming"])
def test_relabel_last_equals_conditioning_on_the_new_label(kernel, max_memory, engine):
    """Conditioning on (j, a) then relabelling j to b equals conditioning on (j, b): f̄ and every
    block (Σ does not depend on labels), and a later step continues from the same state."""
    model, xl, yl, xs = _setup()
    kw = dict(kernel=kernel, eval_size=20, eval_seed=3, engine=engine, max_memory=max_memory)
    direct, relabelled = (Lookahead.fit(model, xl, yl, xs, **kw) for _ in range(2))
    for la in (direct, relabelled):
        la.cache_covariance()
        la.condition(5, 1)
    direct.condition(30, 2)
    relabelled.condition(30, 0)
    relabelled.relabel_last(30, 2)
    torch.testing.assert_close(
        relabelled.base_predictions(), direct.base_predictions(), rtol=0, atol=1e-10
    )
    live = np.setdiff1d(np.arange(48), direct.conditioned)
    _assert_blocks_equal(direct, relabelled, positions=live, block_size=11)
    if engine == "streaming":  # the coefficients that inputs outside the candidates are read by
        torch.testing.assert_close(relabelled._w, direct._w, rtol=0, atol=1e-9)
    for la in (direct, relabelled):
        la.condition(11, 0)
    torch.testing.assert_close(
        relabelled.base_predictions(), direct.base_predictions(), rtol=0, atol=1e-10
    )
    with pytest.raises(ValueError, match="conditioned on last"):
        relabelled.relabel_last(30, 1)  # not the last one any more
