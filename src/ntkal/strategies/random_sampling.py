"""Uniform random sampling: the baseline every acquisition function has to beat."""

from __future__ import annotations

import numpy as np

from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget
from ntkal.strategies.registry import register_strategy

__all__ = ["RandomSampling"]


@register_strategy
class RandomSampling(Strategy):
    """Uniformly random candidates (the passive-learning baseline).

    Every active-learning paper, including Mohamadi et al. (2022, Sec. 5), reports it because
    strong-looking acquisition functions often fail to beat it. Scores are not defined (``None``).
    """

    name = "random"

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        """Draw ``budget`` distinct positions with ``numpy.random.default_rng(context.seed)``."""
        budget = check_budget(budget, context.num_candidates)
        rng = np.random.default_rng(context.seed)
        indices = rng.choice(context.num_candidates, size=budget, replace=False)
        return QueryResult(indices=indices.astype(np.int64))
