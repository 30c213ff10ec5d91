"""Choosing a batch from look-ahead scores: top-k, or greedy with closed-form conditioning.

Kept apart from the criteria, as BoTorch keeps ``optimize_acqf_discrete`` apart from its
acquisition functions: a criterion says how good each candidate is (``score_candidates``), a
selection rule turns that into a batch. Any :class:`ntkal.strategies.lookahead.LookaheadStrategy`
works with either rule.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ntkal.lookahead import Lookahead
from ntkal.lookahead.sharded import BlockScorer, ShardedPool
from ntkal.strategies.base import top_k
from ntkal.strategies.certified import CertifiedStats, certified_blocks_for, select_certified
from ntkal.strategies.lookahead_scores import onehot


class LookaheadScorer(Protocol):
    """What a selection rule needs of a criterion (every
    :class:`~ntkal.strategies.lookahead.LookaheadStrategy` is one): scores of candidates, and the
    reference predictions pseudo-targets are taken from."""

    def score_candidates(
        self,
        la: Lookahead,
        positions: np.ndarray | None = None,
        f_bar0: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def references(
        self, la: Lookahead, f_bar0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


__all__ = [
    "LookaheadScorer",
    "SELECTIONS",
    "GREEDY_TARGETS",
    "select_topk",
    "select_greedy",
    "select_on_pool",
    "pseudo_target",
    "pick_best",
    "target_of",
]

#: ``"topk"``: the best ``budget`` candidates scored independently against L (the reference's
#: batch mode); ``"greedy"``: one at a time, conditioning on each pick's pseudo-target.
SELECTIONS = ("topk", "greedy")
#: What a greedy pick is conditioned on: the one-hot most likely class, or the softmax.
GREEDY_TARGETS = ("most_likely", "expected")


def pick_best(
    strategy: LookaheadScorer,
    la: Lookahead,
    budget: int,
    rng: np.random.Generator,
    positions: np.ndarray | None = None,
    f_bar0: torch.Tensor | None = None,
    stats: CertifiedStats | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``budget`` best of ``positions`` (default: all candidates; indices into them) and
    the (primary, secondary) scores. In float64, or from certified float32 blocks where the
    engine and the criterion allow (:mod:`ntkal.strategies.certified`; same picks and picked
    scores; ``stats`` is filled then)."""
    fp32 = certified_blocks_for(strategy, la)
    if fp32 is not None:
        return select_certified(strategy, la, fp32, budget, rng, positions, f_bar0, stats)  # type: ignore[arg-type]
    primary, secondary = strategy.score_candidates(la, positions, f_bar0)
    return top_k(primary, budget, rng, secondary=secondary), primary, secondary


def select_topk(
    strategy: LookaheadScorer,
    la: Lookahead,
    budget: int,
    rng: np.random.Generator,
    stats: CertifiedStats | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate scored once against L; the ``budget`` best (ties: secondary score, then
    ``rng``). Returns the picks and the (primary, secondary) scores of every candidate (with
    ``score_precision="fp32"``: exact for every candidate that could be picked, see
    :func:`pick_best`)."""
    return pick_best(strategy, la, budget, rng, stats=stats)


def pseudo_target(
    strategy: LookaheadScorer,
    la: Lookahead,
    position: int,
    target: str,
    f_bar0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Target ``(k,)`` a greedy pick at ``position`` is conditioned on: the one-hot argmax, or the
    softmax, of the strategy's reference prediction there, which (``f_bar0`` given) includes what
    the earlier picks of the batch taught the linearised network (``f̄_t − f̄_0``)."""
    _, ref_cand = strategy.references(la, f_bar0)
    return target_of(ref_cand[int(position)], target)


def target_of(ref: torch.Tensor, target: str) -> torch.Tensor:
    """The pseudo-target ``(k,)`` for reference prediction ``ref`` ``(k,)``: one-hot argmax
    (``"most_likely"``) or softmax (``"expected"``)."""
    ref = ref.to(torch.float64)
    if target == "expected":
        return torch.softmax(ref, dim=0)
    return onehot(ref.argmax(), ref.shape[0])


def select_greedy(
    strategy: LookaheadScorer,
    la: Lookahead,
    budget: int,
    rng: np.random.Generator,
    target: str = "most_likely",
    stats: CertifiedStats | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy batch: pick the best candidate, condition ``la`` on its pseudo-target (in place,
    :func:`pseudo_target`), rescore the rest, repeat ``budget`` times: the batch analogue of the
    sequential mode, which stops a batch from spending its budget on near-copies of one point.
    Returns the picks in order and the first round's (primary, secondary) scores."""
    f_bar0 = la.base_predictions()
    remaining = np.ones(la.num_candidates, dtype=bool)
    chosen: list[int] = []
    primary = secondary = np.zeros(0)
    for step in range(budget):
        positions = np.flatnonzero(remaining)
        pick, p, s = pick_best(strategy, la, 1, rng, positions, f_bar0, stats)
        if step == 0:
            primary, secondary = p, s
        best = int(positions[pick[0]])
        chosen.append(best)
        remaining[best] = False
        if step + 1 < budget:
            la.condition(best, pseudo_target(strategy, la, best, target, f_bar0))
    return np.asarray(chosen, dtype=np.int64), primary, secondary


def select_on_pool(
    strategy: BlockScorer,
    pool: ShardedPool,
    budget: int,
    rng: np.random.Generator,
    selection: str = "topk",
    target: str = "most_likely",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`select_topk` or :func:`select_greedy` with the scores computed on a pool's
    executor (:class:`ntkal.lookahead.sharded.ShardedPool`): the same rules and random draws, so
    the same picks. A greedy pick's pseudo-target is taken on the coordinator and every worker
    is conditioned on it before the next pass."""
    if selection == "topk":
        primary, secondary = pool.score(strategy)
        return top_k(primary, budget, rng, secondary=secondary), primary, secondary
    remaining = np.ones(pool.num_candidates, dtype=bool)
    chosen: list[int] = []
    primary = secondary = np.zeros(0)
    for step in range(budget):
        positions = np.flatnonzero(remaining)
        p, s = pool.score(strategy, positions, greedy=True)
        if step == 0:
            primary, secondary = p, s
        best = int(positions[top_k(p, 1, rng, secondary=s)[0]])
        chosen.append(best)
        remaining[best] = False
        if step + 1 < budget:
            pool.condition(best, target_of(pool.reference_at(strategy, best), target))
    return np.asarray(chosen, dtype=np.int64), primary, secondary
