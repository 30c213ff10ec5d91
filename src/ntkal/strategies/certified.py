"""Top-k look-ahead picks from float32 scoring blocks, certified equal to the float64 picks.

With ``score_precision="fp32"`` the streaming engine yields Σ[E, J] in float32 with an entrywise
bound ``δ_ij ≥ |Σ32_ij − Σ64_ij|`` (:mod:`ntkal.lookahead.fp32_blocks`). For MLMOC's ``"flip"``
and ``"norm"`` scores (scalar kernels) this module turns each candidate's block into intervals
that contain what the float64 path computes (:func:`ntkal.strategies.lookahead_scores.flips_and_norms`):

* flips: the float64 screen decides a pair (point ``i`` of E, candidate ``j``) when
  ``B64 = fl(fl(|Σ64_ij| · spread_j) + slack · scale_i) < |gap_i|``. The widened bound
  ``W = fl(fl((|Σ32_ij| + δ_ij) · spread_j) + slack · scale_i)`` is at least ``B64`` (rounding is
  monotone and ``|Σ64_ij| ≤ |Σ32_ij| + δ_ij``), so a pair with ``W < |gap_i|`` is decided by the
  float64 path too, with the same outcome (flipped iff ``gap_i < 0``): a sure flip or a sure
  non-flip. Every other pair is uncertain; the flip count lies in
  ``[sure flips, sure flips + uncertain]``.
* norms: ``‖coef_j‖ Σ_i |Σ_ij|`` lies within ``‖coef_j‖ Σ_i (|Σ32_ij| ∓ δ_ij)``, widened by the
  float64 rounding of both sums (``γ_{e+4}``, four times over).

Selection (:func:`select_certified`). ``top_k`` orders by (primary, secondary) descending, then by
one uniform key per candidate drawn from the generator (positional, independent of the values);
the keys are drawn here from a copy of the generator, so they are the ones ``top_k`` will draw.
For each candidate the lexicographically lowest and highest corners of its box are
``lo_j = (P_lo, S_lo, key)`` and ``hi_j = (P_hi, S_hi, key)``; if ``lo_i`` precedes ``hi_j`` then
``i`` precedes ``j`` for every value in the boxes. With ``T`` the ``budget``-th best ``lo``, a
candidate whose ``hi`` falls below ``T`` is beaten by at least ``budget`` others whatever its
exact value, so it cannot be picked; the others (those that could, including every float64 pick)
are recomputed through the float64 path, and the float64 ``top_k`` runs on arrays exact on all of
them. Each candidate left out is still beaten by ``budget`` recomputed ones (their exact values
lie above their ``lo ≽ T``), so the picks, their order and their scores are exactly those of the
float64 run; the reported scores of the others are their float32 estimates, within their
intervals (``info["fp32"]`` reports how many candidates were recomputed and the fraction of
uncertain pairs).

In a greedy batch each step is such a top-1 (exact picks); the scores a greedy query reports are
the first step's, exact for the first pick and for the candidates that could have been it.

"Exactly the float64 run" means the values the float64 path computes for those candidates; the
float64 path itself is deterministic only up to how its BLAS rounds a block of a given shape.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ntkal.kernels.rounding import UNIT_ROUNDOFF, gamma
from ntkal.lookahead import Lookahead, LookaheadBlock
from ntkal.lookahead.fp32_blocks import CovError
from ntkal.strategies.base import top_k
from ntkal.strategies.lookahead_scores import SCREEN_SLACK, EvalMargins, onehot

__all__ = [
    "BlockBounds",
    "CertifiedStats",
    "flip_norm_bounds",
    "certified_blocks_for",
    "select_certified",
]

_F64 = torch.float64


class CertifiedScorer(Protocol):
    """What :func:`select_certified` needs of a criterion (MLMOC is one)."""

    score: str

    def score_candidates(
        self,
        la: Lookahead,
        positions: np.ndarray | None = None,
        f_bar0: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def references(
        self, la: Lookahead, f_bar0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _block_size(self, la: Lookahead) -> int: ...


@dataclass
class BlockBounds:
    """Per candidate of a block ``(b,)``: flip fraction and norm intervals ``[lo, hi]`` that hold
    the float64 values, float32 estimates inside them, and the number of uncertain pairs."""

    flips_lo: torch.Tensor
    flips_hi: torch.Tensor
    flips_est: torch.Tensor
    norms_lo: torch.Tensor
    norms_hi: torch.Tensor
    norms_est: torch.Tensor
    uncertain: int


@dataclass
class CertifiedStats:
    """What a certified selection did (reported in ``QueryResult.info["fp32"]``)."""

    candidates: int = 0
    recomputed: int = 0
    uncertain_pairs: int = 0
    pairs: int = 0
    blocks_fp32: int = 0
    blocks_fp64: int = 0
    rounds: list = field(default_factory=list)

    def add(self, candidates: int, recomputed: int, uncertain: int, pairs: int) -> None:
        self.candidates += candidates
        self.recomputed += recomputed
        self.uncertain_pairs += uncertain
        self.pairs += pairs
        self.rounds.append(recomputed)

    def as_info(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "recomputed_float64": self.recomputed,
            "uncertain_pair_fraction": self.uncertain_pairs / max(1, self.pairs),
            "blocks_fp32": self.blocks_fp32,
            "blocks_float64": self.blocks_fp64,
            "recomputed_per_round": list(self.rounds),
        }


def flip_norm_bounds(
    block: LookaheadBlock,
    error: CovError | None,
    targets: torch.Tensor,
    ref_cls: torch.Tensor,
    margins: EvalMargins,
) -> BlockBounds:
    """Intervals holding what :func:`ntkal.strategies.lookahead_scores.flips_and_norms` computes in
    float64 for ``block`` (scalar kernels), from its float32 Σ and ``error`` (module docstring);
    ``error=None``: the block is float64 already and the intervals are points."""
    coef = block.coefficients(targets)  # (b, k), float64 as in the float64 path
    # (b, e), the block's layout: Σ[j, E] (float32), or G[j, E] (float64) in span; reductions
    # over E run along memory.
    direc = block.direction
    b, e = int(direc.shape[0]), int(direc.shape[1])
    absd = direc.abs().to(_F64)
    if error is None:
        delta = torch.zeros_like(absd)
    else:
        delta = error.matrix()
        if block.lev is not None:  # the leverage direction is float64: exact
            dep = block._step_b() != 0
            delta[dep, :] = 0.0
    spread = (coef.max(dim=1).values - coef.min(dim=1).values) * (1 + SCREEN_SLACK)
    wide = absd + delta
    sum_hi = wide.sum(dim=1)
    wide.mul_(spread[:, None]).add_((SCREEN_SLACK * margins.scale)[None, :])
    gap = margins.gap
    sure = wide < gap.abs()[None, :]
    del wide
    unsure = ~sure
    lo = (sure & (gap < 0)[None, :]).sum(dim=1).to(_F64)
    n_unsure = unsure.sum(dim=1).to(_F64)
    est = lo.clone()
    t, i = unsure.nonzero(as_tuple=True)
    if t.numel():
        sig = direc[t, i].to(_F64)
        preds = margins.f_bar[i] + sig[:, None] * coef[t]
        est.index_add_(0, t, (preds.argmax(dim=1) != margins.ref_cls[i]).to(_F64))
        flip, keep = _interval_argmax(margins, coef, i, t, sig, delta[t, i])
        lo.index_add_(0, t, flip.to(_F64))
        n_unsure.index_add_(0, t, -(flip | keep).to(_F64))
    denom = max(1, e)
    cn = coef.norm(dim=1)
    grow = 1.0 + 4.0 * gamma(e + 4, UNIT_ROUNDOFF[_F64])
    sum_lo = (absd - delta).clamp_min_(0.0).sum(dim=1)
    return BlockBounds(
        flips_lo=lo / denom,
        flips_hi=(lo + n_unsure) / denom,
        flips_est=est / denom,
        norms_lo=sum_lo * cn / grow,
        norms_hi=sum_hi * cn * grow,
        norms_est=absd.sum(dim=1) * cn,
        uncertain=int(n_unsure.sum()) if b else 0,
    )


#: Relative room left for float64 rounding when an uncertain pair's argmax is decided over
#: its whole interval of Σ (far above the few ulps of ``f̄ + Σ · coef``).
ARGMAX_SLACK = 1e-9


def _interval_argmax(
    margins: EvalMargins,
    coef: torch.Tensor,
    i: torch.Tensor,
    t: torch.Tensor,
    sig: torch.Tensor,
    rad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For pairs ``(i, t)`` with ``Σ_it ∈ [sig − rad, sig + rad]``: which surely flip and which
    surely keep the reference class whatever Σ is in the interval. ``h_c(σ) = (f̄_ic − f̄_ir)
    + σ (coef_tc − coef_tr)`` is linear in σ, so its extremes are at the ends: every
    ``h_c < −τ`` at both ends keeps the class ``r``; some ``h_c > τ`` at both ends flips it,
    with ``τ`` = :data:`ARGMAX_SLACK` times the magnitudes, so the float64 argmax (or screen)
    agrees."""
    fb, co = margins.f_bar[i], coef[t]
    r = margins.ref_cls[i][:, None]
    rel_f = fb - fb.gather(1, r)
    rel_c = co - co.gather(1, r)
    h_lo = rel_f + (sig - rad)[:, None] * rel_c
    h_hi = rel_f + (sig + rad)[:, None] * rel_c
    own = torch.zeros_like(rel_f, dtype=torch.bool).scatter_(1, r, True)
    tau = ARGMAX_SLACK * (
        fb.abs().max(dim=1).values + (sig.abs() + rad) * co.abs().max(dim=1).values
    )
    top = torch.maximum(h_lo, h_hi).masked_fill_(own, float("-inf")).max(dim=1).values
    bottom = torch.minimum(h_lo, h_hi).masked_fill_(own, float("-inf")).max(dim=1).values
    return bottom > tau, top < -tau


