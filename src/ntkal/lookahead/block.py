"""What both look-ahead engines share: the block a criterion consumes, input checks, the evaluation
set, the Σ_jj floor, and the Cholesky factor of the labelled-set kernel."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

_DTYPE = torch.float64
#: Default memory budget (bytes) for one block of batched look-ahead predictions.
DEFAULT_CHUNK_BYTES = 256 * 2**20
#: Default size of the evaluation set E (a seeded random sample of the candidates).
DEFAULT_EVAL_SIZE = 5000

LabelLike = Union[int, np.integer, Sequence[float], np.ndarray, torch.Tensor]
EvalSize = Union[int, str, None]


def as_f64(x, name: str, device=None) -> torch.Tensor:
    """``x`` as a finite float64 tensor on ``device`` (no copy when it already is one)."""
    t = torch.as_tensor(x)
    t = t.to(dtype=_DTYPE, device=device)
    if not all_finite(t):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def all_finite(t: torch.Tensor, chunk_bytes: int = 2**24) -> bool:
    """``torch.isfinite(t).all()`` in row chunks: ``isfinite`` makes temporaries the size of its
    input (an ``|t|`` copy and masks), which for a kernel would be the largest allocation."""
    if t.ndim == 0 or t.numel() * t.element_size() <= chunk_bytes:
        return bool(torch.isfinite(t).all())
    rows = max(1, chunk_bytes // max(1, t[0].numel() * t.element_size()))
    return all(bool(torch.isfinite(t[r:r + rows]).all()) for r in range(0, t.shape[0], rows))


def flatten_blocks(theta: torch.Tensor) -> torch.Tensor:
    """``(a, b, k, k)`` block kernel -> ``(a k, b k)`` matrix indexed by (point, class)."""
    a, b, k, _ = theta.shape
    return theta.permute(0, 2, 1, 3).reshape(a * k, b * k)


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


def eval_positions_for(num_candidates: int, eval_size: EvalSize = DEFAULT_EVAL_SIZE,
                       seed: int = 0, positions=None) -> np.ndarray:
    """Positions (into the candidates, sorted) of the evaluation set E.

    ``positions`` given explicitly wins; else ``eval_size="all"`` (or ``None``, or any size
    ``>= num_candidates``) is every candidate, and an int is a uniform random sample of that many
    candidates drawn with ``numpy.random.default_rng(seed)``.
    """
    m = int(num_candidates)
    if positions is not None:
        pos = np.unique(np.asarray(positions, dtype=np.int64).reshape(-1))
        if pos.size == 0 or pos[0] < 0 or pos[-1] >= m:
            raise ValueError(f"eval_positions must be non-empty positions in [0, {m})")
        return pos
    if eval_size is None or (isinstance(eval_size, str) and eval_size == "all"):
        return np.arange(m)
    if isinstance(eval_size, str) or isinstance(eval_size, bool) or int(eval_size) < 1:
        raise ValueError(f"eval_size must be a positive int or 'all', got {eval_size!r}")
    if int(eval_size) >= m:
        return np.arange(m)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(m, size=int(eval_size), replace=False))


def contiguous_span(positions: torch.Tensor) -> Optional[slice]:
    """``slice(a, b)`` when ``positions`` are exactly ``a, a+1, ..., b-1``, else None."""
    b = int(positions.shape[0])
    if b == 0:
        return None
    a = int(positions[0])
    if int(positions[-1]) - a + 1 != b:
        return None
    if b > 2 and not bool((positions[1:] - positions[:-1] == 1).all()):
        return None
    return slice(a, a + b)


@dataclass
class LookaheadBlock:
    """What a look-ahead criterion needs about a block ``J`` of candidates, and nothing more.

    The engines (:class:`ntkal.lookahead.Lookahead`, :class:`ntkal.lookahead.StreamingLookahead`)
    yield these from ``iter_blocks``; acquisition criteria (MLMOC's flip / norm / expected scores,
    EER, EMOC, variance reduction) are functions of one block, so they do not depend on how the
    engine stores or streams Σ.

    ``E`` is the evaluation set, where output change is measured (a sample of the candidates or
    all of them; see ``eval_size``).

    Attributes
    ----------
    positions : Tensor
        Candidate positions ``(b,)`` (int64) of this block.
    cov : Tensor
        Σ[E, J]: ``(b, e)`` for scalar kernels (read as ``⊗ I_k``), ``(b, e, k, k)`` for full
        blocks (``cov[t, i]`` is the ``k × k`` block Σ[x_i, x_{J_t}]). May be a (possibly
        transposed) view of the engine's held Σ: read it, never modify it in place.
    pivot_evals, pivot_evecs : Tensor
        Σ_jj after the floor clamp: scalar kernels give ``(b,)`` values and ``pivot_evecs=None``;
        full blocks give eigenvalues ``(b, k)`` and eigenvectors ``(b, k, k)``.
    f_bar_eval, f_bar_cand : Tensor
        f̄ on E ``(e, k)`` and on the block ``(b, k)`` (current, after any conditioning).
    f0_eval, f0_cand : Tensor
        The trained network's outputs on E ``(e, k)`` and on the block ``(b, k)``.
    """

    positions: torch.Tensor
    cov: torch.Tensor
    pivot_evals: torch.Tensor
    pivot_evecs: Optional[torch.Tensor]
    f_bar_eval: torch.Tensor
    f_bar_cand: torch.Tensor
    f0_eval: torch.Tensor
    f0_cand: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.positions.shape[0])

    @property
    def block(self) -> bool:
        return self.pivot_evecs is not None

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``Σ_jj⁻¹ rhs`` per candidate, ``rhs`` ``(b, k)``."""
        if self.pivot_evecs is None:
            return rhs / self.pivot_evals.unsqueeze(1)
        v = self.pivot_evecs
        coef = (v.transpose(1, 2) @ rhs.unsqueeze(2)).squeeze(2) / self.pivot_evals
        return (v @ coef.unsqueeze(2)).squeeze(2)

    def coefficients(self, targets: torch.Tensor) -> torch.Tensor:
        """``Σ_jj⁻¹ (y_j − f̄(x_j))`` ``(b, k)``: the look-ahead step per candidate."""
        return self.solve(targets.to(self.f_bar_cand.dtype) - self.f_bar_cand)

    def delta(self, targets: torch.Tensor) -> torch.Tensor:
        """Change of f̄ on E, ``(b, e, k)``, after retraining with ``(x_j, targets_j)`` added;
        ``targets`` ``(b, k)`` (one-hot rows for class labels)."""
        coef = self.coefficients(targets)                                      # (b, k)
        if self.pivot_evecs is None:
            return self.cov.unsqueeze(2) * coef.unsqueeze(1)
        return (self.cov @ coef[:, None, :, None]).squeeze(3)

    def retrained(self, targets: torch.Tensor) -> torch.Tensor:
        """f^{(j,y)}(E) ``(b, e, k)``: f̄ on E plus :meth:`delta`."""
        return self.f_bar_eval.unsqueeze(0) + self.delta(targets)


