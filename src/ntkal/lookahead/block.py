"""The block a look-ahead criterion consumes, and the small helpers both engines use (float64
inputs, block-kernel layout, the evaluation set)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ntkal.lookahead.settings import DEFAULT_BLOCK_MEMORY, DEFAULT_EVAL_SIZE

_DTYPE = torch.float64
#: Default memory budget (bytes) for one block of batched look-ahead predictions.
DEFAULT_CHUNK_BYTES = DEFAULT_BLOCK_MEMORY

LabelLike = int | np.integer | Sequence[float] | np.ndarray | torch.Tensor
EvalSize = int | str | None


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
    return all(bool(torch.isfinite(t[r : r + rows]).all()) for r in range(0, t.shape[0], rows))


def flatten_blocks(theta: torch.Tensor) -> torch.Tensor:
    """``(a, b, k, k)`` block kernel -> ``(a k, b k)`` matrix indexed by (point, class)."""
    a, b, k, _ = theta.shape
    return theta.permute(0, 2, 1, 3).reshape(a * k, b * k)


def eval_positions_for(
    num_candidates: int, eval_size: EvalSize = DEFAULT_EVAL_SIZE, seed: int = 0, positions=None
) -> np.ndarray:
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


def contiguous_span(positions: torch.Tensor) -> slice | None:
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

    The engines (:class:`ntkal.lookahead.DenseLookahead`,
    :class:`ntkal.lookahead.StreamingLookahead`) yield these from ``iter_blocks``; acquisition
    criteria (MLMOC's flip / norm / expected scores, EER, EMOC, variance reduction) are functions
    of one block, so they do not depend on how the engine stores or streams Σ.

    The look-ahead step is minimum-norm least-squares retraining (see
    :mod:`ntkal.lookahead.span`): ``delta = Σ[E, j] α + G[E, j] β`` with ``α = step_a r`` and
    ``β = step_b r``; for a candidate outside the labelled span ``β = 0`` and ``α = Σ_jj⁻¹ r``.

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
        Σ_jj clamped from below at ``eps`` times the prior Θ_jj (for variance-based criteria):
        scalar kernels give ``(b,)`` values and ``pivot_evecs=None``; full blocks give
        eigenvalues ``(b, k)`` and eigenvectors ``(b, k, k)``.
    step_a, step_b : Tensor
        Maps from the residual ``r = y − f̄(x_j)`` to the step along Σ[E, j] and G[E, j]:
        ``(b,)`` factors (scalar kernels) or ``(b, k, k)`` matrices.
    lev : Tensor or None
        ``G[E, J]`` (layout of ``cov``), the leverage kernel of the labelled span; ``None`` when no
        candidate of the block lies (partly) in the span.
    f_bar_eval, f_bar_cand : Tensor
        f̄ on E ``(e, k)`` and on the block ``(b, k)`` (current, after any conditioning).
    f0_eval, f0_cand : Tensor
        The trained network's outputs on E ``(e, k)`` and on the block ``(b, k)``.
    """

    positions: torch.Tensor
    cov: torch.Tensor
    pivot_evals: torch.Tensor
    pivot_evecs: torch.Tensor | None
    f_bar_eval: torch.Tensor
    f_bar_cand: torch.Tensor
    f0_eval: torch.Tensor
    f0_cand: torch.Tensor
    step_a: torch.Tensor | None = None
    step_b: torch.Tensor | None = None
    lev: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.step_a is None:  # the classic step: Σ_jj⁻¹ r
            if self.pivot_evecs is None:
                self.step_a = 1.0 / self.pivot_evals
            else:
                v = self.pivot_evecs
                self.step_a = (v / self.pivot_evals[:, None, :]) @ v.transpose(1, 2)

    @property
    def size(self) -> int:
        return int(self.positions.shape[0])

    @property
    def full_kernel(self) -> bool:
        """Whether Σ has ``k × k`` blocks per pair of points (``kernel="full"``)."""
        return self.pivot_evecs is not None

    @property
    def block(self) -> bool:
        """Deprecated name of :attr:`full_kernel`."""
        warnings.warn(
            "LookaheadBlock.block is deprecated; use full_kernel", DeprecationWarning, stacklevel=2
        )
        return self.full_kernel

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``Σ_jj⁻¹ rhs`` per candidate, ``rhs`` ``(b, k)``."""
        if self.pivot_evecs is None:
            return rhs / self.pivot_evals.unsqueeze(1)
        v = self.pivot_evecs
        coef = (v.transpose(1, 2) @ rhs.unsqueeze(2)).squeeze(2) / self.pivot_evals
        return (v @ coef.unsqueeze(2)).squeeze(2)

    def _residuals(self, targets: torch.Tensor) -> torch.Tensor:
        return targets.to(self.f_bar_cand.dtype) - self.f_bar_cand

    def coefficients(self, targets: torch.Tensor) -> torch.Tensor:
        """Scalar kernels: the step ``(b, k)`` along :attr:`direction` per candidate, so that
        ``delta = direction ⊗ coefficients``; full kernels: ``α = step_a r``."""
        r = self._residuals(targets)
        step_a = self._step_a()
        if self.pivot_evecs is None:
            factor = step_a if self.step_b is None else step_a + self.step_b
            return r * factor.unsqueeze(1)
        return (step_a @ r.unsqueeze(2)).squeeze(2)

    def _step_a(self) -> torch.Tensor:
        assert self.step_a is not None  # __post_init__ sets the classic step
        return self.step_a

    def _step_b(self) -> torch.Tensor:
        """``step_b``, which accompanies :attr:`lev` (both set for candidates in the span)."""
        if self.step_b is None:
            raise ValueError("a LookaheadBlock with lev needs step_b")
        return self.step_b

    @property
    def direction(self) -> torch.Tensor:
        """Scalar kernels: the column each candidate's step runs along on E ``(b, e)``:
        Σ[E, j], or G[E, j] for a candidate in the labelled span (a copy only then)."""
        if self.lev is None:
            return self.cov
        dep = (self._step_b() != 0).unsqueeze(1)
        return torch.where(dep, self.lev, self.cov)

    def delta(self, targets: torch.Tensor) -> torch.Tensor:
        """Change of f̄ on E, ``(b, e, k)``, after retraining with ``(x_j, targets_j)`` added;
        ``targets`` ``(b, k)`` (one-hot rows for class labels)."""
        coef = self.coefficients(targets)  # (b, k)
        if self.pivot_evecs is None:
            return self.direction.unsqueeze(2) * coef.unsqueeze(1)
        out = (self.cov @ coef[:, None, :, None]).squeeze(3)
        if self.lev is not None:
            beta = (self._step_b() @ self._residuals(targets).unsqueeze(2)).squeeze(2)
            out = out + (self.lev @ beta[:, None, :, None]).squeeze(3)
        return out

    def retrained(self, targets: torch.Tensor) -> torch.Tensor:
        """f^{(j,y)}(E) ``(b, e, k)``: f̄ on E plus :meth:`delta`."""
        return self.f_bar_eval.unsqueeze(0) + self.delta(targets)