def certified_blocks_for(strategy: Any, la: Lookahead):
    """The engine's float32 scoring blocks (:class:`ntkal.lookahead.fp32_blocks.Fp32Blocks`)
    when ``strategy`` can be certified on them: MLMOC-like ``score`` ``"flip"`` / ``"norm"``, the
    streaming engine with ``score_precision="fp32"`` and a bounded scalar kernel; else ``None``
    (the selection then runs in float64)."""
    if getattr(strategy, "score", None) not in ("flip", "norm"):
        return None
    if not getattr(strategy, "certifies_fp32", False):
        return None
    blocks = getattr(la, "fp32_blocks", None)
    return blocks() if callable(blocks) else None


def _interval_scores(
    strategy: CertifiedScorer,
    la: Lookahead,
    fp32,
    positions: np.ndarray,
    f_bar0: torch.Tensor | None,
) -> tuple[dict[str, np.ndarray], int]:
    """Primary / secondary intervals and estimates of every candidate at ``positions``."""
    ref_eval, ref_cand = strategy.references(la, f_bar0)
    ref_eval = ref_eval.to(device=la.device, dtype=_F64)
    ref_cand = ref_cand.to(device=la.device, dtype=_F64)
    ref_cls = ref_eval.argmax(dim=1)
    k = int(ref_eval.shape[1])
    n = positions.size
    out = {key: np.zeros(n) for key in ("f_lo", "f_hi", "f_est", "n_lo", "n_hi", "n_est")}
    uncertain = 0
    start = 0
    for block, err in fp32.iter_blocks(positions, strategy._block_size(la)):
        stop = start + block.size
        margins = EvalMargins(block.f_bar_eval, ref_cls)
        targets = onehot(ref_cand[block.positions].argmax(dim=1), k)
        bb = flip_norm_bounds(block, err, targets, ref_cls, margins)
        for key, val in (
            ("f_lo", bb.flips_lo),
            ("f_hi", bb.flips_hi),
            ("f_est", bb.flips_est),
            ("n_lo", bb.norms_lo),
            ("n_hi", bb.norms_hi),
            ("n_est", bb.norms_est),
        ):
            out[key][start:stop] = val.cpu().numpy()
        uncertain += bb.uncertain
        start = stop
    if not all(np.isfinite(v).all() for v in out.values()):
        raise FloatingPointError("look-ahead scores are not finite")
    if strategy.score == "norm":
        keys = ("n_lo", "n_hi", "n_est", "f_lo", "f_hi", "f_est")
    else:
        keys = ("f_lo", "f_hi", "f_est", "n_lo", "n_hi", "n_est")
    names = ("p_lo", "p_hi", "p_est", "s_lo", "s_hi", "s_est")
    return {name: out[key] for name, key in zip(names, keys)}, uncertain


