"""The look-ahead step of one candidate when it may lie in the labelled features' span.

Retraining on ``L ∪ {(x_j, y)}`` to the minimum-norm least-squares fit (gradient flow's limit)
moves the predictions by ``Σ(x, j) α + G(x, j) β`` with ``r = y − f̄(x_j)``:

* directions of ``x_j`` outside the span (posterior variance ``Σ_jj`` above ``eps`` times the
  prior ``Θ_jj``) are fitted exactly: ``α = Σ_jj⁻¹ r`` (the classic update);
* directions inside it are not: with ``G(x, x') = v_xᵀ M⁻¹ v_x'`` (``M`` the labelled design Gram
  in span coordinates, ``G_jj`` the leverage ``h_j``), ``β = (I + G_jj)⁻¹ r`` and the residual at
  ``x_j`` shrinks to ``r / (1 + h_j)`` (Sherman-Morrison on the normal equations).

For full ``k × k`` blocks both can occur at once; in the eigenbasis ``V`` of ``Σ_jj`` (independent
directions ``i``, eigenvalues ``Λ``; dependent ``d``) and ``H = Vᵀ (I + G_jj) V`` the limit of
ridge regression as the ridge goes to 0 gives ``β = V_d H_dd⁻¹ V_dᵀ r`` and
``α = V_i Λ⁻¹ (V_iᵀ − H_id H_dd⁻¹ V_dᵀ) r``. Both maps are returned as matrices, ``A`` and ``B``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["StepMaps", "step_maps"]


@dataclass
class StepMaps:
    """Per candidate of a block: ``α = A r`` and ``β = B r`` (scalar kernels: ``(b,)`` factors;
    full kernels: ``(b, k, k)`` matrices), which candidates have a dependent direction
    (``dependent`` ``(b,)``), and, for conditioning, the independent directions of ``Σ_jj``
    (``evals`` ``(b, p)``, ``evecs`` ``(b, p, p)``, ``independent`` ``(b, p)``)."""

    a: torch.Tensor
    b: torch.Tensor
    dependent: torch.Tensor
    evals: torch.Tensor
    evecs: Optional[torch.Tensor]
    independent: torch.Tensor


def _floors(prior: torch.Tensor, eps: float, full: bool) -> torch.Tensor:
    if not full:
        return eps * prior
    return eps * prior.diagonal(dim1=1, dim2=2).mean(dim=1)


def dependent_mask(raw: torch.Tensor, prior: torch.Tensor, eps: float) -> torch.Tensor:
    """Candidates with a direction in the labelled span: ``Σ_jj ≤ eps · Θ_jj`` (for blocks: an
    eigenvalue of ``Σ_jj`` at most ``eps`` times the mean prior variance)."""
    if raw.ndim == 1:
        return raw <= _floors(prior, eps, False)
    evals = torch.linalg.eigvalsh(0.5 * (raw + raw.transpose(1, 2)))
    return (evals <= _floors(prior, eps, True)[:, None]).any(dim=1)


def step_maps(raw: torch.Tensor, prior: torch.Tensor, eps: float,
              leverage: Optional[torch.Tensor]) -> StepMaps:
    """Step maps from raw ``Σ_jj`` and prior ``Θ_jj`` (``(b,)`` or ``(b, k, k)``) and the
    leverage ``G_jj`` (same shape; only read where a direction is dependent, may be ``None``
    when none is)."""
    full = raw.ndim == 3
    floor = _floors(prior, eps, full)
    if not full:
        dep = raw <= floor
        lev = torch.zeros_like(raw) if leverage is None else leverage
        a = torch.where(dep, torch.zeros_like(raw), 1.0 / torch.where(dep, 1.0, raw))
        b = torch.where(dep, 1.0 / (1.0 + lev), torch.zeros_like(raw))
        return StepMaps(a, b, dep, raw.unsqueeze(1), None, ~dep.unsqueeze(1))
    evals, vecs = torch.linalg.eigh(0.5 * (raw + raw.transpose(1, 2)))
    ind = evals > floor[:, None]                                      # (b, k)
    dep = ~ind
    k = raw.shape[1]
    eye = torch.eye(k, dtype=raw.dtype, device=raw.device)
    vi, vd = vecs * ind[:, None, :], vecs * dep[:, None, :]
    lam_inv = torch.where(ind, 1.0 / torch.where(ind, evals, 1.0), torch.zeros_like(evals))
    if not bool(dep.any()):
        a = (vi * lam_inv[:, None, :]) @ vecs.transpose(1, 2)
        return StepMaps(a, torch.zeros_like(a), dep.any(dim=1), evals, vecs, ind)
    g = torch.zeros_like(raw) if leverage is None else leverage
    h = vecs.transpose(1, 2) @ (eye + g) @ vecs                         # (b, k, k)
    mask_dd = dep[:, :, None] & dep[:, None, :]
    h_dd = torch.where(mask_dd, h, torch.diag_embed(ind.to(raw.dtype)))  # identity off d
    h_dd_inv = torch.linalg.inv(h_dd)
    h_id = torch.where(ind[:, :, None] & dep[:, None, :], h, torch.zeros_like(h))
    b = vd @ h_dd_inv @ vd.transpose(1, 2)
    inner = vi.transpose(1, 2) - h_id @ h_dd_inv @ vd.transpose(1, 2)   # rows i only
    a = (vecs * lam_inv[:, None, :]) @ inner
    return StepMaps(a, b, dep.any(dim=1), evals, vecs, ind)
