"""Which pool points a query scores, and how a strategy's positions map back to pool indices."""

from __future__ import annotations

import numpy as np

__all__ = ["query_seed", "sample_candidates", "pool_indices_of"]


def query_seed(seed: int, num_queries: int) -> int:
    """A fresh, reproducible seed per query: depends only on ``(seed, num_queries)``."""
    return int(np.random.default_rng([seed, num_queries]).integers(2**31 - 1))


def sample_candidates(available: np.ndarray, subset: int | None, seed: int) -> np.ndarray:
    """The sorted pool indices a query scores: all of ``available``, or a seeded random
    ``subset`` of them (the others go back to the pool for later queries)."""
    if available.size == 0:
        raise ValueError("every pool point is labelled: nothing left to query")
    if subset is not None and subset < available.size:
        rng = np.random.default_rng([seed, 1])
        return np.sort(rng.choice(available, size=subset, replace=False))
    return np.sort(available)


def pool_indices_of(candidates: np.ndarray, positions, budget: int, strategy: str) -> np.ndarray:
    """Pool indices of the chosen ``positions`` into ``candidates``, in choice order.

    Raises
    ------
    RuntimeError
        If the strategy did not return ``budget`` distinct positions in range.
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if (
        positions.size != budget
        or np.unique(positions).size != budget
        or positions.min() < 0
        or positions.max() >= candidates.size
    ):
        raise RuntimeError(
            f"strategy {strategy!r} broke the query contract: expected {budget} "
            f"distinct positions in [0, {candidates.size}), got {positions}"
        )
    return candidates[positions]
