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

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ntkal.lookahead.block import _DTYPE, LookaheadBlock

if TYPE_CHECKING:
    from ntkal.lookahead.cholesky import LabelledFactor

__all__ = [
    "StepMaps",
    "BlockRows",
    "step_maps",
    "dependent_mask",
    "clamp_pivots",
    "mean_prior",
    "warn_clamped",
    "LabelledSpan",
]


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
    evecs: torch.Tensor | None
    independent: torch.Tensor


@dataclass
class BlockRows:
    """Per-candidate values of a block: raw and prior Σ_jj, clamped pivots (eigenvectors for
    blocks), whether clamped, f̄ and f0 ``(b, k)``."""

    raw: torch.Tensor
    prior: torch.Tensor
    pivot: torch.Tensor
    evecs: torch.Tensor | None
    clamped: torch.Tensor
    f_bar: torch.Tensor
    f0: torch.Tensor


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


def step_maps(
    raw: torch.Tensor, prior: torch.Tensor, eps: float, leverage: torch.Tensor | None
) -> StepMaps:
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
    ind = evals > floor[:, None]  # (b, k)
    dep = ~ind
    k = raw.shape[1]
    eye = torch.eye(k, dtype=raw.dtype, device=raw.device)
    vi, vd = vecs * ind[:, None, :], vecs * dep[:, None, :]
    lam_inv = torch.where(ind, 1.0 / torch.where(ind, evals, 1.0), torch.zeros_like(evals))
    if not bool(dep.any()):
        a = (vi * lam_inv[:, None, :]) @ vecs.transpose(1, 2)
        return StepMaps(a, torch.zeros_like(a), dep.any(dim=1), evals, vecs, ind)
    g = torch.zeros_like(raw) if leverage is None else leverage
    h = vecs.transpose(1, 2) @ (eye + g) @ vecs  # (b, k, k)
    mask_dd = dep[:, :, None] & dep[:, None, :]
    h_dd = torch.where(mask_dd, h, torch.diag_embed(ind.to(raw.dtype)))  # identity off d
    h_dd_inv = torch.linalg.inv(h_dd)
    h_id = torch.where(ind[:, :, None] & dep[:, None, :], h, torch.zeros_like(h))
    b = vd @ h_dd_inv @ vd.transpose(1, 2)
    inner = vi.transpose(1, 2) - h_id @ h_dd_inv @ vd.transpose(1, 2)  # rows i only
    a = (vecs * lam_inv[:, None, :]) @ inner
    return StepMaps(a, b, dep.any(dim=1), evals, vecs, ind)


def mean_prior(prior: torch.Tensor) -> float:
    """Mean prior variance of candidates: of ``Θ_jj`` ``(b,)``, or of the diagonals of the
    ``(b, k, k)`` blocks; 0 for none. The fallback of :func:`clamp_pivots`."""
    if not prior.numel():
        return 0.0
    return float(prior.mean() if prior.ndim == 1 else prior.diagonal(dim1=1, dim2=2).mean())


