"""Expected model output change (EMOC) on the linearised network.

Freytag, Rodner & Denzler, "Selecting Influential Examples: Active Learning with Expected Model
Output Changes", ECCV 2014. EMOC asks how much the model's outputs on the data would change, in
expectation over the unknown label of a candidate, if the model were retrained with it:

    EMOC(x_j) = Σ_y p(y | x_j) · (1/|E|) Σ_{i∈E} ‖f^{(j,y)}(x_i) − f̄(x_i)‖_p

Freytag et al. compute it for Gaussian-process regression in closed form; here the retrained
outputs ``f^{(j,y)}`` come from the network linearised at its trained weights (Mohamadi, Bae &
Sutherland, NeurIPS 2022), so the same closed form applies to a deep network. MLMOC with
``score="norm"`` is the special case that puts all the weight on the most likely label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ntkal.arguments import as_float
from ntkal.lookahead import LookaheadBlock
from ntkal.strategies.lookahead import LookaheadStrategy

__all__ = ["EMOC", "expected_output_change"]

_F64 = torch.float64


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def label_probabilities(ref_cand: torch.Tensor, temperature: float) -> torch.Tensor:
    """p(y | x_j) ``(b, k)``: softmax of the reference outputs divided by ``temperature``."""
    return torch.softmax(ref_cand.to(_F64) / temperature, dim=1)


def expected_output_change(
    block: LookaheadBlock, probs: torch.Tensor, order: float = 1.0
) -> torch.Tensor:
    """``Σ_y probs[:, y] · mean_{i∈E} ‖f^{(j,y)}(x_i) − f̄(x_i)‖_order`` for the block, ``(b,)``."""
    k = probs.shape[1]
    out = torch.zeros(block.size, dtype=_F64, device=probs.device)
    for c in range(k):
        targets = torch.zeros(block.size, k, dtype=_F64, device=probs.device)
        targets[:, c] = 1.0
        change = block.delta(targets)  # (b, e, k)
        out += probs[:, c] * torch.linalg.vector_norm(change, ord=order, dim=-1).mean(dim=-1)
    return out


class EMOC(LookaheadStrategy):
    """Expected Model Output Change (Freytag et al., 2014), retraining by the empirical NTK.

    Every candidate ``x_j`` is scored by the expected (over ``y ~ p(y | x_j)``) mean ``ℓ_p`` norm of
    the change of the linearised network's outputs on the evaluation set E caused by retraining
    with ``(x_j, y)``; ``p(y | x_j)`` is the softmax of the trained network's outputs (divided by
    ``temperature``: MSE-trained networks output near one-hot vectors whose plain softmax is nearly
    flat). The secondary score (ties) is the posterior variance ``Σ_jj`` (its trace for full
    kernels).

    Parameters
    ----------
    order : float
        The norm's order ``p``; 1 as in Freytag et al.
    temperature : float
        Softmax temperature of the label distribution.
    **lookahead : Any
        ``settings``, ``selection``, ``greedy_target`` and flat settings (``kernel``,
        ``eval_size``, ...), as in :class:`ntkal.strategies.lookahead.LookaheadStrategy`.

    References
    ----------
    Freytag, Rodner & Denzler, ECCV 2014 (EMOC); Käding et al., ACCV 2016 (EMOC for deep
    networks, by gradients); Mohamadi, Bae & Sutherland, NeurIPS 2022 (look-ahead by the eNTK).
    """

    name = "emoc"

    def __init__(self, order: float = 1.0, temperature: float = 1.0, **lookahead: Any) -> None:
        super().__init__(**lookahead)
        self.order = as_float(order, "order", minimum=1.0)
        self.temperature = _check_temperature(temperature)

    def score_block(
        self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        probs = label_probabilities(ref_cand, self.temperature)
        primary = expected_output_change(block, probs, self.order)
        return primary.cpu().numpy(), own_variance(block).cpu().numpy()


def own_variance(block: LookaheadBlock) -> torch.Tensor:
    """Σ_jj of the block's candidates (the trace of the clamped ``k × k`` block for full kernels)."""
    if block.pivot_evecs is None:
        return block.pivot_evals.to(_F64)
    return block.pivot_evals.to(_F64).sum(dim=1)
