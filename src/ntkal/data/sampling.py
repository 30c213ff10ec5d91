"""Seeded stratified sampling, shared by dataset subsets and initial labelled pools."""

from __future__ import annotations

import numpy as np

from ntkal.arguments import is_integer

__all__ = ["stratified_indices", "subset_positions"]


def stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Choose ``n`` distinct positions of ``y`` with class proportions kept as close as possible.

    Every class present gets at least one position when ``n`` is at least the number of classes
    (a class missing from an initial set or a small test subset would make accuracy and training
    degenerate); otherwise counts follow the class proportions, rounded by largest remainder. With
    fewer positions than classes, ``n`` classes are picked at random, one position each.

    Parameters
    ----------
    y : array of int
        Labels, one per position.
    n : int
        How many positions to choose, ``0 <= n <= len(y)``.
    rng : numpy.random.Generator
        Source of all randomness, so that the choice is reproducible.

    Returns
    -------
    numpy.ndarray
        Sorted ``int64`` positions.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    n = int(n)
    if not 0 <= n <= y.shape[0]:
        raise ValueError(f"cannot choose {n} of {y.shape[0]} items")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    k = int(classes.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n < k:
        take = np.zeros(k, dtype=np.int64)
        take[rng.choice(k, size=n, replace=False)] = 1
    else:
        quota = n * counts / counts.sum()
        take = np.clip(np.floor(quota), 1, counts).astype(np.int64)
        tiebreak = rng.random(k)  # ties never favour a class because of its label
        # At most k steps each way: flooring loses < 1 per class, the minimum of one adds <= 1.
        while take.sum() < n:
            deficit = np.where(take < counts, quota - take, -np.inf)
            take[np.lexsort((tiebreak, -deficit))[0]] += 1
        while take.sum() > n:
            surplus = np.where(take > 1, take - quota, -np.inf)
            take[np.lexsort((tiebreak, -surplus))[0]] -= 1
    members = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    chosen = [
        rng.choice(members[s : s + c], size=t, replace=False)
        for s, c, t in zip(starts, counts, take)
        if t
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def subset_positions(
    y: np.ndarray, size: int | None, seed: int, stream: int, what: str
) -> np.ndarray | None:
    """Positions of a stratified subset of ``size`` items of ``y``, or ``None`` for "keep all".

    ``stream`` separates independent choices made from one ``seed`` (0: train, 1: test), and
    ``what`` names the argument in error messages.
    """
    if size is None:
        return None
    if not is_integer(size):
        raise TypeError(f"{what} must be an integer or None, got {type(size).__name__}")
    if not 1 <= size <= len(y):
        raise ValueError(f"{what} must be between 1 and {len(y)} (the full split), got {size}")
    rng = np.random.default_rng([int(seed), stream])
    return stratified_indices(y, int(size), rng)
