"""Dense look-ahead engine: Σ over all candidates held as one ``(m p) × (m p)`` matrix.

The fastest route while ``(n + m)²`` kernel entries fit in memory and the evaluation set is every
candidate (see :func:`ntkal.lookahead.choose_engine`); :class:`ntkal.lookahead.StreamingLookahead`
covers the rest with the same interface, :class:`ntkal.lookahead.Lookahead`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkal.lookahead.block import (
    _DTYPE,
    LabelLike,
    LookaheadBlock,
    as_f64,
    contiguous_span,
    eval_positions_for,
    flatten_blocks,
)
from ntkal.lookahead.cholesky import LabelledFactor
from ntkal.lookahead.engine import Lookahead, onehot_targets
from ntkal.lookahead.settings import LookaheadSettings
from ntkal.lookahead.streamed import _RowBuffer
from ntkal.models.devices import model_device

__all__ = ["DenseLookahead"]


class DenseLookahead(Lookahead):
    """The network linearised at its trained weights, with closed-form look-ahead retraining.

    Build it with :meth:`Lookahead.fit` (computes the empirical NTK of a model) or
    :meth:`Lookahead.from_kernels` (precomputed kernels). All linear algebra is done in float64.

    Parameters
    ----------
    theta_ll, theta_sl, theta_ss : Tensor
        Kernel blocks Θ(L, L) ``(n, n)``, Θ(S, L) ``(m, n)``, Θ(S, S) ``(m, m)`` for a scalar kernel
        (read as ``Θ ⊗ I_k``), or ``(n, n, k, k)``, ``(m, n, k, k)``, ``(m, m, k, k)`` for full blocks.
    f0_labelled, f0_candidates : Tensor
        Network outputs on L ``(n, k)`` and S ``(m, k)`` at the trained weights.
    y_labelled_onehot : Tensor
        Regression targets of L, ``(n, k)`` (one-hot for classification).
    ridge : float
        Relative ridge: ``K = Θ(L, L) + ridge · mean(diag Θ(L, L)) · I``. It regularises the
        labelled-set solve only; a look-ahead point's directions outside the labelled span are
        fitted exactly, as gradient flow would.
    eps : float
        Relative rank tolerance: a labelled row, or a candidate direction, whose posterior
        variance is at most ``eps`` times its prior Θ_jj lies in the labelled span (it is
        retrained by least squares, and its Σ_jj clamped to that floor for variance-based
        criteria, so duplicates give finite scores, never NaN).
    block_size : int, optional
        Candidates per block in batched look-ahead; default from a 256 MiB budget.

    Attributes
    ----------
    jitter : float
        Always 0.0: a singular Θ(L, L) is factorised on a basis of its span, never jittered.
    rank : int
        Dimension of the labelled (and conditioned) features' span.
    conditioned : list of int
        Candidates conditioned on so far by :meth:`condition`, in order.
    num_clamped : int
        Unconditioned candidates with a direction in the labelled span.

    References
    ----------
    Mohamadi, Bae & Sutherland, NeurIPS 2022, Sec. 3 (look-ahead via the linearised network).
    """

    engine_name = "dense"

    def __init__(
        self,
        theta_ll,
        theta_sl,
        theta_ss,
        f0_labelled,
        f0_candidates,
        y_labelled_onehot,
        *,
        ridge: float = 0.0,
        eps: float = 1e-6,
        block_size: int | None = None,
        kernel: str | None = None,
        eval_positions=None,
        _owned: bool = False,
    ) -> None:
        theta_ll = torch.as_tensor(theta_ll)
        device = theta_ll.device
        tensors = {
            name: as_f64(t, name, device)
            for name, t in (
                ("theta_ll", theta_ll),
                ("theta_sl", theta_sl),
                ("theta_ss", theta_ss),
                ("f0_labelled", f0_labelled),
                ("f0_candidates", f0_candidates),
                ("y_labelled_onehot", y_labelled_onehot),
            )
        }
        f0_l, f0_s, y_l, block = self._check_shapes(tensors, ridge, eps)
        m, _k = f0_s.shape
        n = int(f0_l.shape[0])
        self._init_state(
            f0_s,
            None if eval_positions is None else eval_positions_for(m, positions=eval_positions),
            block,
            eps,
            block_size,
            device,
        )
        self.kernel = kernel if kernel is not None else ("full" if block else "scalar")
        self.num_labelled = n
        self.ridge = float(ridge)
        self.f0_labelled = f0_l
        self._sigma = self._own_flat(tensors["theta_ss"], _owned)
        self._prior = self._diagonal_blocks()  # Θ_jj, before conditioning
        self.jitter = 0.0
        if n == 0:
            self._f_bar = f0_s.clone()
            self._v_buf = _RowBuffer(0, m * self._p, device)
            self._gram = torch.zeros(0, 0, dtype=_DTYPE, device=device)
        else:
            self._condition_on_labelled(tensors["theta_ll"], tensors["theta_sl"], f0_l, y_l)
        _symmetrise_(self._sigma)
        self._refresh_pivots()

    @staticmethod
    def _check_shapes(t: dict, ridge: float, eps: float):
        """Validate shapes and options; returns ``(f0_l, f0_s, y_l, block)``."""
        f0_s, f0_l, y_l = t["f0_candidates"], t["f0_labelled"], t["y_labelled_onehot"]
        if f0_s.ndim != 2:
            raise ValueError(f"f0_candidates must be (m, k), got shape {tuple(f0_s.shape)}")
        m, k = f0_s.shape
        n = int(f0_l.shape[0]) if f0_l.ndim >= 1 else 0
        f0_l = f0_l.reshape(n, k) if f0_l.numel() == 0 else f0_l
        y_l = y_l.reshape(n, k) if y_l.numel() == 0 else y_l
        if f0_l.shape != (n, k) or y_l.shape != (n, k):
            raise ValueError(
                f"f0_labelled {tuple(f0_l.shape)} and y_labelled_onehot {tuple(y_l.shape)} must "
                f"both be (n, k) with k = {k} (the width of f0_candidates)"
            )
        ndim = t["theta_ss"].ndim
        if ndim not in (2, 4):
            raise ValueError(
                f"theta_ss must be (m, m) or (m, m, k, k), got {tuple(t['theta_ss'].shape)}"
            )
        block = ndim == 4
        tail = (k, k) if block else ()
        expect = {"theta_ll": (n, n, *tail), "theta_sl": (m, n, *tail), "theta_ss": (m, m, *tail)}
        for name, want in expect.items():
            if name == "theta_ll" and n == 0 and t[name].numel() == 0:
                continue
            if tuple(t[name].shape) != want:
                raise ValueError(f"{name} has shape {tuple(t[name].shape)}, expected {want}")
        if ridge < 0 or not math.isfinite(ridge):
            raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        return f0_l, f0_s, y_l, block

    def _own_flat(self, theta: torch.Tensor, owned: bool) -> torch.Tensor:
        """Θ as a ``(a p, b p)`` matrix this object may modify: the caller's memory when it handed
        it over (``owned``, scalar kernels), else one copy."""
        flat = flatten_blocks(theta) if self.full_kernel else theta
        return flat if owned or not _shares_memory(flat, theta) else flat.clone()

    def _condition_on_labelled(self, theta_ll, theta_sl, f0_l, y_l) -> None:
        """f̄ = f0 + Θ_SL K⁻¹ R and Σ = Θ_SS − Θ_SL K⁻¹ Θ_LS, in place on Σ (one ``(n p, m p)``
        temporary, ``V = L⁻¹ Θ_LS``; no other ``(m p)²`` matrix)."""
        n, (m, k) = int(f0_l.shape[0]), self.f0_candidates.shape
        tll = flatten_blocks(theta_ll) if self.full_kernel else theta_ll
        tll = tll.clone() if _shares_memory(tll, theta_ll) else tll
        tsl = flatten_blocks(theta_sl) if self.full_kernel else theta_sl
        factor = LabelledFactor(tll, self.ridge, self.eps)
        resid = y_l - f0_l  # (n, k)
        resid = resid.reshape(n * k, 1) if self.full_kernel else resid  # (n p, k / p)
        v = factor.coordinates(tsl.T)  # V_S = R_B⁻¹ Θ(B, S)
        w = factor.coefficients(resid)  # least-squares β
        self._f_bar = self.f0_candidates + (v.T @ w).reshape(m, k)
        self._v_buf = _RowBuffer(int(v.shape[0]), int(v.shape[1]), v.device)
        self._v_buf.rows.copy_(v)
        self._gram = factor  # M formed when first needed
        rows = self._sigma.shape[0]
        for r in range(0, rows, 1024):  # row blocks: Σ may be a strided view of the kernel
            self._sigma[r : r + 1024].addmm_(v[:, r : r + 1024].T, v, alpha=-1.0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        x_labelled: torch.Tensor,
        y_labelled,
        x_candidates: torch.Tensor,
        settings: LookaheadSettings,
        *,
        eval_positions: np.ndarray,
        max_memory: int,
        progress: bool = False,
    ) -> DenseLookahead:
        """One symmetric kernel call on ``[L; C]`` (see :meth:`Lookahead.fit`)."""
        from ntkal.kernels import empirical_ntk

        dev = model_device(model)
        n, m = int(x_labelled.shape[0]), int(x_candidates.shape[0])
        x = torch.cat([x_labelled.to(dev), x_candidates.to(dev, dtype=x_labelled.dtype)], dim=0)
        kw: dict[str, Any] = dict(
            kind=settings.kernel,
            implementation=settings.implementation,
            dtype=_DTYPE,
            return_outputs=True,
            max_memory=max_memory,
        )
        if progress:
            kw["progress"] = True
        theta, f, _ = empirical_ntk(model, x, **kw)
        f = f.detach().to(_DTYPE)
        y = onehot_targets(y_labelled, int(f.shape[1]), f.device)
        pos = None if len(eval_positions) == m else eval_positions
        return cls(
            theta[:n, :n],
            theta[n:, :n],
            theta[n:, n:],
            f[:n],
            f[n:],
            y,
            ridge=settings.ridge,
            eps=settings.eps,
            block_size=settings.block_size,
            kernel=settings.kernel,
            eval_positions=pos,
            _owned=True,
        )

    # ------------------------------------------------------------------ pivots (Σ_jj)
    def _diagonal_blocks(self) -> torch.Tensor:
        """Diagonal of the held Σ: ``(m,)``, or the ``(m, k, k)`` blocks."""
        m, p = self.num_candidates, self._p
        if not self.full_kernel:
            return self._sigma.diagonal().clone()
        idx = torch.arange(m, device=self.device)
        return self._sigma.view(m, p, m, p)[idx, :, idx, :].clone()

    def _refresh_pivots(self) -> None:
        self._set_pivots(self._diagonal_blocks())

    def _coords_eval(self) -> torch.Tensor:
        if self._eval_all:
            return self._v
        return self._v.index_select(1, self._cols(self.eval_positions))

    @property
    def _v(self) -> torch.Tensor:
        """Span coordinates of the candidates ``(r, m p)`` (grown in place by conditioning)."""
        return self._v_buf.rows

    def _cols(self, js: torch.Tensor) -> torch.Tensor:
        p = self._p
        return (js[:, None] * p + torch.arange(p, device=js.device)).reshape(-1)

    # ------------------------------------------------------------------ predictions
    @property
    def sigma(self) -> torch.Tensor:
        """Current Σ: ``(m, m)`` for scalar kernels, ``(m, m, k, k)`` for full blocks."""
        if not self.full_kernel:
            return self._sigma
        m, p = self.num_candidates, self._p
        return self._sigma.view(m, p, m, p).permute(0, 2, 1, 3)

    def posterior_variance(self, positions=None) -> torch.Tensor:
        """Diagonal of Σ on candidate ``positions`` (default: all): ``(b,)`` for scalar kernels,
        the ``(b, k, k)`` blocks for full ones."""
        m, p = self.num_candidates, self._p
        idx = (
            torch.arange(m, device=self.device) if positions is None else self._positions(positions)
        )
        if not self.full_kernel:
            return self._sigma.diagonal()[idx].clone()
        return self._sigma.view(m, p, m, p)[idx, :, idx, :].clone()

    def iter_blocks(
        self, positions=None, block_size: int | None = None
    ) -> Iterator[LookaheadBlock]:
        """Yield :class:`LookaheadBlock` s over candidate ``positions`` (default: all),
        ``block_size`` at a time (default :meth:`default_block_size`), with Σ[E, J] read from the
        held Σ (symmetric, so the block's rows are gathered)."""
        js = self._positions(np.arange(self.num_candidates) if positions is None else positions)
        step = max(1, int(block_size)) if block_size else self.default_block_size()
        m, p = self.num_candidates, self._p
        f_bar_eval, f0_eval = self.on_eval(self._f_bar), self.f0_eval
        for start in range(0, int(js.shape[0]), step):
            jb = js[start : start + step]
            span = contiguous_span(jb)
            if not self.full_kernel:
                if span is not None and not self._eval_all:
                    # Σ[E, J] as whole-row segments Σ[i, J] (memcpy speed; a column gather
                    # Σ[J, :][:, E] would touch each row e times), read as (b, e).
                    cov = self._sigma[:, span].index_select(0, self.eval_positions).T
                else:
                    rows = (
                        self._sigma[span] if span is not None else self._sigma.index_select(0, jb)
                    )
                    cov = rows if self._eval_all else rows.index_select(1, self.eval_positions)
            else:
                rows = self._sigma.view(m, p, m, p).index_select(0, jb)  # (b, d, m, c)
                cov = self.on_eval(rows.permute(2, 0, 3, 1)).transpose(0, 1)  # (b, e, c, d)
            yield self._make_block(
                jb, cov, f_bar_eval, f0_eval, lambda jb=jb: self._v.index_select(1, self._cols(jb))
            )

    # ------------------------------------------------------------------ sequential update
    def condition(self, j: int, y: LabelLike) -> None:
        """Add ``(x_j, y)`` to the training set of the linearised network, in closed form.

        ``f̄ ← f̄ + Σ[:, j] α + G[:, j] β`` (:mod:`ntkal.lookahead.span`) and, for the directions
        of ``x_j`` outside the labelled span, ``Σ ← Σ − Σ[:, j] V_i Λ⁻¹ V_iᵀ Σ[j, :]``
        (``O(m² k²)`` with blocks, ``O(m²)`` otherwise), in place on Σ; the span coordinates
        and design Gram grow by those directions: sequential active learning with no SGD between
        queries (Mohamadi et al., 2022, Sec. 3.2), least-squares retraining at any rank.
        """
        jj, target = self._single_target(j, y)
        if bool(self._conditioned_mask[jj]):
            raise ValueError(f"candidate {jj} has already been conditioned on")
        m, p, k = self.num_candidates, self._p, self.num_classes
        jcols = self._cols(torch.tensor([jj], device=self.device))
        v_j = self._v.index_select(1, jcols)  # (r, p)
        step = self._step(jj, target, v_j)
        cols = self._sigma[:, jj * p : (jj + 1) * p].clone()  # (m p, p)
        self._f_bar.add_((cols @ step.alpha).reshape(m, k))
        g_cols = None
        if step.beta is not None:
            g_cols = (
                torch.linalg.solve_triangular(self._span_factor(), self._v, upper=False).T
                @ step.w_j
            )  # G[:, j]
            self._f_bar.add_((g_cols @ step.beta).reshape(m, k))
        self._remember_condition(jj, target, step, cols, g_cols)
        t = step.new_rows(cols.T)  # (k_i, m p)
        if t.shape[0]:
            self._sigma.addmm_(t.T, t, alpha=-1.0)
            if self.full_kernel:
                _symmetrise_(self._sigma)
        self._grow_span(v_j, step)
        self._v_buf.append(t)
        self._sigma[jj * p : (jj + 1) * p, :] = 0.0
        self._sigma[:, jj * p : (jj + 1) * p] = 0.0
        self._conditioned_mask[jj] = True
        self.conditioned.append(jj)
        self._refresh_pivots()

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return (
            f"DenseLookahead(kernel={self.kernel!r}, n={self.num_labelled}, m={self.num_candidates}, "
            f"k={self.num_classes}, ridge={self.ridge}, jitter={self.jitter:.3g}, "
            f"conditioned={len(self.conditioned)}, clamped={self.num_clamped})"
        )


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _symmetrise_(mat: torch.Tensor, chunk: int = 1024) -> None:
    """``mat ← (mat + matᵀ) / 2`` in place, block by block (temporaries of ``chunk²``)."""
    n = mat.shape[0]
    for i in range(0, n, chunk):
        ri = slice(i, min(n, i + chunk))
        blk = mat[ri, ri]
        blk.copy_(0.5 * (blk + blk.T))
        for j in range(i + chunk, n, chunk):
            rj = slice(j, min(n, j + chunk))
            avg = 0.5 * (mat[ri, rj] + mat[rj, ri].T)
            mat[ri, rj] = avg
            mat[rj, ri] = avg.T
