"""Information criteria in closed form on the eNTK-linearised network: EPIG and BALD.

The linearised network's infinite-time MSE gradient flow is the posterior mean of a Gaussian
process with the empirical NTK Θ as its covariance, and Σ = Θ(E, E) − Θ(E, L) K⁻¹ Θ(L, E) is the
matching posterior covariance (Mohamadi, Bae & Sutherland 2022). With Gaussian observation noise
σ² on the targets, ``y = f(x) + ε``, information quantities are log-determinants of Gaussian
covariances, so no sampling is needed:

* BALD (Houlsby et al. 2011): ``I(y_j; f) = ½ log det(I + Σ_jj / σ²)``, how much a label at
  ``x_j`` tells about the network.
* EPIG (Bickford Smith et al. 2023): ``I(y_j; y*_i) = −½ log det(I − A_i⁻¹ Σ_ij B_j⁻¹ Σ_ji)``
  with ``A_i = Σ_ii + σ² I``, ``B_j = Σ_jj + σ² I``, averaged over the evaluation set E: how much a
  label at ``x_j`` tells about the *predictions* on the pool. For scalar kernels (read as
  ``Θ ⊗ I_k``) it is ``k · −½ log(1 − Σ_ij² / ((Σ_ii + σ²)(Σ_jj + σ²)))``.

Both are label-free; EPIG is density-aware (a candidate correlated with many points of E gains
much, an outlier little) and prediction-oriented (it ignores what a label says about directions
of the network that do not affect E). They are streamed block by block like variance reduction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ntkal.arguments import as_float
from ntkal.lookahead import LookaheadBlock
from ntkal.models.forward import predict_logits
from ntkal.strategies.base import QueryContext
from ntkal.strategies.lookahead import LookaheadStrategy
from ntkal.strategies.output_change import own_variance

__all__ = ["NTKEPIG", "NTKBALD", "epig_scores", "bald_scores", "noise_variance"]

_F64 = torch.float64
#: Smallest σ² as a fraction of the mean posterior variance on E (see :func:`noise_variance`).
NOISE_FLOOR = 1e-3


def _eval_variance(la: Any) -> torch.Tensor:
    """Σ_ii (unclamped) on the evaluation set E: ``(e,)``, or ``(e, k, k)`` for full kernels.

    The one place that reads the engine for it: the public ``posterior_variance(positions)`` of
    the engine interface where present, else each engine's own diagonal of Σ over the candidates.
    """
    if hasattr(la, "on_eval"):
        return la.posterior_variance(la.eval_positions)
    raw = la.posterior_variance() if hasattr(la, "posterior_variance") else la._raw_pivots()
    return la._on_eval(raw)


def _psd_blocks(var: torch.Tensor) -> torch.Tensor:
    """Variances made valid: scalars clamped at 0, ``k × k`` blocks symmetrised with their
    eigenvalues clamped at 0 (cancellation can leave tiny negative values)."""
    var = var.to(_F64)
    if var.ndim == 1:
        return var.clamp_min(0.0)
    evals, evecs = torch.linalg.eigh(0.5 * (var + var.transpose(1, 2)))
    return (evecs * evals.clamp_min(0.0).unsqueeze(1)) @ evecs.transpose(1, 2)


def noise_variance(
    residuals: torch.Tensor | None, eval_variance: torch.Tensor, floor: float = NOISE_FLOOR
) -> float:
    """σ² by the documented rule: the mean squared residual ``(y − f0(x))²`` of the trained
    network on the labelled set (per output, one-hot targets), but at least ``floor`` × the mean
    posterior variance on E (per output), so that an interpolating network or an empty labelled
    set still gives a positive, scale-aware noise."""
    var = eval_variance.to(_F64)
    per_output = var.mean() if var.ndim == 1 else var.diagonal(dim1=1, dim2=2).mean()
    lower = floor * float(per_output.clamp_min(0.0))
    mse = (
        float((residuals.to(_F64) ** 2).mean())
        if residuals is not None and residuals.numel()
        else 0.0
    )
    noise = max(mse, lower)
    return noise if noise > 0 else 1.0


def bald_scores(block: LookaheadBlock, noise: float) -> torch.Tensor:
    """``½ log det(I_k + Σ_jj / σ²)`` per candidate of ``block``, ``(b,)`` (for scalar kernels
    ``k/2 · log(1 + Σ_jj / σ²)``, the ``k`` outputs being independent)."""
    evals = block.pivot_evals.to(_F64).clamp_min(0.0)
    if block.pivot_evecs is None:
        k = block.f_bar_cand.shape[1]
        return 0.5 * k * torch.log1p(evals / noise)
    return 0.5 * torch.log1p(evals / noise).sum(dim=1)


def epig_scores(block: LookaheadBlock, eval_var: torch.Tensor, noise: float) -> torch.Tensor:
    """Mean over E of ``I(y_j; y*_i)`` per candidate of ``block``, ``(b,)``.

    ``eval_var`` is Σ_ii on E (``(e,)`` or ``(e, k, k)``, valid PSD); the candidate's own
    ``Σ_jj`` is the block's (floored) pivot.
    """
    cov = block.cov.to(_F64)
    if block.pivot_evecs is None:
        k = block.f_bar_cand.shape[1]
        a = eval_var.to(_F64) + noise  # (e,)
        b = block.pivot_evals.to(_F64).clamp_min(0.0) + noise  # (b,)
        ratio = (cov**2) / (b[:, None] * a[None, :])
        # Cauchy-Schwarz keeps ratio < 1 for σ² > 0; the clamp only guards rounding.
        ratio = ratio.clamp(0.0, 1.0 - 1e-15)
        return -0.5 * k * torch.log1p(-ratio).mean(dim=1)
    # B_j^{-1/2} = V diag((λ + σ²)^{-1/2}) Vᵀ; A_i^{-1/2} likewise from an eigendecomposition.
    v = block.pivot_evecs.to(_F64)
    b_root = (
        v * (block.pivot_evals.to(_F64).clamp_min(0.0) + noise).rsqrt().unsqueeze(1)
    ) @ v.transpose(1, 2)  # (b, k, k)
    ea, ev = torch.linalg.eigh(eval_var.to(_F64))
    a_root = (ev * (ea.clamp_min(0.0) + noise).rsqrt().unsqueeze(1)) @ ev.transpose(1, 2)
    # cov[t, i] = Σ[x_i, x_jt]; M = A_i^{-1/2} Σ_ij B_j^{-1/2}, I(y_j; y*_i) = −½ log det(I − M Mᵀ)
    mat = a_root.unsqueeze(0) @ cov @ b_root.unsqueeze(1)  # (b, e, k, k)
    sv = torch.linalg.svdvals(mat).clamp(0.0, 1.0 - 1e-8)
    return -0.5 * torch.log1p(-(sv**2)).sum(dim=2).mean(dim=1)


class _Information(LookaheadStrategy):
    """Shared σ² rule and Σ_ii bookkeeping of the closed-form information criteria."""

    #: σ² and Σ_ii on E are read from the whole engine per scoring pass, not from a block.
    supports_executor = False

    def __init__(self, noise: float | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.noise = (
            None if noise is None else as_float(noise, "noise", minimum=0.0, strict_minimum=True)
        )
        # set for the duration of one scoring pass (read by score_block)
        self._noise_used: float | None = None
        self._eval_var: torch.Tensor | None = None

    def lookahead(self, context: QueryContext):
        """The linearised network, with σ² fixed on it (:meth:`noise_for`) from the labelled
        residuals ``Y − f0(L)`` and Σ before any conditioning, so that a greedy batch or a
        sequential session keeps one σ² throughout."""
        la = super().lookahead(context)
        residuals = None
        if self.noise is None and context.x_labelled is not None and context.x_labelled.shape[0]:
            f0 = predict_logits(
                context.model,
                context.x_labelled,
                device=context.device,
                batch_size=context.batch_size,
                out_dtype=_F64,
            ).cpu()
            onehot = torch.nn.functional.one_hot(context.y_labelled.long().cpu(), f0.shape[1]).to(
                _F64
            )
            residuals = onehot - f0
        la._information_noise = self.noise_for(la, residuals)  # type: ignore[attr-defined]
        return la

    def noise_for(self, la: Any, residuals: torch.Tensor | None = None) -> float:
        """σ²: the ``noise`` parameter if given, else :func:`noise_variance` of the labelled
        ``residuals`` and the current Σ_ii on E of ``la``."""
        if self.noise is not None:
            return self.noise
        return noise_variance(residuals, _eval_variance(la))

    def score_candidates(
        self, la: Any, positions: np.ndarray | None = None, f_bar0: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        # Σ_ii on E changes with every conditioning (greedy batches, sequential sessions): read
        # it afresh for each scoring pass; σ² stays the one fixed when the network was built.
        noise = getattr(la, "_information_noise", None)
        self._noise_used = self.noise_for(la) if noise is None else float(noise)
        self._eval_var = _psd_blocks(_eval_variance(la)).to(la.device)
        try:
            return super().score_candidates(la, positions, f_bar0)
        finally:
            self._eval_var = None

    def query(self, context: QueryContext, budget: int):
        result = super().query(context, budget)
        result.info["noise"] = self._noise_used
        return result


class NTKEPIG(_Information):
    """Closed-form EPIG on the eNTK-linearised network: information a label gives about E.

    Scores each candidate ``x_j`` by ``mean_{i∈E} I(y_j; y*_i)``, with Gaussian observation noise
    σ² on the linearised network's posterior Σ (see the module docstring; Bickford Smith, Kirsch,
    Farquhar, Gal, Foster & Rainforth, "Prediction-Oriented Bayesian Active Learning",
    AISTATS 2023, in closed form for the GP that the linearised network is). Label-free and
    density-aware; the secondary score (ties) is the candidate's own variance. With
    ``selection="greedy"`` each pick conditions Σ (as the engine does, on an exact value at the
    pick) before the next is scored, so a batch does not spend its budget on near-copies.

    Parameters
    ----------
    noise : float, optional
        σ². ``None``: the mean squared residual of the trained network on the labelled set (per
        output, one-hot targets), floored at ``1e-3`` × the mean posterior variance on E
        (:func:`noise_variance`); the value used is in ``result.info["noise"]``.
    **settings
        The look-ahead settings and selection of :class:`ntkal.strategies.lookahead.
        LookaheadStrategy` (``kernel``, ``eval_size``, ``engine``, ``selection``, ...).

    References
    ----------
    Bickford Smith et al., AISTATS 2023; Mohamadi, Bae & Sutherland, NeurIPS 2022 (the linearised
    network and Σ); MacKay 1992 (information-based data selection).
    """

    name = "ntk_epig"

    def score_block(
        self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._eval_var is not None and self._noise_used is not None
        scores = epig_scores(block, self._eval_var, self._noise_used)
        return scores.cpu().numpy(), own_variance(block).cpu().numpy()


class NTKBALD(_Information):
    """Closed-form BALD on the eNTK-linearised network: information a label gives about it.

    Scores each candidate ``x_j`` by ``½ log det(I + Σ_jj / σ²)`` (``k/2 · log(1 + Σ_jj / σ²)``
    for scalar kernels), the mutual information between a noisy label and the linearised network
    (Houlsby, Huszár, Ghahramani & Lengyel 2011, "Bayesian Active Learning for Classification and
    Preference Learning", in closed form for the Gaussian posterior). Not density-aware: for
    scalar kernels it ranks like the posterior variance; ``selection="greedy"`` conditions Σ on
    each pick, which spreads a batch.

    Parameters
    ----------
    noise : float, optional
        σ², with the rule of :class:`NTKEPIG`.
    **settings
        As in :class:`NTKEPIG`.
    """

    name = "ntk_bald"

    def score_block(
        self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._noise_used is not None
        scores = bald_scores(block, self._noise_used)
        return scores.cpu().numpy(), own_variance(block).cpu().numpy()
