"""Factorising the labelled-set kernel ``K = Θ(L, L) (+ ridge)``: Cholesky when ``K`` is positive
definite, a truncated eigendecomposition when it is singular (more labelled points than the
kernel's rank), so that the linearised network is retrained to the minimum-norm least-squares fit
gradient flow converges to, not to a jittered interpolant."""
from __future__ import annotations

import warnings

import torch

__all__ = ["robust_cholesky", "labelled_factor"]


def robust_cholesky(k_mat: torch.Tensor, scale: float, max_tries: int = 10
                    ) -> tuple[torch.Tensor, float]:
    """Cholesky factor of ``k_mat``, adding ``jitter · I`` (growing ×10) when it is not numerically
    positive definite. Returns the factor and the absolute jitter added (0.0 if none)."""
    chol, info = torch.linalg.cholesky_ex(k_mat)
    if int(info) == 0:
        return chol, 0.0
    eye = torch.eye(k_mat.shape[0], dtype=k_mat.dtype, device=k_mat.device)
    jitter = 1e-10 * scale
    for _ in range(max_tries):
        chol, info = torch.linalg.cholesky_ex(k_mat + jitter * eye)
        if int(info) == 0:
            return chol, jitter
        jitter *= 10.0
    raise torch.linalg.LinAlgError(
        f"kernel matrix Θ(L, L) is not positive definite even with jitter {jitter / 10:.3g} "
        f"({jitter / 10 / scale:.1g} × mean diagonal); check the kernel for NaNs or use ridge > 0"
    )


def labelled_factor(k_mat: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float]:
    """Cholesky factor of ``K = Θ(L, L) + ridge · mean(diag) · I`` (symmetrised, in place on
    ``k_mat``, which the caller owns) and the jitter added; warns when jitter was needed."""
    k_mat.add_(k_mat.T.clone()).mul_(0.5)
    scale = float(k_mat.diagonal().mean()) if k_mat.numel() else 1.0
    if not scale > 0:
        scale = 1.0
    if ridge > 0:
        k_mat.diagonal().add_(ridge * scale)
    chol, jitter = robust_cholesky(k_mat, scale)
    if jitter > 0:
        warnings.warn(
            f"Θ(L, L) was not numerically positive definite; added jitter {jitter:.3g} "
            f"({jitter / scale:.1g} × its mean diagonal) to the diagonal before the Cholesky "
            "factorisation", RuntimeWarning, stacklevel=4)
    return chol, jitter


