"""Expected error reduction (EER) on the linearised network.

Roy & McCallum, "Toward Optimal Active Learning through Sampling Estimation of Error Reduction",
ICML 2001. EER picks the candidate whose label, in expectation over the model's own belief about
it, most reduces the model's estimated error on the unlabelled data, the error of the retrained
model being estimated with its own posterior (log-loss: the entropy of its predictions; 0/1 loss:
one minus their largest probability):

    EER(x_j) = err(f̄) − Σ_y p(y | x_j) · err(f^{(j,y)}),
    err(f) = (1/|E|) Σ_{i∈E} H(softmax(f(x_i) / T))        (or 1 − max softmax)

The original retrains a naive-Bayes classifier per candidate and label; the reference code of
Mohamadi, Bae & Sutherland (NeurIPS 2022) retrains the network by SGD. Here the retrained outputs
come from the network linearised at its trained weights, in closed form for every candidate and
label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ntkal.lookahead import LookaheadBlock
from ntkal.strategies.lookahead import LookaheadStrategy
from ntkal.strategies.output_change import _check_temperature, label_probabilities

__all__ = ["EER", "ERRORS", "estimated_error"]

ERRORS = ("entropy", "zero_one")
_F64 = torch.float64


def estimated_error(outputs: torch.Tensor, error: str, temperature: float) -> torch.Tensor:
    """Self-estimated error per point of ``outputs`` ``(..., k)``: the entropy of
    ``softmax(outputs / T)`` or ``1 − max softmax``; shape ``outputs.shape[:-1]``."""
    logp = torch.log_softmax(outputs.to(_F64) / temperature, dim=-1)
    if error == "entropy":
        return -(logp.exp() * logp).sum(dim=-1)
    return 1.0 - logp.max(dim=-1).values.exp()


class EER(LookaheadStrategy):
    """Expected Error Reduction (Roy & McCallum, 2001), retraining by the empirical NTK.

    For every candidate ``x_j`` and label ``y``, the linearised network retrained on
    ``L ∪ {(x_j, y)}`` predicts the evaluation set E; its self-estimated error there (mean entropy
    or 0/1 loss of ``softmax(f / T)``) is averaged over ``y ~ p(y | x_j)`` (softmax of the trained
    network's outputs at ``T``) and subtracted from the current linearised model's error. Higher
    means a larger expected reduction. The secondary score (ties) is the expected mean output
    change (EMOC, ℓ₂).

    Parameters
    ----------
    error : {"entropy", "zero_one"}
        Log-loss (entropy) or 0/1-loss estimate of the error, as in Roy & McCallum.
    temperature : float
        Softmax temperature ``T`` of both the label distribution and the error estimate;
        MSE-trained networks output near one-hot vectors whose plain softmax is nearly flat.
    **lookahead : Any
        ``settings``, ``selection``, ``greedy_target`` and flat settings (``kernel``,
        ``eval_size``, ...), as in :class:`ntkal.strategies.lookahead.LookaheadStrategy`.

    References
    ----------
    Roy & McCallum, ICML 2001 (EER); Mohamadi, Bae & Sutherland, NeurIPS 2022 (look-ahead by the
    eNTK; their baseline EER retrains by SGD).
    """

    name = "eer"

    def __init__(self, error: str = "entropy", temperature: float = 1.0, **lookahead: Any) -> None:
        super().__init__(**lookahead)
        if error not in ERRORS:
            raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
        self.error = error
        self.temperature = _check_temperature(temperature)

    def score_block(
        self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        t = self.temperature
        probs = label_probabilities(ref_cand, t)  # (b, k)
        k = probs.shape[1]
        current = estimated_error(block.f_bar_eval, self.error, t).mean()
        expected = torch.zeros(block.size, dtype=_F64, device=probs.device)
        change = torch.zeros_like(expected)
        for c in range(k):
            targets = torch.zeros(block.size, k, dtype=_F64, device=probs.device)
            targets[:, c] = 1.0
            delta = block.delta(targets)  # (b, e, k)
            after = estimated_error(block.f_bar_eval.unsqueeze(0) + delta, self.error, t)
            expected += probs[:, c] * after.mean(dim=-1)
            change += probs[:, c] * delta.norm(dim=-1).mean(dim=-1)
        return (current - expected).cpu().numpy(), change.cpu().numpy()