def could_be_picked(
    p_lo: np.ndarray,
    p_hi: np.ndarray,
    s_lo: np.ndarray,
    s_hi: np.ndarray,
    keys: np.ndarray,
    budget: int,
) -> np.ndarray:
    """Mask of candidates that could be among the ``budget`` first of ``top_k`` for some values
    in their boxes: those whose best corner ``(p_hi, s_hi, key)`` is not below the
    ``budget``-th best worst corner ``(p_lo, s_lo, key)`` (module docstring)."""
    order = np.lexsort((keys, -s_lo, -p_lo))
    t = order[budget - 1]
    tp, ts, tk = p_lo[t], s_lo[t], keys[t]
    return (p_hi > tp) | ((p_hi == tp) & ((s_hi > ts) | ((s_hi == ts) & (keys <= tk))))


def select_certified(
    strategy: CertifiedScorer,
    la: Lookahead,
    fp32,
    budget: int,
    rng: np.random.Generator,
    positions: np.ndarray | None = None,
    f_bar0: torch.Tensor | None = None,
    stats: CertifiedStats | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``top_k`` over ``positions`` (default: every candidate) from float32 blocks, exactly as
    the float64 scores would give it (module docstring): returns the picks (indices into
    ``positions``) and the (primary, secondary) scores, exact for every candidate that could be
    picked and float32 estimates (within their bounds) for the rest. ``rng`` advances as
    ``top_k`` advances it."""
    if positions is None:
        positions = np.arange(la.num_candidates)
    positions = np.asarray(positions, dtype=np.int64)
    n = positions.size
    before = (fp32.blocks_fp32, fp32.blocks_fp64)
    box, uncertain = _interval_scores(strategy, la, fp32, positions, f_bar0)
    keys = copy.deepcopy(rng).random((n,))  # the keys top_k draws next
    maybe = could_be_picked(box["p_lo"], box["p_hi"], box["s_lo"], box["s_hi"], keys, budget)
    primary, secondary = box["p_est"].copy(), box["s_est"].copy()
    exact_p, exact_s = strategy.score_candidates(la, positions[maybe], f_bar0)
    primary[maybe], secondary[maybe] = exact_p, exact_s
    chosen = top_k(primary, budget, rng, secondary=secondary)
    if not bool(maybe[chosen].all()):  # the argument above rules this out
        raise RuntimeError("certified selection picked a candidate it had not recomputed")
    if stats is not None:
        stats.add(n, int(maybe.sum()), uncertain, n * la.num_eval)
        stats.blocks_fp32 += fp32.blocks_fp32 - before[0]
        stats.blocks_fp64 += fp32.blocks_fp64 - before[1]
    return chosen, primary, secondary
