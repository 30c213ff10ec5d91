"""LabelledFactor: span coordinates of the labelled features, at full rank and below it."""

from __future__ import annotations

import torch

from ntkal.lookahead.cholesky import LabelledFactor

F64 = torch.float64


def _low_rank(n=12, rank=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, rank, generator=g, dtype=F64)
    return feats @ feats.T, feats


def test_full_rank_is_the_plain_cholesky_factor():
    k, _ = _low_rank(6, 9)
    factor = LabelledFactor(k.clone(), 0.0, 1e-6)
    assert factor.basis is None and factor.rank == 6
    torch.testing.assert_close(factor.chol, torch.linalg.cholesky(k))
    torch.testing.assert_close(factor.gram, factor.chol.T @ factor.chol)


def test_rank_deficient_basis_spans_every_row():
    """Rank 5 of 12: five basis rows, R_B R_Bᵀ = K_BB, and the coordinates reproduce K
    (V_Lᵀ V_L = K: an orthonormal basis of the span)."""
    k, _ = _low_rank()
    factor = LabelledFactor(k.clone(), 0.0, 1e-6)
    assert factor.rank == 5 and factor.basis.tolist() == [0, 1, 2, 3, 4]
    b = factor.basis
    torch.testing.assert_close(factor.chol @ factor.chol.T, k[b][:, b], rtol=1e-10, atol=1e-10)
    v = factor.coordinates(k)
    torch.testing.assert_close(v.T @ v, k, rtol=1e-9, atol=1e-9)
    # least squares: coefficients give the pinv fit on the labelled rows
    y = torch.randn(12, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    fit = v.T @ factor.coefficients(y)
    torch.testing.assert_close(
        fit, k @ torch.linalg.pinv(k, rtol=1e-10, hermitian=True) @ y, rtol=1e-8, atol=1e-9
    )


def test_duplicate_rows_are_skipped_in_order():
    k, _ = _low_rank(8, 8, seed=1)
    idx = torch.tensor([0, 1, 2, 1, 3, 4, 0, 5, 6, 7])
    dup = k[idx][:, idx]
    factor = LabelledFactor(dup.clone(), 0.0, 1e-6)
    assert factor.basis.tolist() == [0, 1, 2, 4, 5, 7, 8, 9]
