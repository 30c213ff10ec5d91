"""Float32 scoring blocks Σ[E, J] of the streaming engine, with a rigorous entrywise error bound.

With ``score_precision="fp32"`` (:class:`ntkal.lookahead.LookaheadSettings`) the two big GEMMs
of a scoring block, Θ(E, J) and ``V_Eᵀ V_J`` (about 85 % of the arithmetic of a whole-pool MLMOC
query), run in float32 from float32 copies of the float64 per-example features and span
coordinates (those of E made once); f̄, Σ_jj, the step coefficients, Θ(L⁺, J) and ``V_J`` stay
float64. Each block comes with a bound :class:`CovError` ``δ_ij ≥ |Σ32_ij − Σ64_ij|``, where
``Σ64`` is what the float64 engine computes from the same float64 features and coordinates, so a
criterion can certify which of its decisions are the float64 ones
(:mod:`ntkal.strategies.certified`).

The bound. Let ``Θ`` be the exact kernel of the float64 features and ``Σ = Θ(E, J) − V_Eᵀ V_J``
exactly for the stored float64 ``V``. For a computation at unit roundoff ``u``,
:mod:`ntkal.kernels.rounding` gives ``|fl(Θ_ij) − Θ_ij| ≤ κ_u s_i s_j`` with
``s_i ≥ sqrt(Θ_ii)`` from the float64 prior diagonal. The subtraction ``Θ̂ − V_Eᵀ V_J`` is a dot
product of length ``r + 1`` (``r`` rows of ``V``) with inputs rounded to the working precision,
so its error is at most ``γ_{r+3} (|Θ̂_ij| + ‖v_i‖‖v_j‖)`` (Cauchy–Schwarz on ``|v_i|ᵀ|v_j|``)
with ``|Θ̂_ij| ≤ (1 + κ_u) s_i s_j``. Hence, for ``u`` the float32 and the float64 roundoff,

    |Σ̂_u − Σ_ij| ≤ (κ_u + γ_{r+3}(u) (1 + κ_u)) s_i s_j + γ_{r+3}(u) n_i n_j + η_u,

with ``n_i ≥ ‖v_i‖`` (the float64 column norms, enlarged by their own rounding) and ``η_u`` the
underflow slack, and ``δ_ij`` is the sum over both precisions (triangle inequality through
``Σ``): rank two, from four vectors, no GEMM. A block whose float32 inputs leave the normal range
(:func:`ntkal.kernels.rounding.features_in_range`) or whose float32 result is not finite is
computed in float64 instead (``error=None``: exact).

On CUDA the float32 GEMMs run with TF32 off (TF32 rounds inputs to 10 bits, outside the bound).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ntkal.kernels.blocking import _matmul_precision, cast_features
from ntkal.kernels.rounding import (
    UNIT_ROUNDOFF,
    absolute_slack,
    diagonal_roots,
    features_in_range,
    gamma,
    gram_terms,
    kernel_error_constant,
)
from ntkal.lookahead.block import _DTYPE, LookaheadBlock
from ntkal.lookahead.streamed import fill_kernel

#: The engine (:class:`ntkal.lookahead.StreamingLookahead`, which imports this module).
StreamingLookahead = Any

__all__ = ["CovError", "Fp32Blocks", "fp32_unavailable_reason"]

_F32 = torch.float32
_U32, _U64 = UNIT_ROUNDOFF[_F32], UNIT_ROUNDOFF[_DTYPE]


@dataclass
class CovError:
    """Entrywise bound ``δ_ij = coef_s s_i s_j + coef_n n_i n_j + floor`` on
    ``|Σ32_ij − Σ64_ij|`` for ``i`` in E, ``j`` in a block (module docstring).

    Attributes
    ----------
    coef_s, coef_n, floor : float
    s_eval, n_eval : Tensor
        ``(e,)`` float64: bounds on ``sqrt(Θ_ii)`` and ``‖v_i‖`` on E.
    s_cand, n_cand : Tensor
        ``(b,)`` float64: the same for the block's candidates.
    """

    coef_s: float
    coef_n: float
    floor: float
    s_eval: torch.Tensor
    n_eval: torch.Tensor
    s_cand: torch.Tensor
    n_cand: torch.Tensor

    def matrix(self) -> torch.Tensor:
        """``δ`` as a ``(b, e)`` float64 matrix, in the layout of
        :attr:`ntkal.lookahead.LookaheadBlock.cov` (two outer products; elementwise work only),
        enlarged by a relative ``1e-12`` for its own float64 rounding."""
        out = torch.outer(self.s_cand, self.s_eval).mul_(self.coef_s)
        if self.coef_n:
            out.add_(torch.outer(self.n_cand, self.n_eval), alpha=self.coef_n)
        return out.add_(self.floor).mul_(1.0 + 1e-12)


def fp32_unavailable_reason(engine: StreamingLookahead) -> str | None:
    """Why float32 scoring blocks cannot be certified on ``engine`` (``None`` when they can)."""
    if engine.full_kernel:
        return "full k x k kernels are not covered by the bound"
    if gram_terms(engine.featuriser) is None:
        return "the kernel implementation has terms the prior diagonal does not bound"
    if engine._cov_cache is not None:
        return "Σ[E, C] is held in float64"
    return None


class Fp32Blocks:
    """Float32 Σ[E, J] blocks of one :class:`ntkal.lookahead.StreamingLookahead`, with their
    :class:`CovError`. Holds float32 copies of E's features (when the engine caches them) and of
    ``V_E`` (remade when conditioning grows it); see the module docstring for the bound."""

    def __init__(self, engine: StreamingLookahead) -> None:
        reason = fp32_unavailable_reason(engine)
        if reason is not None:
            raise ValueError(f"float32 scoring blocks are not available: {reason}")
        self.engine = engine
        fz = engine.featuriser
        kappa32 = kernel_error_constant(fz, _F32)
        kappa64 = kernel_error_constant(fz, _DTYPE)
        assert kappa32 is not None and kappa64 is not None  # gram_terms checked above
        self.kappa32, self.kappa64 = kappa32, kappa64
        self.num_terms = len(gram_terms(fz) or ())
        prior = engine._prior
        self._s_all = diagonal_roots(prior, kappa64)
        self.s_eval = engine.on_eval(self._s_all)
        feats = engine._eval_feats
        self._eval32 = None
        self.eval_in_range = True
        if feats is not None:
            self._eval32 = [(sl, cast_features(f, _F32), lg) for sl, f, lg in feats]
            self.eval_in_range = all(features_in_range(f) for _, f, _ in self._eval32)
        self._v_eval32: torch.Tensor | None = None
        self._v_rows = -1
        self.blocks_fp32 = 0
        self.blocks_fp64 = 0

    # -- held copies of V_E
    def _eval_coords(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(V_E in float32, bounds on ‖v_i‖, whether V_E is in range)``, remade after
        conditioning added rows."""
        v = self.engine._v_eval
        if self._v_eval32 is None or self._v_rows != int(v.shape[0]):
            self._v_eval32 = v.to(_F32)
            self._n_eval = _column_norms(v)
            self._v_ok = features_in_range(self._v_eval32)
            self._v_rows = int(v.shape[0])
        return self._v_eval32, self._n_eval, self._v_ok

    # -- one block
    def _theta_rows32(self, fj32) -> torch.Tensor:
        """Θ(J, E) ``(b, e)`` in float32 from float32 features (E re-featurised and cast when
        its features are not cached); the block as the rows, as
        :meth:`ntkal.lookahead.StreamingLookahead._kernel_rows_eval` computes it."""
        eng = self.engine
        if self._eval32 is not None:
            return _kernel32(eng, fj32, self._eval32)
        b = sum(sl.stop - sl.start for sl, _, _ in fj32)
        out = torch.empty(b, eng.num_eval, dtype=_F32, device=eng.device)
        for s in range(0, eng.num_eval, eng._feature_rows):
            pos = eng.eval_positions[s : s + eng._feature_rows].cpu()
            fe = [(sl, cast_features(f, _F32), lg) for sl, f, lg in eng._features(eng._x_c[pos])]
            if not all(features_in_range(f) for _, f, _ in fe):
                raise _OutOfRange
            fill_kernel(eng.featuriser, fj32, fe, out[:, s : s + int(pos.shape[0])])
        return out

    def cov_block(
        self, jb: torch.Tensor
    ) -> tuple[torch.Tensor, CovError | None, torch.Tensor | None]:
        """Σ[E, J] ``(e, b)`` (a transposed view of the contiguous Σ[J, E]) for candidates
        ``jb``: float32 with its :class:`CovError`, or float64 and ``None`` when the float32
        inputs or result leave the certified range; and the float64 ``V_J`` (``None`` for an
        empty span)."""
        eng = self.engine
        fj = eng._features(eng._x_c[jb.cpu()])
        n_rows = int(eng._chol.shape[0])
        v = eng._coords_of(jb, fj)  # float64 V_J, as the float64 blocks use
        try:
            cov, err = self._fp32_block(jb, fj, v, n_rows)
            self.blocks_fp32 += 1
            return cov, err, v
        except _OutOfRange:
            self.blocks_fp64 += 1
            return eng._cov_from_features(fj, v), None, v

    def _fp32_block(self, jb, fj, v, n_rows) -> tuple[torch.Tensor, CovError]:
        fj32 = [(sl, cast_features(f, _F32), lg) for sl, f, lg in fj]
        if not (self.eval_in_range and all(features_in_range(f) for _, f, _ in fj32)):
            raise _OutOfRange
        with _matmul_precision("fp32", self.engine.device):
            rows = self._theta_rows32(fj32)
            if n_rows:
                v_e32, _n_eval, v_ok = self._eval_coords()
                v32 = v.to(_F32)
                if not (v_ok and features_in_range(v32)):
                    raise _OutOfRange
                rows.addmm_(v32.T, v_e32, alpha=-1.0)
        # The sum is finite only if every entry is (an overflowing sum of finite entries only
        # sends the block to float64), and reads the block once without a mask.
        if not math.isfinite(float(rows.sum())):
            raise _OutOfRange
        return rows.T, self._error(jb, v, n_rows)

    def _error(self, jb: torch.Tensor, v: torch.Tensor | None, n_rows: int) -> CovError:
        k32, k64 = self.kappa32, self.kappa64
        coef_s, coef_n = k32 + k64, 0.0
        b = int(jb.shape[0])
        zeros_e = torch.zeros(self.engine.num_eval, dtype=_DTYPE, device=self.engine.device)
        n_eval, n_cand = zeros_e, torch.zeros(b, dtype=_DTYPE, device=zeros_e.device)
        if n_rows:
            g32, g64 = gamma(n_rows + 3, _U32), gamma(n_rows + 3, _U64)
            coef_s += g32 * (1.0 + k32) + g64 * (1.0 + k64)
            coef_n = g32 + g64
            _, n_eval, _ = self._eval_coords()
            assert v is not None
            n_cand = _column_norms(v)
        return CovError(
            coef_s=coef_s,
            coef_n=coef_n,
            floor=absolute_slack(self.num_terms + n_rows + 8),
            s_eval=self.s_eval,
            n_eval=n_eval,
            s_cand=self._s_all[jb],
            n_cand=n_cand,
        )

    def iter_blocks(
        self, positions=None, block_size: int | None = None
    ) -> Iterator[tuple[LookaheadBlock, CovError | None]]:
        """``(block, error)`` over candidate ``positions`` (default: all) as
        :meth:`ntkal.lookahead.StreamingLookahead.iter_blocks` yields them, with ``block.cov``
        float32 (``error`` its bound) or float64 (``error=None``)."""
        eng = self.engine
        js = eng._positions(np.arange(eng.num_candidates) if positions is None else positions)
        step = max(1, int(block_size)) if block_size else eng.default_block_size()
        f_bar_eval, f0_eval = eng.on_eval(eng._f_bar), eng.f0_eval
        for start in range(0, int(js.shape[0]), step):
            jb = js[start : start + step]
            cov, err, v = self.cov_block(jb)
            coords = v if v is not None else (lambda jb=jb: eng._coords(jb))
            yield eng._make_block(jb, cov.T, f_bar_eval, f0_eval, coords), err


class _OutOfRange(Exception):
    """Float32 inputs or results outside the range the bound holds in."""


def _column_norms(v: torch.Tensor) -> torch.Tensor:
    """Upper bounds on the column norms of float64 ``v`` ``(r, c)`` (``γ_{r+4}`` of their own
    rounding added)."""
    return torch.linalg.vector_norm(v, dim=0) * (1.0 + gamma(int(v.shape[0]) + 4, _U64))


def _kernel32(engine: StreamingLookahead, fa, fb) -> torch.Tensor:
    """Θ(A, B) ``(a, b)`` in float32 from lists of float32 featurised pieces."""
    a = sum(sl.stop - sl.start for sl, _, _ in fa)
    b = sum(sl.stop - sl.start for sl, _, _ in fb)
    out = torch.empty((a, b), dtype=_F32, device=engine.device)
    fill_kernel(engine.featuriser, fa, fb, out)
    return out
