"""Variance reduction: how much a label would shrink the linearised network's posterior variance.

The linearised network's infinite-time MSE gradient flow is kernel (GP-posterior-mean) regression
with the empirical NTK Θ, and Σ = Θ(E, E) − Θ(E, L) K⁻¹ Θ(L, E) is the matching posterior
covariance. Adding ``x_j`` to the training set lowers the posterior variance at every ``x_i`` by

    Σ[i, j]² / Σ_jj                        (scalar kernels, per output)
    tr(Σ[i, j] Σ_jj⁻¹ Σ[j, i])             (full k × k blocks)

whatever its label is, so the total reduction over an evaluation set E is label-free and
density-aware: a candidate correlated with many uncertain points of E reduces much, an outlier
(large Σ_jj, small Σ[i, j]) little. This is the integrated-variance criterion of MacKay (1992) and
Cohn, Ghahramani & Jordan (1996) on the network's tangent-kernel model.
"""

from __future__ import annotations

import numpy as np
import torch

from ntkal.lookahead import LookaheadBlock
from ntkal.strategies.lookahead import LookaheadStrategy
from ntkal.strategies.output_change import own_variance

__all__ = ["VarianceReduction", "variance_reduction"]

_F64 = torch.float64


def variance_reduction(block: LookaheadBlock) -> torch.Tensor:
    """Total reduction of the posterior variance on E from adding each candidate, ``(b,)``."""
    cov = block.cov.to(_F64)
    if block.pivot_evecs is None:
        return cov.square().sum(dim=1) / block.pivot_evals.to(_F64)
    # cov[t, i] = Σ[x_i, x_j] (k × k); Σ_jj⁻¹ = V diag(1/λ) Vᵀ, so the trace is
    # Σ_c ‖Σ[x_i, x_j] v_c‖² / λ_c summed over i.
    proj = cov @ block.pivot_evecs.to(_F64).unsqueeze(1)  # (b, e, k, k)
    return ((proj**2).sum(dim=(1, 2)) / block.pivot_evals.to(_F64)).sum(dim=1)


class VarianceReduction(LookaheadStrategy):
    """Total posterior-variance reduction on E of the eNTK-linearised network (label-free).

    Scores each candidate ``x_j`` by ``Σ_{i∈E} Σ[i, j]² / Σ_jj`` (the trace of the block version for
    full kernels): the sum, over the evaluation set, of how much labelling ``x_j`` would shrink the
    posterior variance of the linearised network (Mohamadi et al., 2022) at ``x_i``. It needs no
    label, so it is usable from the first cycle, and it prefers candidates that stand for many
    uncertain points (density) over isolated ones (outliers), unlike the candidate's own variance
    ``Σ_jj`` (the secondary score, used for ties). With ``selection="greedy"`` the batch is the
    greedy maximiser of the total variance reduction (Σ is conditioned on every pick; the label
    does not matter).

    Parameters
    ----------
    settings, selection, greedy_target, **settings_params
        As in :class:`ntkal.strategies.lookahead.LookaheadStrategy` (``kernel``,
        ``eval_size``, ... flat or in ``settings``).

    References
    ----------
    MacKay, "Information-based objective functions for active data selection", Neural Computation
    1992; Cohn, Ghahramani & Jordan, "Active learning with statistical models", JAIR 1996;
    Mohamadi, Bae & Sutherland, NeurIPS 2022 (the linearised network and Σ).
    """

    name = "vr"
    #: Σ and the trained network's outputs only: proposals do not depend on the labels.
    proposals_use_labels = False
    #: Scalar kernels: Σ[E, J]² and one product, two float64 values per pair.
    scalar_score_bytes_per_pair = 16.0

    def score_block(
        self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        return variance_reduction(block).cpu().numpy(), own_variance(block).cpu().numpy()
