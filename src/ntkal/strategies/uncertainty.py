"""Uncertainty sampling on the softmax of the trained network: entropy, margin, least confidence.

Probabilities are the softmax of the network's outputs in eval mode. For networks trained with MSE
on one-hot targets (the look-ahead method's default) the outputs are not log-probabilities, so the
softmax is a convention rather than a calibrated posterior; it is the one the comparisons in
Mohamadi et al. (2022) use, and it keeps these baselines identical across losses.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from scipy.special import xlogy

from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget, top_k
from ntkal.strategies.forward_passes import eval_probabilities
from ntkal.strategies.registry import register_strategy

__all__ = ["Entropy", "Margin", "LeastConfidence", "predictive_entropy"]


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) along the last axis, with ``0 log 0 = 0``."""
    return -xlogy(probs, probs).sum(axis=-1)


class _SoftmaxUncertainty(Strategy):
    """Top-``budget`` candidates by a score of their softmax probabilities."""

    @abstractmethod
    def score(self, probs: np.ndarray) -> np.ndarray:
        """One score per row of ``probs`` ``(m, k)``; higher = more uncertain."""

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        """Score all candidates in one batched eval pass; ties broken at random under the seed."""
        budget = check_budget(budget, context.num_candidates)
        probs = eval_probabilities(
            context.model,
            context.x_candidates,
            device=context.device,
            batch_size=context.batch_size,
        )
        scores = self.score(probs)
        indices = top_k(scores, budget, rng=np.random.default_rng(context.seed))
        return QueryResult(indices=indices.astype(np.int64), scores=scores)


@register_strategy
class Entropy(_SoftmaxUncertainty):
    """Highest predictive entropy of the softmax (Shannon 1948; Settles 2009, Sec. 3.1).

    Entropy uses the whole predictive distribution, so it favours points confused among many
    classes.
    """

    name = "entropy"

    def score(self, probs: np.ndarray) -> np.ndarray:
        """``-Σ_c p_c log p_c``."""
        return predictive_entropy(probs)


@register_strategy
class Margin(_SoftmaxUncertainty):
    """Smallest gap between the two largest softmax probabilities (Scheffer et al. 2001).

    Margin looks only at the decision between the two leading classes, so it favours points on a
    decision boundary even when the remaining classes are confidently ruled out.
    """

    name = "margin"

    def score(self, probs: np.ndarray) -> np.ndarray:
        """``-(p_(1) - p_(2))`` with ``p_(1) >= p_(2)`` the two largest probabilities of each row."""
        if probs.shape[1] < 2:
            raise ValueError("margin sampling needs at least two classes")
        top2 = -np.partition(-probs, 1, axis=1)[:, :2]  # top2[:, 0] >= top2[:, 1]
        return -(top2[:, 0] - top2[:, 1])


@register_strategy
class LeastConfidence(_SoftmaxUncertainty):
    """Lowest probability of the predicted class (Lewis & Gale 1994).

    Least confidence asks how likely the network's own prediction is to be wrong.
    """

    name = "least_confidence"

    def score(self, probs: np.ndarray) -> np.ndarray:
        """``1 - max_c p_c``."""
        return 1.0 - probs.max(axis=1)
