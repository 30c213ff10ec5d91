"""Score primitives of the look-ahead family: flips and output change on the evaluation set.

Shared by the closed-form criteria (:mod:`ntkal.strategies.lookahead`) and their SGD ground truth
(:mod:`ntkal.strategies.sgd_lookahead`), so both score a retrained prediction the same way.

With scalar kernels the flip test runs on margins: a point of ``E`` whose gap between the
reference class and the runner-up under ``f̄`` exceeds the largest change the candidate can make to
it (``|Σ_ij| · range(coef_j)``) cannot flip, one below minus that bound has flipped; only the rest
get the exact ``k``-way argmax, so the counts equal the argmax over ``f̄ + delta`` exactly.
"""

from __future__ import annotations

import torch

from ntkal.arguments import as_choice
from ntkal.lookahead import LookaheadBlock

__all__ = [
    "SCORES",
    "REFERENCES",
    "flip_fraction",
    "output_change",
    "EvalMargins",
    "flips_and_norms",
    "check_score_reference",
    "onehot",
    "SCREEN_SLACK",
]

SCORES = ("flip", "norm", "expected")
REFERENCES = ("f0", "base")
_F64 = torch.float64


def flip_fraction(preds: torch.Tensor, ref_classes: torch.Tensor) -> torch.Tensor:
    """Fraction of points whose argmax under ``preds`` ``(b, m, k)`` differs from ``ref_classes``
    ``(m,)``; shape ``(b,)``."""
    return (preds.argmax(dim=-1) != ref_classes.unsqueeze(0)).to(_F64).mean(dim=-1)


def output_change(preds: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``Σ_i ‖preds_i − base_i‖₂`` over the points of ``S``; shape ``(b,)``."""
    return (preds - base.unsqueeze(0)).norm(dim=-1).sum(dim=-1)


class EvalMargins:
    """Per point of E, what the flip test needs from the base predictions f̄: the gap between
    f̄ at the reference class and the best other class (negative when f̄ already disagrees with
    the reference) and a rounding scale."""

    def __init__(self, f_bar_eval: torch.Tensor, ref_cls: torch.Tensor) -> None:
        at_ref = f_bar_eval.gather(1, ref_cls[:, None])[:, 0]
        others = f_bar_eval.scatter(1, ref_cls[:, None], float("-inf"))
        self.gap = (
            at_ref - others.max(dim=1).values
            if f_bar_eval.shape[1] > 1
            else torch.full_like(at_ref, float("inf"))
        )
        self.scale = f_bar_eval.abs().max(dim=1).values
        self.f_bar = f_bar_eval
        self.ref_cls = ref_cls


#: Relative slack of the margin screen: a decision is taken only when it holds with this much
#: room beyond float64 rounding of f̄ + Σ_ij·coef (a few ulps of the magnitudes involved).
_SCREEN_SLACK = 1e-12
SCREEN_SLACK = _SCREEN_SLACK


def flips_and_norms(
    block: LookaheadBlock,
    targets: torch.Tensor,
    ref_cls: torch.Tensor,
    margins: EvalMargins | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip fraction on E against ``ref_cls`` and ``Σ_i ‖f'(x_i) − f̄(x_i)‖`` per candidate.

    Scalar kernels: f'(x_i) = f̄(x_i) + Σ_ij · coef_j with one ``coef_j`` per candidate, so the
    change in "reference class minus class c" is ``Σ_ij (coef_jc' − coef_jc)``, at most
    ``|Σ_ij| · range(coef_j)`` in size. Points of E whose gap to the runner-up is larger than that
    bound cannot change class (smaller than minus it: they have changed for sure); only the
    undecided pairs get the exact k-way argmax, computed exactly as the full predictions would
    be, so the counts equal the argmax over f̄ + delta. The norm is ``‖coef_j‖ · Σ_i |Σ_ij|``.
    Full (k × k block) kernels fall back to the explicit predictions.
    """
    if margins is None:
        preds = block.retrained(targets)
        return flip_fraction(preds, ref_cls), output_change(preds, block.f_bar_eval)
    coef = block.coefficients(targets)  # (b, k)
    cov = block.direction  # (b, e): Σ[E, j], or G[E, j] in span
    e = cov.shape[1]
    # Work in the layout Σ[E, J] arrived in ((b, e) rows, or a transposed (e, b) view of a held
    # Σ): reductions then run along memory. ``ax`` is the E axis; ``per_t`` / ``per_i`` shape
    # per-candidate / per-point vectors for broadcasting.
    mat, ax = (cov, 1) if cov.stride(-1) == 1 or cov.shape[0] <= 1 else (cov.T, 0)
    per_t = (lambda v: v[:, None]) if ax == 1 else (lambda v: v[None, :])
    per_i = (lambda v: v[None, :]) if ax == 1 else (lambda v: v[:, None])
    spread = (coef.max(dim=1).values - coef.min(dim=1).values) * (1 + _SCREEN_SLACK)
    bound = mat.abs()  # |Σ_ij|
    norms = bound.sum(dim=ax) * coef.norm(dim=1)
    bound.mul_(per_t(spread)).add_(per_i(_SCREEN_SLACK * margins.scale))  # + rounding room
    undecided = bound >= per_i(margins.gap.abs())
    del bound
    pairs = undecided.nonzero(as_tuple=True)
    t, i = pairs if ax == 1 else (pairs[1], pairs[0])
    neg = margins.gap < 0  # f̄ already off the reference class
    undecided &= per_i(neg)
    counts = (int(neg.sum()) - undecided.sum(dim=ax)).to(_F64)  # sure flips
    if t.numel():
        preds = margins.f_bar[i] + cov[t, i][:, None] * coef[t]
        changed = (preds.argmax(dim=1) != margins.ref_cls[i]).to(_F64)
        counts.index_add_(0, t, changed)
    return counts / max(1, e), norms


def check_score_reference(score: str, reference: str) -> tuple[str, str]:
    """``score`` and ``reference`` checked against :data:`SCORES` and :data:`REFERENCES`."""
    return as_choice(score, "score", SCORES), as_choice(reference, "reference", REFERENCES)


def onehot(classes: torch.Tensor, k: int) -> torch.Tensor:
    """Class indices as float64 one-hot rows."""
    return torch.nn.functional.one_hot(classes.long(), k).to(_F64)