def clamp_pivots(
    raw: torch.Tensor, prior: torch.Tensor, eps: float, fallback: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Σ_jj clamped from below at ``eps · Θ_jj`` for variance-based criteria: ``(pivots, evecs,
    clamped)`` (scalar kernels: values ``(b,)`` and ``None``; blocks: eigenvalues ``(b, k)`` and
    eigenvectors, the floor ``eps`` times the block's mean prior variance). A candidate with zero
    prior variance (e.g. all features 0) gets ``eps · fallback`` (``fallback``: the mean prior of
    every candidate, :func:`mean_prior`; ``eps`` if that is 0), so that a score divides by
    something positive; ``fallback`` is the one value that depends on the whole candidate set."""
    full = raw.ndim == 3
    per = prior if not full else prior.diagonal(dim1=1, dim2=2).mean(dim=1)
    floor = eps * per
    floor = torch.where(floor > 0, floor, eps * (fallback if fallback > 0 else 1.0))
    if not full:
        return torch.maximum(raw, floor), None, raw <= floor
    evals, evecs = torch.linalg.eigh(0.5 * (raw + raw.transpose(1, 2)))
    clamped = (evals <= floor[:, None]).any(dim=1)
    return torch.maximum(evals, floor[:, None]), evecs, clamped


def warn_clamped(count: int, eps: float, stacklevel: int = 2) -> None:
    """The warning that ``count`` candidates lie in the labelled features' span."""
    warnings.warn(
        f"{count} candidate(s) lie in the span of the labelled features (Σ_jj <= "
        f"{eps:g} × Θ_jj): their look-ahead is least-squares retraining, not "
        "interpolation, and their Σ_jj is clamped to that floor for variance-based "
        "scores",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


class LabelledSpan:
    """The engines' shared state about the span of the labelled (and conditioned) features: raw
    and clamped Σ_jj, which candidates lie in the span, the design Gram ``M`` and its factor, the
    leverage kernel ``G = Vᵀ M⁻¹ V`` of a block, and the conditioning step. Mixed into
    :class:`ntkal.lookahead.Lookahead`; an engine provides ``_coords_eval`` (``V_E``) and sets
    ``_raw``, ``_prior``, ``_gram``, ``_f_bar``."""

    full_kernel: bool
    eps: float
    num_classes: int
    device: torch.device
    f0_candidates: torch.Tensor
    _p: int
    _raw: torch.Tensor
    _prior: torch.Tensor
    _pivot: torch.Tensor
    _pivot_evecs: torch.Tensor | None
    _clamped: torch.Tensor
    _clamp_warned: bool
    _conditioned_mask: torch.Tensor
    _gram: torch.Tensor | LabelledFactor
    _gram_chol: torch.Tensor | None
    _w_eval: torch.Tensor | None
    _f_bar: torch.Tensor
    conditioned: list[int]
    _last_condition: _LastCondition | None

    if TYPE_CHECKING:

        @property
        def num_eval(self) -> int: ...

        @property
        def num_candidates(self) -> int: ...

        def _single_target(self, j: int, y) -> tuple[int, torch.Tensor]: ...

        def _coords_eval(self) -> torch.Tensor: ...

    # -- pivots (Σ_jj) and the labelled span
    def _raw_pivots(self) -> torch.Tensor:
        """Unclamped Σ_jj of every candidate (``(m,)`` or ``(m, k, k)``)."""
        return self._raw

    def _set_pivots(self, raw: torch.Tensor) -> None:
        """Keep raw Σ_jj, mark candidates in the labelled span (Σ_jj ≤ eps · Θ_jj, per direction
        for blocks) and clamp Σ_jj from below at ``eps · Θ_jj`` for variance-based criteria
        (:func:`clamp_pivots`, with the mean prior over every candidate as its fallback); warn
        once per object when a candidate lies in the span."""
        self._raw = raw
        live = ~self._conditioned_mask
        self._pivot, self._pivot_evecs, clamped = clamp_pivots(
            raw, self._prior, self.eps, mean_prior(self._prior)
        )
        self._clamped = clamped & live
        count = int(self._clamped.sum())
        if count and not self._clamp_warned:
            self._clamp_warned = True
            warn_clamped(count, self.eps, stacklevel=5)

    @property
    def num_clamped(self) -> int:
        """Unconditioned candidates with a direction in the labelled span (Σ_jj clamped)."""
        return int(self._clamped.sum())

    @property
    def rank(self) -> int:
        """Dimension of the span of the labelled (and conditioned) features (rows of Θ's
        flattened ``(point, class)`` index for full kernels)."""
        gram = self._gram
        return int(gram.shape[0]) if isinstance(gram, torch.Tensor) else int(gram.rank)

    def _design_gram(self) -> torch.Tensor:
        """The design Gram ``M`` ``(r, r)``; an engine may set ``_gram`` to its
        :class:`ntkal.lookahead.cholesky.LabelledFactor`, whose ``M`` is then formed only when
        first needed (a candidate in the span, or conditioning)."""
        if not isinstance(self._gram, torch.Tensor):
            self._gram = self._gram.gram
        return self._gram

    def _span_factor(self) -> torch.Tensor:
        """Cholesky factor of the design Gram ``M`` (cached until the next conditioning)."""
        if self._gram_chol is None:
            gram = self._design_gram()
            self._gram_chol = torch.linalg.cholesky(0.5 * (gram + gram.T))
        return self._gram_chol

    def _leverage(self, v_j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``G[E, J]`` in block layout and ``G_jj`` from the coordinates ``V_J`` ``(r, b p)``."""
        lm = self._span_factor()
        if self._w_eval is None:
            self._w_eval = torch.linalg.solve_triangular(lm, self._coords_eval(), upper=False)
        w_j = torch.linalg.solve_triangular(lm, v_j, upper=False)
        flat = self._w_eval.T @ w_j  # (e p, b p)
        p = self._p
        b = v_j.shape[1] // p
        if not self.full_kernel:
            return flat.T, (w_j * w_j).sum(0)
        wb = w_j.reshape(w_j.shape[0], b, p).permute(1, 2, 0)  # (b, p, r)
        return flat.view(self.num_eval, p, b, p).permute(2, 0, 1, 3), wb @ wb.transpose(1, 2)

    def _make_block(
        self,
        jb: torch.Tensor,
        cov: torch.Tensor,
        f_bar_eval: torch.Tensor,
        f0_eval: torch.Tensor,
        v_j=None,
    ) -> LookaheadBlock:
        """The block for candidates ``jb``; ``v_j``: their coordinates ``(r, b p)`` or a callable
        giving them (needed only when a candidate lies in the span)."""
        evecs = None
        if self.full_kernel:
            assert self._pivot_evecs is not None  # set by _set_pivots for full kernels
            evecs = self._pivot_evecs[jb]
        rows = BlockRows(
            raw=self._raw[jb],
            prior=self._prior[jb],
            pivot=self._pivot[jb],
            evecs=evecs,
            clamped=self._clamped[jb],
            f_bar=self._f_bar[jb],
            f0=self.f0_candidates[jb],
        )
        return self._block_from_rows(jb, cov, rows, f_bar_eval, f0_eval, v_j)

    def _block_from_rows(
        self,
        positions: torch.Tensor,
        cov: torch.Tensor,
        rows: BlockRows,
        f_bar_eval: torch.Tensor,
        f0_eval: torch.Tensor,
        v_j=None,
    ) -> LookaheadBlock:
        """The block of inputs whose per-candidate values are ``rows`` (candidates of this
        engine, or inputs it scores from outside, :mod:`ntkal.lookahead.sharded`)."""
        step_a = step_b = lev = None
        if bool(rows.clamped.any()):
            coords = v_j() if callable(v_j) else v_j
            lev, g = self._leverage(coords)
            maps = step_maps(rows.raw, rows.prior, self.eps, g)
            step_a, step_b = maps.a, maps.b
        return LookaheadBlock(
            positions=positions,
            cov=cov,
            pivot_evals=rows.pivot,
            pivot_evecs=rows.evecs,
            f_bar_eval=f_bar_eval,
            f_bar_cand=rows.f_bar,
            f0_eval=f0_eval,
            f0_cand=rows.f0,
            step_a=step_a,
            step_b=step_b,
            lev=lev,
        )

    def _step(self, jj: int, target: torch.Tensor, v_j: torch.Tensor) -> _Step:
        """Everything :meth:`condition` needs about candidate ``jj`` with ``target`` ``(1, k)``
        and coordinates ``v_j`` ``(r, p)``."""
        return self._step_from(
            self._raw[jj : jj + 1],
            self._prior[jj : jj + 1],
            bool(self._clamped[jj]),
            self._f_bar[jj : jj + 1],
            target,
            v_j,
        )

    def _step_from(
        self,
        raw: torch.Tensor,
        prior: torch.Tensor,
        clamped: bool,
        f_bar: torch.Tensor,
        target: torch.Tensor,
        v_j: torch.Tensor,
    ) -> _Step:
        """:meth:`_step` from one point's raw and prior Σ_jj ``(1,)`` / ``(1, k, k)``, whether
        it is clamped, and its f̄ ``(1, k)`` (a candidate's, or an outside input's)."""
        g = w_j = None
        if clamped:
            w_j = torch.linalg.solve_triangular(self._span_factor(), v_j, upper=False)
            g = (w_j * w_j).sum(0) if not self.full_kernel else (w_j.T @ w_j).unsqueeze(0)
        maps = step_maps(raw, prior, self.eps, g)
        resid = (target - f_bar)[0]  # (k,)
        keep = maps.independent[0]
        if not self.full_kernel:
            a, b = maps.a[0:1], maps.b[0:1]
            vind = torch.ones(1, 1, dtype=_DTYPE, device=self.device)[:, keep]
            root = raw[0].clamp_min(0).sqrt().reshape(1)[keep]
        else:
            a, b = maps.a[0], maps.b[0]
            assert maps.evecs is not None  # step_maps of (k, k) blocks has them
            vind = maps.evecs[0][:, keep]  # (p, k_i)
            root = maps.evals[0][keep].sqrt()
        alpha, beta = _apply_maps(a, b, resid)
        return _Step(alpha, beta if bool(maps.dependent[0]) else None, vind, root, w_j, a, b)

    def _remember_condition(
        self,
        jj: int,
        target: torch.Tensor,
        step: _Step,
        cols: torch.Tensor,
        g_cols: torch.Tensor | None,
        w_maps: tuple | None = None,
    ) -> None:
        """Keep what :meth:`relabel_last` needs: the step's maps and Σ[C, j], G[C, j] as they
        were before the update (``(m p, p)`` each: two columns, not a matrix), and for engines
        that keep coefficients ``w`` how the step moved them."""
        self._last_condition = _LastCondition(jj, target, step, cols, g_cols, w_maps)

    def relabel_last(self, j: int, y) -> None:
        """Change the label of the candidate conditioned on last, in closed form.

        The look-ahead step is linear in the target: ``f̄ ← f̄ + Σ[C, j] A Δ + G[C, j] B Δ`` with
        ``Δ = y_new − y_old`` and Σ, G as they were when ``j`` was conditioned on. Σ itself does
        not depend on labels, so afterwards the engine equals one conditioned on ``(j, y_new)``
        directly (f̄ up to rounding), at ``O(m k)`` cost instead of a conditioning pass.

        Raises
        ------
        ValueError
            If ``j`` is not the candidate conditioned on last.
        """
        jj, target = self._single_target(j, y)
        last: _LastCondition | None = getattr(self, "_last_condition", None)
        if last is None or not self.conditioned or self.conditioned[-1] != jj or last.jj != jj:
            raise ValueError(
                f"candidate {jj} is not the one conditioned on last: only that one can be "
                "relabelled in closed form"
            )
        delta = (target - last.target)[0]
        d_alpha, d_beta = last.step.steps_for(delta)
        m, k = self.num_candidates, self.num_classes
        self._f_bar.add_((last.cols @ d_alpha).reshape(m, k))
        if d_beta is not None and last.g_cols is not None:
            self._f_bar.add_((last.g_cols @ d_beta).reshape(m, k))
        if last.w_maps is not None:  # the coefficients the step extended, likewise
            u_map, c_map, rows = last.w_maps
            w = self._w  # type: ignore[attr-defined]
            if u_map is not None and d_beta is not None:
                w[:rows] += u_map @ d_beta
            if c_map.shape[0]:
                w[rows : rows + c_map.shape[0]] += c_map @ d_alpha
        last.target = target

    def _grow_span(self, v_j: torch.Tensor, step: _Step) -> torch.Tensor:
        """``M ← blockdiag(M, 0) + φ̃ φ̃ᵀ`` with ``φ̃ = [v_j; diag(root) vindᵀ]`` (the conditioned
        point's coordinates after its independent directions join the span); returns φ̃'s new
        rows ``(k_i, p)``."""
        old = self._design_gram()
        r, ki = int(old.shape[0]), int(step.root.shape[0])
        new_rows = step.root[:, None] * step.vind.T  # (k_i, p)
        phi = torch.cat([v_j, new_rows], 0)
        gram = torch.zeros(r + ki, r + ki, dtype=_DTYPE, device=self.device)
        gram[:r, :r] = old
        gram.add_(phi @ phi.T)
        self._gram = gram
        self._gram_chol = None
        self._w_eval = None
        return new_rows


def _apply_maps(
    a: torch.Tensor, b: torch.Tensor, resid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(α, β) = (A r, B r)`` for one point: scalar kernels (``(1,)`` factors) give ``(1, k)``
    steps, full ``(k, k)`` maps give ``(k, 1)``."""
    if a.ndim == 1:
        return (a * resid)[None, :], (b * resid)[None, :]
    return (a @ resid).reshape(-1, 1), (b @ resid).reshape(-1, 1)


@dataclass
class _LastCondition:
    """The last conditioning step, for :meth:`LabelledSpan.relabel_last`."""

    jj: int
    target: torch.Tensor
    step: _Step
    cols: torch.Tensor
    g_cols: torch.Tensor | None
    w_maps: tuple | None = None


@dataclass
class _Step:
    """One conditioning step: ``alpha`` / ``beta`` ``(p, k / p)`` (the step along Σ[:, j] and
    G[:, j]; ``beta`` None when no direction is in the span), the independent directions of Σ_jj
    ``vind`` ``(p, k_i)`` with ``root = sqrt(λ)`` ``(k_i,)``, and ``w_j = L_M⁻¹ v_j`` (or None)."""

    alpha: torch.Tensor
    beta: torch.Tensor | None
    vind: torch.Tensor
    root: torch.Tensor
    w_j: torch.Tensor | None

    #: The maps ``A``, ``B`` of this candidate (``(1,)`` factors or ``(k, k)`` matrices), so a
    #: changed target changes the step linearly (:meth:`LabelledSpan.relabel_last`).
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None

    def steps_for(self, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(α, β)`` for residual ``resid`` ``(k,)`` under this step's maps."""
        assert self.a is not None and self.b is not None
        alpha, beta = _apply_maps(self.a, self.b, resid)
        return alpha, (beta if self.beta is not None else None)

    def new_rows(self, sigma_rows: torch.Tensor) -> torch.Tensor:
        """Coordinates along the new span directions, ``Λ^{-1/2} V_indᵀ Σ[j, X]`` ``(k_i, c)``,
        from ``Σ[j, X]`` ``(p, c)``."""
        return (self.vind / self.root).T @ sigma_rows
