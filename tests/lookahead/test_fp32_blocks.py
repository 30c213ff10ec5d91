"""Float32 scoring blocks of the streaming engine (lookahead/fp32_blocks.py): the entrywise bound
δ on |Σ32 − Σ64| holds against the float64 blocks (labelled span, conditioned points, with and
without held coordinates), equals its formula, and the setting is validated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkal.kernels.rounding import gamma, kernel_error_constant
from ntkal.lookahead import Lookahead, LookaheadSettings, StreamingLookahead
from ntkal.lookahead import fp32_blocks as fb_mod

U32, U64 = 2.0**-24, 2.0**-53


def _setup(seed=0, n=15, m=90, d=12, k=4):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, k)
    )
    x = torch.randn(n + m, d) * 2.0
    return model, x[:n], torch.randint(0, k, (n,)), x[n:]


def _engine(kernel="pseudo", max_memory=10**8, eval_size=40, **kw):
    model, xl, yl, xs = _setup()
    la = Lookahead.fit(
        model,
        xl,
        yl,
        xs,
        engine="streaming",
        kernel=kernel,
        eval_size=eval_size,
        score_precision="fp32",
        max_memory=max_memory,
        eval_seed=1,
        **kw,
    )
    assert isinstance(la, StreamingLookahead)
    return la


def _check_blocks(la, block_size=16):
    fp = la.fp32_blocks()
    assert fp is not None
    worst = 0.0
    for (b32, err), b64 in zip(fp.iter_blocks(None, block_size), la.iter_blocks(None, block_size)):
        assert b32.cov.dtype == torch.float32 and err is not None
        assert torch.equal(b32.positions, b64.positions)
        diff = (b32.cov.double() - b64.cov).abs()  # (b, e)
        bound = err.matrix()
        assert bound.shape == diff.shape
        assert bool((diff <= bound).all())
        worst = max(worst, float((diff / bound).max()))
    assert worst > 1e-3  # the bound is not absurdly loose
    return fp


@pytest.mark.parametrize("kernel", ["pseudo", "trace", "last_layer"])
def test_bound_holds_entrywise(kernel):
    _check_blocks(_engine(kernel))


def test_bound_holds_without_held_coordinates_and_after_conditioning(monkeypatch):
    from ntkal.lookahead import streaming

    monkeypatch.setattr(streaming, "V_CACHE_SHARE", 0.0)  # hold neither V_C nor E's features
    monkeypatch.setattr(streaming, "EVAL_FEATURE_SHARE", 0.0)
    la = _engine()
    assert not la.cached["v_candidates"] and not la.cached["eval_features"]
    _check_blocks(la)
    la.condition(3, 1)
    la.condition(7, 0)
    fp = _check_blocks(la)
    assert fp._v_rows == la._v_eval.shape[0]  # V_E's float32 copy was remade


def test_bound_equals_its_formula():
    la = _engine()
    fp = la.fp32_blocks()
    jb = torch.arange(5, 12)
    _, err, v = fp.cov_block(jb)
    r = int(la._chol.shape[0])
    k32 = kernel_error_constant(la.featuriser, torch.float32)
    k64 = kernel_error_constant(la.featuriser, torch.float64)
    g32, g64 = gamma(r + 3, U32), gamma(r + 3, U64)
    coef_s = k32 + k64 + g32 * (1 + k32) + g64 * (1 + k64)
    s = la._prior.sqrt()
    s_e, s_j = s[la.eval_positions], s[jb]
    n_e, n_j = la._v_eval.norm(dim=0), v.norm(dim=0)
    want = coef_s * torch.outer(s_j, s_e) + (g32 + g64) * torch.outer(n_j, n_e)
    got = err.matrix()
    assert torch.allclose(got, want, rtol=1e-9, atol=0)


def test_out_of_range_blocks_fall_back_to_float64(monkeypatch):
    la = _engine()
    fp = la.fp32_blocks()
    monkeypatch.setattr(fb_mod, "features_in_range", lambda feats: False)
    ((blk, err),) = list(fp.iter_blocks(range(10), 10))
    (ref,) = list(la.iter_blocks(range(10), 10))
    assert err is None and blk.cov.dtype == torch.float64
    assert torch.equal(blk.cov, ref.cov)
    assert fp.blocks_fp64 == 1


def test_settings_and_availability():
    assert LookaheadSettings().score_precision == "float64"
    assert LookaheadSettings(score_precision="fp32").score_precision == "fp32"
    for bad in ("fp16", "float32", None, True):
        with pytest.raises(ValueError, match="score_precision"):
            LookaheadSettings(score_precision=bad)
    with pytest.raises(ValueError, match="score_precision"):
        LookaheadSettings.build(score_precision="tf32")
    model, xl, yl, xs = _setup()
    la64 = Lookahead.fit(model, xl, yl, xs, engine="streaming", eval_size=20)
    assert la64.fp32_blocks() is None  # not asked for
    full = _engine("full")
    assert full.fp32_blocks() is None  # full kernels: float64
    with pytest.raises(ValueError, match="not available"):
        fb_mod.Fp32Blocks(full)
    la = _engine()
    assert la.fp32_blocks() is not None
    assert la.cache_covariance()
    assert la.fp32_blocks() is None  # Σ[E, C] held in float64
    dense = Lookahead.fit(model, xl, yl, xs, engine="dense", eval_size=20, score_precision="fp32")
    assert not hasattr(dense, "fp32_blocks")  # the dense engine ignores the setting
