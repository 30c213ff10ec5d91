"""Streaming look-ahead engine: Σ[E, J] for one block of candidates at a time, never Θ(C, C).

With ``L⁺`` the labelled set extended by every conditioned candidate and ``R`` the Cholesky factor
of its kernel (``K + ridge`` on the labelled part, the clamped pivots on the conditioned part),

    V_X = R⁻¹ Θ(L⁺, X),     f̄(X) = f0(X) + V_Xᵀ w,  w = R⁻¹ (Y⁺ − f0(L⁺)),
    Σ[E, J] = Θ(E, J) − V_Eᵀ V_J,

so a block costs one featurisation of ``J`` (a forward and backward pass), the kernel blocks
Θ(E, J) and Θ(L⁺, J) from cached per-example factors of ``E`` and ``L⁺``, a triangular solve and a
GEMM. Conditioning on ``(x_j, y)`` appends one row block to ``R`` (a rank-one Cholesky extension:
new row ``[V_jᵀ, D]`` with ``D Dᵀ`` the clamped Σ_jj), to ``w`` and to ``V_E``, and updates f̄ and
Σ_cc of every candidate from ``Σ[j, C]``; the result equals the dense engine's rank-one update of Σ.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ntkal.lookahead.block import _DTYPE, LabelLike, LookaheadBlock, contiguous_span
from ntkal.lookahead.cholesky import LabelledFactor
from ntkal.lookahead.engine import Lookahead, onehot_targets
from ntkal.lookahead.fp32_blocks import Fp32Blocks, fp32_unavailable_reason
from ntkal.lookahead.settings import LookaheadSettings
from ntkal.lookahead.streamed import StreamedKernels, _RowBuffer

__all__ = ["StreamingLookahead"]

#: Shares of ``max_memory``: cached features of E, the cached ``V_C = R⁻¹ Θ(L⁺, C)``, and the
#: cached Σ[E, C] of a sequential session; whatever is not cached is recomputed per block.
EVAL_FEATURE_SHARE = 0.25
V_CACHE_SHARE = 0.25
COV_CACHE_SHARE = 0.4
#: Share of ``max_memory`` for the candidates' features in a sequential session (with Σ[E, C]).
CAND_FEATURE_SHARE = 0.2


class StreamingLookahead(StreamedKernels, Lookahead):
    """The linearised network with closed-form look-ahead, streamed over candidate blocks.

    Implements :class:`ntkal.lookahead.Lookahead`; built by :meth:`ntkal.lookahead.Lookahead.fit`
    when the dense Σ would not fit or E is much smaller than C. Kernel pieces and memory
    accounting live in :class:`ntkal.lookahead.streamed.StreamedKernels`; the rest stays one
    class (about 360 lines) because construction, blocks and conditioning all read and extend one
    span factor and the caches derived from it, whose consistency is its invariant.

    Parameters
    ----------
    featuriser : ntkal.kernels.Featuriser
        Kernel blocks on demand for the model.
    x_labelled : Tensor
        Labelled inputs ``(n, ...)``.
    y_labelled_onehot : Tensor
        ``(n, k)`` float64 targets.
    x_candidates : Tensor
        Candidates ``(m, ...)`` (kept as given; moved to the model's device one block at a time).
    eval_positions : array of int
        Positions of E in the candidates.
    ridge, eps, block_size, score_precision
        As in :class:`ntkal.lookahead.LookaheadSettings` (``score_precision="fp32"``: see
        :meth:`fp32_blocks`).
    max_memory : int, optional
        Bytes this engine may hold (default: half the free memory of the featuriser's device,
        as :class:`ntkal.lookahead.LookaheadSettings` documents): what is resident (features of L
        and E, ``V_E``, f̄ and Σ_jj
        of every candidate, and the optional caches ``V_C`` / Σ[E, C]) plus one block's working
        set. Caches are kept only within their share of it (``EVAL_FEATURE_SHARE``,
        ``V_CACHE_SHARE``, ``COV_CACHE_SHARE``, ``CAND_FEATURE_SHARE``); otherwise their content
        is recomputed per block.

    Attributes
    ----------
    cached : dict
        Which optional caches are held: ``eval_features``, ``v_candidates``, ``cov``,
        ``candidate_features``.
    """

    engine_name = "streaming"

    def __init__(
        self,
        featuriser,
        x_labelled: torch.Tensor,
        y_labelled_onehot: torch.Tensor,
        x_candidates: torch.Tensor,
        *,
        eval_positions,
        ridge: float = 0.0,
        eps: float = 1e-6,
        block_size: int | None = None,
        max_memory: int | None = None,
        kernel: str = "pseudo",
        score_precision: str = "float64",
    ) -> None:
        if max_memory is None:
            from ntkal.kernels.blocking import default_max_memory

            max_memory = default_max_memory(featuriser.device)
        if ridge < 0 or not math.isfinite(ridge):
            raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if score_precision not in ("float64", "fp32"):
            raise ValueError(
                f"score_precision must be 'float64' or 'fp32', got {score_precision!r}"
            )
        self.featuriser = featuriser
        self.kernel = kernel
        self.score_precision = score_precision
        self._fp32: Fp32Blocks | None = None
        self.ridge = float(ridge)
        self.max_memory = int(max_memory)
        self.jitter = 0.0
        self._x_c = x_candidates
        dev = featuriser.device
        k = featuriser.num_classes
        block = featuriser.block_shape != ()
        self._p = k if block else 1
        self.full_kernel = block
        self.num_classes = k
        self.num_candidates = int(x_candidates.shape[0])
        self.cached = {
            "eval_features": False,
            "v_candidates": False,
            "cov": False,
            "candidate_features": False,
        }
        self._cand_feats = None
        self._feature_rows = self._featurise_rows()
        self.eps = float(eps)
        self._fit_labelled(x_labelled, y_labelled_onehot.to(device=dev, dtype=_DTYPE))
        f0_c, raw_pivots = self._candidate_pass()
        self._init_state(f0_c, eval_positions, block, eps, block_size, dev)
        self.num_labelled = int(x_labelled.shape[0])
        self._fit_eval()
        self._set_pivots(raw_pivots)

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
    ) -> StreamingLookahead:
        """Per-example kernel factors of the model (see :meth:`Lookahead.fit`)."""
        from ntkal.kernels import make_featuriser

        fz = make_featuriser(
            model,
            x_candidates[:1],
            kind=settings.kernel,
            implementation=settings.implementation,
            dtype=_DTYPE,
            n1=len(eval_positions),
            n2=int(x_candidates.shape[0]),
        )
        y = onehot_targets(y_labelled, fz.num_classes, fz.device)
        return cls(
            fz,
            x_labelled,
            y,
            x_candidates,
            eval_positions=eval_positions,
            ridge=settings.ridge,
            eps=settings.eps,
            block_size=settings.block_size,
            max_memory=max_memory,
            kernel=settings.kernel,
            score_precision=settings.score_precision,
        )

    # ------------------------------------------------------------------ construction
    def _fit_labelled(self, x_l: torch.Tensor, y_l: torch.Tensor) -> None:
        """Features of L, the span factor ``R`` of ``K`` (+ ridge; :class:`LabelledFactor`), the
        design Gram ``M`` and the least-squares coefficients ``w``."""
        n, k = int(x_l.shape[0]), self.num_classes
        self._lab_feats = self._features(x_l) if n else []
        self._cond_feats: list = []
        self._cond_proj = torch.zeros(0, 0, dtype=_DTYPE, device=self.featuriser.device)
        dev = self.featuriser.device
        self._basis = None
        if n == 0:
            self._chol = torch.zeros(0, 0, dtype=_DTYPE, device=dev)
            self._gram = torch.zeros(0, 0, dtype=_DTYPE, device=dev)
            self._w = torch.zeros(0, k // self._p, dtype=_DTYPE, device=dev)
            self.f0_labelled = torch.zeros(0, k, dtype=_DTYPE, device=dev)
            return
        f0_l = torch.cat([lg for _, _, lg in self._lab_feats], 0)
        self.f0_labelled = f0_l
        factor = LabelledFactor(
            self._kernel(self._lab_feats, self._lab_feats), self.ridge, self.eps
        )
        self._chol, self._basis, self._gram = factor.chol, factor.basis, factor
        resid = y_l - f0_l
        resid = resid.reshape(n * k, 1) if self.full_kernel else resid
        self._w = factor.coefficients(resid)

    def _candidate_pass(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over every candidate: f0, f̄ and raw Σ_cc; ``V_C`` kept if it fits."""
        m, k, p = self.num_candidates, self.num_classes, self._p
        dev = self.featuriser.device
        n_rows = int(self._chol.shape[0])
        keep_v = n_rows * m * p * 8 <= V_CACHE_SHARE * self.max_memory
        self._v_cand_buf = v_buf = _RowBuffer(n_rows, m * p, dev) if keep_v else None
        self.cached["v_candidates"] = keep_v
        f0 = torch.empty(m, k, dtype=_DTYPE, device=dev)
        self._f_bar = torch.empty(m, k, dtype=_DTYPE, device=dev)
        raw = torch.empty((m, *((p, p) if self.full_kernel else ())), dtype=_DTYPE, device=dev)
        prior = torch.empty_like(raw)
        step = max(1, self._feature_rows)
        diag_sum = 0.0
        for s in range(0, m, step):
            sl = slice(s, min(m, s + step))
            fj = self._features(self._x_c[sl])
            f0[sl] = torch.cat([lg for _, _, lg in fj], 0)
            dj = self._diagonal(fj)
            prior[sl] = dj
            diag_sum += float(
                dj.sum() if not self.full_kernel else dj.diagonal(dim1=1, dim2=2).sum()
            )
            v = self._solve(self._labelled_kernel(fj)) if n_rows else None
            self._update_from_v(sl, v, f0[sl], dj, raw)
            if v_buf is not None and v is not None:  # v is None exactly when n_rows == 0
                v_buf.rows[:, s * p : sl.stop * p] = v
        self._kss_mean_diag = diag_sum / max(1, m * p)
        self._prior = prior
        return f0, raw

    def _update_from_v(
        self,
        sl: slice,
        v: torch.Tensor | None,
        f0: torch.Tensor,
        dj: torch.Tensor,
        raw: torch.Tensor,
    ) -> None:
        b, k, p = sl.stop - sl.start, self.num_classes, self._p
        if v is None:
            self._f_bar[sl] = f0
            raw[sl] = dj
            return
        self._f_bar[sl] = f0 + (v.T @ self._w).reshape(b, k)
        if not self.full_kernel:
            raw[sl] = dj - (v * v).sum(0)
        else:
            vb = v.reshape(v.shape[0], b, p).transpose(0, 1)  # (b, N, p)
            raw[sl] = dj - vb.transpose(1, 2) @ vb

    def _fit_eval(self) -> None:
        """Features of E (if they fit their share) and ``V_E``."""
        fz = self.featuriser
        pos = self.eval_positions.cpu()
        keep = self.num_eval * fz.bytes_per_example <= EVAL_FEATURE_SHARE * self.max_memory
        self._eval_feats = self._features(self._x_c[pos]) if keep else None
        self.cached["eval_features"] = keep
        n_rows = int(self._chol.shape[0])
        self._v_eval_buf = _RowBuffer(n_rows, self.num_eval * self._p, self.device)
        if self._v_cand is not None:
            cols = (pos[:, None] * self._p + torch.arange(self._p)).reshape(-1)
            torch.index_select(self._v_cand, 1, cols.to(self.device), out=self._v_eval)
        elif n_rows:
            at = 0
            for s in range(0, self.num_eval, self._feature_rows):
                fe = self._features(self._x_c[pos[s : s + self._feature_rows]])
                v = self._solve(self._labelled_kernel(fe))
                self._v_eval[:, at : at + v.shape[1]] = v
                at += v.shape[1]
        self._cov_cache: torch.Tensor | None = None

    # ------------------------------------------------------------------ blocks
    def _cov_block(self, jb: torch.Tensor) -> torch.Tensor:
        """Σ[E, J] as an ``(e p, b p)`` matrix."""
        p = self._p
        if self._cov_cache is not None:
            span = contiguous_span(jb)
            if span is not None:  # a view: no copy of the held Σ[E, C]
                return self._cov_cache[:, span.start * p : span.stop * p]
        cols = (jb[:, None] * p + torch.arange(p, device=jb.device)).reshape(-1)
        if self._cov_cache is not None:
            return self._cov_cache.index_select(1, cols)
        fj = self._features(self._x_c[jb.cpu()])
        return self._cov_from_features(fj, self._coords_of(jb, fj))

    def _coords_of(self, jb: torch.Tensor, fj) -> torch.Tensor | None:
        """``V_J`` ``(r, b p)`` of candidates ``jb`` with features ``fj`` (``None`` when the span
        is empty): from the cache, or solved from Θ(L⁺, J)."""
        if not self._chol.shape[0]:
            return None
        if self._v_cand is not None:
            p = self._p
            cols = (jb[:, None] * p + torch.arange(p, device=jb.device)).reshape(-1)
            return self._v_cand.index_select(1, cols)
        return self._solve(self._labelled_kernel(fj))

    def _cov_from_features(self, fj, v: torch.Tensor | None) -> torch.Tensor:
        """Σ[E, J] ``(e p, b p)`` in float64 from the block's features and coordinates (for
        scalar kernels a transposed view of the contiguous Σ[J, E]; see
        :meth:`_kernel_rows_eval` for why)."""
        if not self.full_kernel:
            rows = self._kernel_rows_eval(fj)
            if v is not None:
                rows.addmm_(v.T, self._v_eval, alpha=-1.0)
            return rows.T
        cov = self._kernel_eval(fj)
        if v is not None:
            cov.addmm_(self._v_eval.T, v, alpha=-1.0)
        return cov

    def fp32_blocks(self) -> Fp32Blocks | None:
        """The float32 scoring blocks with their error bound
        (:class:`ntkal.lookahead.fp32_blocks.Fp32Blocks`) when ``score_precision="fp32"`` and
        they can be certified here (scalar kernel with a bounded implementation, Σ[E, C] not
        held); else ``None`` (score in float64)."""
        if self.score_precision != "fp32" or fp32_unavailable_reason(self) is not None:
            return None
        if self._fp32 is None:
            self._fp32 = Fp32Blocks(self)
        return self._fp32

    def _as_block_cov(self, cov: torch.Tensor, b: int) -> torch.Tensor:
        if not self.full_kernel:
            return cov.T  # (b, e)
        e, p = self.num_eval, self._p
        return cov.view(e, p, b, p).permute(2, 0, 1, 3)  # (b, e, c, d)

    def iter_blocks(
        self, positions=None, block_size: int | None = None
    ) -> Iterator[LookaheadBlock]:
        """Yield :class:`LookaheadBlock` s over candidate ``positions`` (default: all),
        ``block_size`` at a time (default :meth:`default_block_size`); each block's Σ[E, J] is
        computed when it is reached and dropped after."""
        js = self._positions(np.arange(self.num_candidates) if positions is None else positions)
        step = max(1, int(block_size)) if block_size else self.default_block_size()
        f_bar_eval, f0_eval = self.on_eval(self._f_bar), self.f0_eval
        for start in range(0, int(js.shape[0]), step):
            jb = js[start : start + step]
            cov = self._as_block_cov(self._cov_block(jb), int(jb.shape[0]))
            yield self._make_block(jb, cov, f_bar_eval, f0_eval, lambda jb=jb: self._coords(jb))

    def _coords(self, jb: torch.Tensor) -> torch.Tensor:
        """Span coordinates ``V_J`` ``(r, b p)`` (from the cache, or recomputed)."""
        p = self._p
        if self._v_cand is not None:
            cols = (jb[:, None] * p + torch.arange(p, device=jb.device)).reshape(-1)
            return self._v_cand.index_select(1, cols)
        if not self._chol.shape[0]:
            return torch.zeros(0, int(jb.shape[0]) * p, dtype=_DTYPE, device=self.device)
        return self._solve(self._labelled_kernel(self._features(self._x_c[jb.cpu()])))

    def _coords_eval(self) -> torch.Tensor:
        return self._v_eval

    # ------------------------------------------------------------------ sequential
    def cache_covariance(self) -> bool:
        """Hold Σ[E, C] (``e p × m p``) when it fits its share of ``max_memory``, so that a
        sequential session's per-step scoring reads it instead of recomputing kernel blocks;
        :meth:`condition` then updates it in place (rank ``p``). Returns whether it is held."""
        if self._cov_cache is not None:
            return True
        e, m, p = self.num_eval, self.num_candidates, self._p
        if 8.0 * e * m * p * p > COV_CACHE_SHARE * self.max_memory:
            return False
        cache = torch.empty(e * p, m * p, dtype=_DTYPE, device=self.device)
        step = self.default_block_size()
        for s in range(0, m, step):
            jb = torch.arange(s, min(m, s + step), device=self.device)
            cache[:, s * p : (s + jb.shape[0]) * p] = self._cov_block(jb)
        self._cov_cache = cache
        self.cached["cov"] = True
        # Each condition() needs Θ(x_j, C): keep the candidates' features too if they fit.
        if m * self.featuriser.bytes_per_example <= CAND_FEATURE_SHARE * self.max_memory:
            self._cand_feats = self._features(self._x_c)
            self.cached["candidate_features"] = True
        return True

    def condition(self, j: int, y: LabelLike) -> None:
        """Add ``(x_j, y)`` to the training set of the linearised network, in closed form.

        Updates f̄ of every candidate by ``Σ[C, j] α + G[C, j] β`` (:mod:`ntkal.lookahead.span`);
        the directions of ``x_j`` outside the labelled span join it: one row block
        ``[V_iᵀ V_jᵀ, Λ^{1/2}]`` appended to the factor, new coordinate rows
        ``Λ^{-1/2} V_iᵀ Σ[j, ·]`` appended to ``V_E`` (and ``V_C`` when cached), Σ_cc and the
        cached Σ[E, C] downdated by them. One featurisation pass over the candidates and
        ``O((n + q) m p²)`` arithmetic; no ``m × m`` matrix. (One function on purpose: the
        update is a single pass over the candidates' features that fills four results at once.)
        """
        jj, target = self._single_target(j, y)
        if bool(self._conditioned_mask[jj]):
            raise ValueError(f"candidate {jj} has already been conditioned on")
        fj = self._features(self._x_c[jj : jj + 1])
        n_rows = int(self._chol.shape[0])
        l_col = (
            self._solve(self._labelled_kernel(fj))
            if n_rows
            else torch.zeros(0, self._p, dtype=_DTYPE, device=self.device)
        )  # V_j (N, p)
        self._condition_on(fj, l_col, self._step(jj, target, l_col), jj, target=target)

    def _condition_on(
        self, fj, l_col: torch.Tensor, step, jj: int | None, target: torch.Tensor | None = None
    ) -> None:
        """The update of :meth:`condition` for a point with features ``fj``, coordinates
        ``l_col`` = V_j and step maps ``step``: candidate ``jj``, or (``None``) an input that is
        not a candidate (:func:`ntkal.lookahead.sharded.condition_on_input`)."""
        p, m = self._p, self.num_candidates
        n_rows = int(self._chol.shape[0])
        use_lev = step.beta is not None and n_rows > 0
        lm = self._span_factor() if use_lev else None
        # Σ[j, E] → new rows of V_E; Σ[j, C] → f̄, Σ_cc (and the caches) of every candidate.
        sig_je = (
            self._kernel(fj, self._eval_feats)
            if self._eval_feats is not None
            else self._kernel_eval(fj).T
        )
        if n_rows:
            sig_je = sig_je - l_col.T @ self._v_eval
        r_e = step.new_rows(sig_je)  # (k_i, e p)
        r_c = torch.empty(r_e.shape[0], m * p, dtype=_DTYPE, device=self.device)
        cols = torch.empty(m * p, p, dtype=_DTYPE, device=self.device)  # Σ[C, j], for relabel
        g_cols = torch.zeros(m * p, p, dtype=_DTYPE, device=self.device) if use_lev else None
        raw = self._raw
        feature_step = max(1, self._feature_rows)
        for s in range(0, m, feature_step):
            sl = slice(s, min(m, s + feature_step))
            fb = (
                [self._cand_feats[s // feature_step]]
                if self._cand_feats is not None
                else self._features(self._x_c[sl])
            )
            sig = self._kernel(fj, fb)  # (p, b p)
            b = sl.stop - sl.start
            if n_rows:
                v = (
                    self._v_cand[:, s * p : sl.stop * p]
                    if self._v_cand is not None
                    else self._solve(self._labelled_kernel(fb))
                )
                sig.addmm_(l_col.T, v, alpha=-1.0)
                if use_lev:  # G[C, j] β
                    g = torch.linalg.solve_triangular(lm, v, upper=False).T @ step.w_j
                    self._f_bar[sl] += (g @ step.beta).reshape(b, self.num_classes)
                    assert g_cols is not None
                    g_cols[s * p : sl.stop * p] = g
            cols[s * p : sl.stop * p] = sig.T
            self._f_bar[sl] += (sig.T @ step.alpha).reshape(b, self.num_classes)
            r = step.new_rows(sig)  # (k_i, b p)
            r_c[:, s * p : sl.stop * p] = r
            if not self.full_kernel:
                raw[sl] -= (r * r).sum(0)
            else:
                rb = r.reshape(r.shape[0], b, p).transpose(0, 1)  # (b, k_i, p)
                raw[sl] -= rb.transpose(1, 2) @ rb
        if self._cov_cache is not None:
            self._cov_cache.addmm_(r_e.T, r_c, alpha=-1.0)
            if jj is not None:
                self._cov_cache[:, jj * p : (jj + 1) * p] = 0.0
                hit = (self.eval_positions == jj).nonzero()
                if hit.numel():
                    i = int(hit[0, 0])
                    self._cov_cache[i * p : (i + 1) * p, :] = 0.0
        w_maps = self._coefficient_maps(step, lm)
        self._w = self._coefficients_after(step, w_maps)
        self._extend_factor(l_col, step, r_e, r_c, fj)
        if jj is not None:
            if target is not None:
                self._remember_condition(jj, target, step, cols, g_cols, w_maps)
            self._conditioned_mask[jj] = True
            self.conditioned.append(jj)
            raw[jj] = 0.0
        else:
            self._last_condition = None
        self._set_pivots(raw)

    def _coefficient_maps(self, step, lm: torch.Tensor | None) -> tuple:
        """How this step moves the coefficients ``w`` (``f̄(X) = f0(X) + V_Xᵀ w``, read only for
        inputs that are not candidates), per unit of β and of α: ``(u_map or None, c_map, old row
        count)``. The candidates' f̄ moves by ``Σ[X, j] α + G[X, j] β`` with
        ``Σ[X, j] α = n_Xᵀ (√λ ⊙ V_indᵀ α)`` (``n_X`` the new coordinate rows: ``c_map α``) and
        ``G[X, j] β = V_Xᵀ L_M⁻ᵀ w_j β`` (``u_map β`` on the old rows); :meth:`relabel_last`
        reuses the maps."""
        u_map = None
        if step.beta is not None and lm is not None and step.w_j is not None:
            u_map = torch.linalg.solve_triangular(lm.T, step.w_j, upper=True)
        return u_map, step.root[:, None] * step.vind.T, int(self._w.shape[0])

    def _coefficients_after(self, step, maps: tuple) -> torch.Tensor:
        """``w`` after this step, in the span coordinates it extends (:meth:`_coefficient_maps`)."""
        u_map, c_map, _ = maps
        w = self._w if u_map is None else self._w + u_map @ step.beta
        c = c_map @ step.alpha  # (k_i, k / p)
        return torch.cat([w, c], 0) if c.shape[0] else w

    def posterior_variance(self, positions=None) -> torch.Tensor:
        """Σ_jj (unclamped) of candidate ``positions`` (default: all), kept for every candidate:
        ``(b,)`` or ``(b, k, k)``."""
        if positions is None:
            return self._raw.clone()
        return self._raw[self._positions(positions)].clone()

    def _extend_factor(self, l_col, step, r_e, r_c, fj) -> None:
        """The conditioned point's independent directions join the span (factor, projections,
        coordinates, features); the design Gram grows in any case."""
        self._grow_span(l_col, step)
        ki = int(step.root.shape[0])
        if not ki:
            return
        n_rows, p = int(self._chol.shape[0]), self._p
        chol = torch.zeros(n_rows + ki, n_rows + ki, dtype=_DTYPE, device=self.device)
        chol[:n_rows, :n_rows] = self._chol
        chol[n_rows:, :n_rows] = (l_col @ step.vind).T
        chol[n_rows:, n_rows:] = torch.diag(step.root)
        self._chol = chol
        rows, cols = self._cond_proj.shape
        proj = torch.zeros(rows + ki, cols + p, dtype=_DTYPE, device=self.device)
        proj[:rows, :cols] = self._cond_proj
        proj[rows:, cols:] = step.vind.T
        self._cond_proj = proj
        self._v_eval_buf.append(r_e)
        if self._v_cand_buf is not None:
            self._v_cand_buf.append(r_c)
        self._cond_feats.extend(fj)

    @property
    def _v_eval(self) -> torch.Tensor:
        return self._v_eval_buf.rows

    @property
    def _v_cand(self) -> torch.Tensor | None:
        return None if self._v_cand_buf is None else self._v_cand_buf.rows

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return (
            f"StreamingLookahead(kernel={self.kernel!r}, n={self.num_labelled}, "
            f"m={self.num_candidates}, e={self.num_eval}, k={self.num_classes}, "
            f"conditioned={len(self.conditioned)}, cached={self.cached})"
        )