class LookaheadState:
    """State and helpers common to both engines: sizes, f0 / f̄ on the candidates, the evaluation
    set, conditioned candidates, and the clamped pivots Σ_jj (kept for every candidate)."""

    block: bool
    num_candidates: int
    num_classes: int
    num_labelled: int
    device: torch.device
    eps: float
    chunk_size: Optional[int]

    def _init_state(self, f0_candidates: torch.Tensor, eval_positions, block: bool, eps: float,
                    chunk_size: Optional[int], device) -> None:
        m, k = f0_candidates.shape
        self.block = block
        self.num_candidates = int(m)
        self.num_classes = int(k)
        self._p = k if block else 1
        self.eps = float(eps)
        self.chunk_size = chunk_size
        self.device = device
        self.f0_candidates = f0_candidates
        pos = np.arange(m) if eval_positions is None else np.asarray(eval_positions)
        self._eval_all = pos.size == m
        self.eval_positions = torch.as_tensor(pos, dtype=torch.long, device=device)
        self.conditioned: list[int] = []
        self._conditioned_mask = torch.zeros(m, dtype=torch.bool, device=device)
        self._clamp_warned = False

    # -- evaluation set
    @property
    def num_eval(self) -> int:
        return int(self.eval_positions.shape[0])

    def _on_eval(self, values: torch.Tensor) -> torch.Tensor:
        """Rows of a per-candidate tensor on E (no copy when E is every candidate)."""
        return values if self._eval_all else values.index_select(0, self.eval_positions)

    @property
    def f0_eval(self) -> torch.Tensor:
        """The trained network's outputs on E ``(e, k)``."""
        return self._on_eval(self.f0_candidates)

    def base_predictions(self) -> torch.Tensor:
        """f̄ on the candidates ``(m, k)``: the linearised network retrained on L (and on every
        conditioned point)."""
        return self._f_bar.clone()

    # -- pivots
    def _set_pivots(self, raw: torch.Tensor) -> None:
        """Clamp Σ_jj (``(m,)``, or ``(m, k, k)`` blocks by eigenvalue) to ``eps · mean(diag Σ)``
        over the unconditioned candidates; warn once per object when something was clamped."""
        live = ~self._conditioned_mask
        diag = raw if not self.block else raw.diagonal(dim1=1, dim2=2)
        vals = diag[live]
        scale = float(vals.mean()) if vals.numel() else 0.0
        if not (scale > 0 and math.isfinite(scale)):
            scale = self._kss_mean_diag if self._kss_mean_diag > 0 else 1.0
        floor = self.eps * scale
        self._pivot_floor = floor
        if not self.block:
            clamped = raw <= floor
            self._pivot = torch.where(clamped, torch.full_like(raw, floor), raw)
            self._pivot_evecs = None
        else:
            blocks = 0.5 * (raw + raw.transpose(1, 2))
            evals, evecs = torch.linalg.eigh(blocks)
            clamped = (evals <= floor).any(dim=1)
            self._pivot = evals.clamp_min(floor)
            self._pivot_evecs = evecs
        self._clamped = clamped & live
        count = int(self._clamped.sum())
        if count and not self._clamp_warned:
            self._clamp_warned = True
            warnings.warn(
                f"{count} candidate(s) have look-ahead variance Σ_jj <= {self.eps:g} × mean(diag Σ) "
                "(near-duplicates of labelled or other candidates, or cancellation); clamped to that "
                "floor so their look-ahead scores stay finite", RuntimeWarning, stacklevel=4)

    @property
    def num_clamped(self) -> int:
        """Unconditioned candidates whose Σ_jj is currently clamped."""
        return int(self._clamped.sum())

    def _pivot_solve(self, js: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """``Σ_jj⁻¹ rhs`` for candidates ``js`` (b,) and right-hand sides ``rhs`` (b, k)."""
        if not self.block:
            return rhs / self._pivot[js].unsqueeze(1)
        v = self._pivot_evecs[js]                                         # (b, k, k)
        coef = (v.transpose(1, 2) @ rhs.unsqueeze(2)).squeeze(2) / self._pivot[js]
        return (v @ coef.unsqueeze(2)).squeeze(2)

    def _pivot_root(self, j: int) -> torch.Tensor:
        """Lower-triangular ``D`` with ``D Dᵀ`` = the clamped Σ_jj: ``(1, 1)`` or ``(k, k)``."""
        if not self.block:
            return self._pivot[j].sqrt().reshape(1, 1)
        v = self._pivot_evecs[j]
        clamped = (v * self._pivot[j]) @ v.T
        return torch.linalg.cholesky(0.5 * (clamped + clamped.T))

    def _make_block(self, jb: torch.Tensor, cov: torch.Tensor, f_bar_eval: torch.Tensor,
                    f0_eval: torch.Tensor) -> LookaheadBlock:
        evecs = None if not self.block else self._pivot_evecs[jb]
        return LookaheadBlock(positions=jb, cov=cov, pivot_evals=self._pivot[jb],
                              pivot_evecs=evecs, f_bar_eval=f_bar_eval,
                              f_bar_cand=self._f_bar[jb], f0_eval=f0_eval,
                              f0_cand=self.f0_candidates[jb])

    # -- inputs
    def _targets(self, ys, b: int) -> torch.Tensor:
        k = self.num_classes
        y = torch.as_tensor(ys, device=self.device)
        if not torch.is_floating_point(y):
            y = y.reshape(b)
            if b and (int(y.min()) < 0 or int(y.max()) >= k):
                raise ValueError(f"class labels must lie in [0, {k})")
            return torch.nn.functional.one_hot(y.long(), k).to(_DTYPE)
        y = y.to(_DTYPE)
        if y.shape == (k,) and b == 1:
            y = y.unsqueeze(0)
        if y.shape != (b, k):
            raise ValueError(f"targets must be class indices or vectors of length {k}, "
                             f"got shape {tuple(y.shape)}")
        return y

    def _positions(self, js) -> torch.Tensor:
        j = torch.as_tensor(js, device=self.device).reshape(-1)
        if j.numel() and (torch.is_floating_point(j) or int(j.min()) < 0
                          or int(j.max()) >= self.num_candidates):
            raise IndexError(f"candidate positions must be integers in [0, {self.num_candidates})")
        return j.long()

    def _single_target(self, j: int, y: LabelLike) -> tuple[int, torch.Tensor]:
        js = self._positions([j])
        if js.numel() != 1:
            raise ValueError("j must be a single candidate position")
        jj = int(js[0])
        if isinstance(y, (int, np.integer)):
            y = [int(y)]
        return jj, self._targets(y, 1)

    def default_chunk_size(self, memory_budget: int = DEFAULT_CHUNK_BYTES) -> int:
        """Candidates per block: ``chunk_size`` if set, else as many as fit ``memory_budget``
        bytes of one block's look-ahead predictions on E and their intermediates
        (``8 · e · k · (p + 2)`` bytes per candidate, ``p = k`` for full blocks, else 1)."""
        if self.chunk_size is not None:
            return max(1, int(self.chunk_size))
        per = 8 * max(1, self.num_eval) * self.num_classes * (self._p + 2)
        return max(1, int(memory_budget) // per)
