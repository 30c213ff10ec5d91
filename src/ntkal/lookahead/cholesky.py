"""Factorising the labelled-set kernel ``K = Θ(L, L) (+ ridge)``, singular or not.

Gradient flow of the linearised network converges to the minimum-norm least-squares fit
``f̄ = f0 + Θ(·, L) Θ(L, L)⁺ (Y − f0(L))``; when ``L`` outnumbers the kernel's rank (always for
``kernel="last_layer"`` once n > width + 1) ``Θ(L, L)`` is singular, and jitter would turn the fit
into an interpolant it is not. :class:`LabelledFactor` instead picks a basis ``B ⊆ L`` of the
labelled features' span (rows whose Schur residual exceeds ``eps`` times their prior variance, in
order) and works in the orthonormal coordinates ``V_X = R_B⁻¹ Θ(B, X)`` of that span, where
``R_B R_Bᵀ = K_BB``. Then ``Θ(x, L) Θ(L, L)⁺ Θ(L, x') = v_xᵀ v_x'`` and least squares on L is the
ordinary normal equation ``M β = V_L R`` with the design Gram ``M = V_L V_Lᵀ`` (invertible).
When every labelled row is independent this is the plain Cholesky factor (``B = L``,
``M = RᵀR``, ``β = R⁻¹ R``), with the same results as before.
"""

from __future__ import annotations

import torch

__all__ = ["LabelledFactor"]


def _skipping_cholesky(
    k_mat: torch.Tensor, eps: float, diag: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``k_mat`` kept in order while their Schur residual is ``> eps · diag``, and the
    lower-triangular factor of ``k_mat`` on them. Left-looking: a kept row costs one
    ``(N, r)`` matrix-vector product, a skipped one nothing, so ``O(N r²)`` in all (``r`` the
    rank found), cheap when the rank is what is small."""
    n = k_mat.shape[0]
    low = torch.zeros(n, n, dtype=k_mat.dtype, device=k_mat.device)
    resid = diag.clone()
    basis: list[int] = []
    for i in range(n):
        piv = float(resid[i])
        if not piv > eps * float(diag[i]):
            continue
        r = len(basis)
        col = k_mat[:, i] - low[:, :r] @ low[i, :r]
        col = col / piv**0.5
        col[:i] = 0.0
        low[:, r] = col
        resid -= col * col
        basis.append(i)
    idx = torch.tensor(basis, dtype=torch.long, device=k_mat.device)
    return idx, low.index_select(0, idx)[:, : len(basis)]


class LabelledFactor:
    """Coordinates of the labelled features' span and the least-squares fit in them.

    Parameters
    ----------
    k_mat : Tensor
        ``Θ(L, L)`` as an ``(N, N)`` matrix (``N = n p``); symmetrised and ridged in place (the
        caller hands it over).
    ridge : float
        Relative ridge: ``K = Θ + ridge · mean(diag Θ) · I``.
    eps : float
        Relative rank tolerance: a row whose residual given the earlier basis rows is at most
        ``eps`` times its diagonal lies in their span.

    Attributes
    ----------
    chol : Tensor
        ``R_B`` ``(r, r)``, lower triangular.
    basis : Tensor or None
        Rows of ``K`` in the basis (``None``: all of them, the full-rank case).
    rank : int
    """

    def __init__(self, k_mat: torch.Tensor, ridge: float, eps: float) -> None:
        k_mat.add_(k_mat.T.clone()).mul_(0.5)
        scale = float(k_mat.diagonal().mean()) if k_mat.numel() else 1.0
        if ridge > 0 and scale > 0:
            k_mat.diagonal().add_(ridge * scale)
        self.kernel = k_mat
        diag = k_mat.diagonal().clone()
        chol, info = torch.linalg.cholesky_ex(k_mat)
        if int(info) == 0 and bool((chol.diagonal() ** 2 > eps * diag).all()):
            self.chol, self.basis = chol, None
        else:
            self.basis, self.chol = _skipping_cholesky(k_mat, eps, diag)
        self.rank = int(self.chol.shape[0])
        self._gram: torch.Tensor | None = None

    def rows(self, kernel_rows: torch.Tensor) -> torch.Tensor:
        """The basis rows of ``Θ(L, X)`` ``(N, c)``."""
        return kernel_rows if self.basis is None else kernel_rows.index_select(0, self.basis)

    def coordinates(self, kernel_rows: torch.Tensor) -> torch.Tensor:
        """``V_X = R_B⁻¹ Θ(B, X)`` ``(r, c)`` from ``Θ(L, X)`` ``(N, c)``."""
        return torch.linalg.solve_triangular(self.chol, self.rows(kernel_rows), upper=False)

    @property
    def gram(self) -> torch.Tensor:
        """Design Gram ``M = V_L V_Lᵀ`` ``(r, r)`` of the labelled rows in the coordinates."""
        if self._gram is None:
            if self.basis is None:
                self._gram = self.chol.T @ self.chol
            else:
                v_l = self.coordinates(self.kernel)
                self._gram = v_l @ v_l.T
        return self._gram

    def coefficients(self, residuals: torch.Tensor) -> torch.Tensor:
        """Least-squares coefficients ``β = M⁻¹ V_L R`` ``(r, c)`` of residuals ``R`` ``(N, c)``,
        so that ``f̄(X) = f0(X) + V_Xᵀ β``."""
        if self.basis is None:
            return torch.linalg.solve_triangular(self.chol, residuals, upper=False)
        rhs = self.coordinates(self.kernel) @ residuals
        return torch.cholesky_solve(rhs, torch.linalg.cholesky(self.gram))
