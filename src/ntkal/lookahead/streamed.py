"""What the streaming look-ahead engine needs from its model, apart from the look-ahead itself:
kernel blocks from per-example factors (:class:`ntkal.kernels.Featuriser`) of the labelled set,
the evaluation set and candidate blocks, and the memory accounting that sizes its blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ntkal.lookahead.block import _DTYPE, flatten_blocks
from ntkal.lookahead.settings import DEFAULT_BLOCK_MEMORY

if TYPE_CHECKING:
    from ntkal.kernels.featuriser import Featuriser

__all__ = ["StreamedKernels", "fill_kernel"]

#: Featurised pieces of an input: ``[(rows, features, logits)]``.
FeaturePieces = list[tuple[slice, Any, torch.Tensor]]


class _RowBuffer:
    """A float64 matrix that grows by appended rows in place: storage for ``capacity`` rows,
    ``rows`` the filled part (a contiguous view). Conditioning appends ``p`` rows per step, so a
    session does not copy ``V`` each step; the capacity grows by half when it runs out."""

    def __init__(self, num_rows: int, num_cols: int, device, spare: int = 32) -> None:
        self._buf = torch.empty(num_rows + spare, num_cols, dtype=_DTYPE, device=device)
        self._used = num_rows

    @property
    def rows(self) -> torch.Tensor:
        return self._buf[: self._used]

    @property
    def capacity_numel(self) -> int:
        return self._buf.numel()

    def append(self, new: torch.Tensor) -> None:
        need = self._used + new.shape[0]
        if need > self._buf.shape[0]:
            grown = torch.empty(
                max(need, self._buf.shape[0] * 3 // 2),
                self._buf.shape[1],
                dtype=_DTYPE,
                device=self._buf.device,
            )
            grown[: self._used] = self._buf[: self._used]
            self._buf = grown
        self._buf[self._used : need] = new
        self._used = need


def fill_kernel(fz: Featuriser, fa: FeaturePieces, fb: FeaturePieces, out: torch.Tensor) -> None:
    """Θ(A, B) from lists of featurised pieces, written piece by piece into ``out`` ``(a, b,
    ...)`` (views of it: no copy). Pieces are laid out in list order; their own slices index
    the input they came from."""
    ra = 0
    for sa, xa, _ in fa:
        na, rb = sa.stop - sa.start, 0
        for sb, xb, _ in fb:
            nb = sb.stop - sb.start
            fz.kernel(xa, xb, dtype=out.dtype, out=out[ra : ra + na, rb : rb + nb])
            rb += nb
        ra += na


class StreamedKernels:
    """Kernel pieces and memory accounting of :class:`ntkal.lookahead.StreamingLookahead` (a
    mixin: it reads the engine's featuriser, features, factor and caches)."""

    featuriser: Featuriser
    max_memory: int
    full_kernel: bool
    num_candidates: int
    num_classes: int
    num_labelled: int
    block_size: int | None
    eval_positions: torch.Tensor
    conditioned: list[int]
    _p: int
    _x_c: torch.Tensor
    _feature_rows: int
    _lab_feats: FeaturePieces
    _eval_feats: FeaturePieces | None
    _cand_feats: FeaturePieces | None
    _cond_feats: FeaturePieces
    _cond_proj: torch.Tensor
    _basis: torch.Tensor | None
    _chol: torch.Tensor
    _v_cand_buf: _RowBuffer | None
    _cov_cache: torch.Tensor | None

    if TYPE_CHECKING:

        @property
        def num_eval(self) -> int: ...

    # ------------------------------------------------------------------ kernel pieces
    def _featurise_rows(self) -> int:
        """Inputs per featurisation call: a quarter of ``max_memory`` of features + transients
        (at least 8, at most 4096)."""
        fz = self.featuriser
        per = fz.bytes_per_example + fz.transient_per_example
        return int(max(8, min(4096, 0.25 * self.max_memory // max(per, 1.0))))

    def _features(self, x: torch.Tensor) -> FeaturePieces:
        """``[(rows, features, logits)]`` of ``x`` in featurisation-sized pieces."""
        out: FeaturePieces = []
        step = self._feature_rows
        for s in range(0, int(x.shape[0]), step):
            sl = slice(s, min(int(x.shape[0]), s + step))
            feats, logits = self.featuriser.featurise(x[sl])
            out.append((sl, feats, logits))
        return out

    def _kernel(self, fa, fb) -> torch.Tensor:
        """Θ(A, B) as a ``(a p, b p)`` matrix from lists of featurised pieces."""
        a = sum(sl.stop - sl.start for sl, _, _ in fa)
        b = sum(sl.stop - sl.start for sl, _, _ in fb)
        fz = self.featuriser
        out = torch.empty((a, b, *fz.block_shape), dtype=_DTYPE, device=fz.device)
        fill_kernel(fz, fa, fb, out)
        return flatten_blocks(out) if self.full_kernel else out

    def _diagonal(self, fa) -> torch.Tensor:
        return torch.cat([self.featuriser.diagonal(x) for _, x, _ in fa], 0)

    def _kernel_eval(self, fj) -> torch.Tensor:
        """Θ(E, J) ``(e p, b p)``, from cached features of E or by re-featurising E; for scalar
        kernels a transposed view of :meth:`_kernel_rows_eval`."""
        if not self.full_kernel:
            return self._kernel_rows_eval(fj).T
        if self._eval_feats is not None:
            return self._kernel(self._eval_feats, fj)
        parts = []
        for s in range(0, self.num_eval, self._feature_rows):
            pos = self.eval_positions[s : s + self._feature_rows].cpu()
            parts.append(self._kernel(self._features(self._x_c[pos]), fj))
        return torch.cat(parts, 0)

    def _kernel_rows_eval(self, fj) -> torch.Tensor:
        """Θ(J, E) ``(b, e)`` for scalar kernels, contiguous. The block is the short side of its
        GEMMs (a few hundred candidates against thousands of points of E), and with it as the
        rows the GEMMs run faster: at 425 candidates x 5 000 points, 47 against 41 GFLOP/s in
        float64 and 94 against 65 in float32 on one core of an AVX-512 EPYC (MKL); at 1 000
        candidates both layouts ran alike."""
        if self._eval_feats is not None:
            return self._kernel(fj, self._eval_feats)
        b = sum(sl.stop - sl.start for sl, _, _ in fj)
        fz = self.featuriser
        out = torch.empty(b, self.num_eval, dtype=_DTYPE, device=fz.device)
        for s in range(0, self.num_eval, self._feature_rows):
            pos = self.eval_positions[s : s + self._feature_rows].cpu()
            fe = self._features(self._x_c[pos])
            fill_kernel(fz, fj, fe, out[:, s : s + int(pos.shape[0])])
        return out

    def _labelled_kernel(self, fj) -> torch.Tensor:
        """Θ(B⁺, J) ``(N, b p)``: the basis rows of the labelled set, then the conditioned
        candidates' rows projected on their directions outside the span at the time."""
        lab = self._kernel(self._lab_feats, fj)
        parts = [lab if self._basis is None else lab.index_select(0, self._basis)]
        if self._cond_feats:
            parts.append(self._cond_proj @ self._kernel(self._cond_feats, fj))
        return torch.cat(parts, 0) if len(parts) > 1 else parts[0]

    def _solve(self, rhs: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self._chol, rhs, upper=False)

    # ------------------------------------------------------------------ memory
    def resident_bytes(self) -> int:
        """Bytes held between blocks (features, factors, per-candidate vectors, caches)."""
        fz = self.featuriser
        n_rows = int(self._chol.shape[0])
        e, m, p, k = self.num_eval, self.num_candidates, self._p, self.num_classes
        total: float = 8 * (n_rows * n_rows + n_rows * e * p + 3 * m * k + m * p * p)
        total += fz.bytes_per_example * (self.num_labelled + len(self.conditioned))
        if self._eval_feats is not None:
            total += fz.bytes_per_example * e
        if self._v_cand_buf is not None:
            total += 8 * self._v_cand_buf.capacity_numel
        if self._cov_cache is not None:
            total += 8 * self._cov_cache.numel()
        if self._cand_feats is not None:
            total += fz.bytes_per_example * m
        return int(total)

    def block_bytes_per_candidate(self, score_bytes_per_pair: float | None = None) -> float:
        """Working-set bytes per candidate of a block: its features, Θ(E, j) / Σ[E, j] and their
        contraction intermediates, V_j, and one block of scoring intermediates on E
        (``score_bytes_per_pair`` per point of E as the criterion states it; by default its
        look-ahead predictions, ``8 k (p + 2)``)."""
        fz = self.featuriser
        e, p, k = self.num_eval, self._p, self.num_classes
        n_rows = int(self._chol.shape[0])
        per = fz.bytes_per_example + fz.transient_per_example
        per += e * (2 * 8 * p * p + fz.bytes_per_pair) + 8 * n_rows * p
        per += e * (8 * k * (p + 2) if score_bytes_per_pair is None else score_bytes_per_pair)
        return float(per)

    def default_block_size(
        self, block_memory: int = DEFAULT_BLOCK_MEMORY, score_bytes_per_pair: float | None = None
    ) -> int:
        """Candidates per block: ``block_size`` if set, else the most whose working set
        (:meth:`block_bytes_per_candidate`) fits both ``block_memory`` and what ``max_memory``
        leaves after the resident state (:meth:`resident_bytes`)."""
        if self.block_size is not None:
            return max(1, int(self.block_size))
        room = min(float(block_memory), self.max_memory - self.resident_bytes())
        per = self.block_bytes_per_candidate(score_bytes_per_pair)
        return int(max(1, min(self.num_candidates, room // per)))
