"""Core-set selection: k-center greedy cover of the embedding space."""

from __future__ import annotations

import numpy as np
import torch

from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget
from ntkal.strategies.forward_passes import eval_embeddings
from ntkal.strategies.registry import register_strategy

__all__ = ["Coreset"]


def _min_sq_distances(
    points: torch.Tensor, sq_points: torch.Tensor, centres: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """Squared distance of each point to its nearest centre, ``‖a‖² + ‖b‖² − 2 a·b`` clamped at 0
    (one matrix product per chunk of centres; no pairwise-difference tensor as in ``cdist``)."""
    out = torch.full((points.shape[0],), float("inf"), dtype=points.dtype)
    for start in range(0, centres.shape[0], chunk):
        c = centres[start : start + chunk]
        d = sq_points[:, None] + (c * c).sum(dim=1)[None, :] - 2.0 * (points @ c.T)
        out = torch.minimum(out, d.min(dim=1).values.clamp_min_(0.0))
    return out


@register_strategy
class Coreset(Strategy):
    """k-center greedy on penultimate embeddings, labelled points as initial centres.

    Sener & Savarese (2018) bound the active learner's generalisation gap by the covering radius of
    the labelled set, so they query points minimising the largest distance of any pool point to
    its nearest labelled one; the greedy 2-approximation repeatedly takes the candidate farthest
    from all centres so far.

    Notes
    -----
    Distances are Euclidean in ``model.embed`` space, computed in float64 as
    ``‖a‖² + ‖b‖² − 2 a·b`` (clamped at 0): each greedy step is one matrix-vector product. With an
    empty labelled set the first centre
    is drawn uniformly under ``context.seed``; ties then break by lowest position. ``scores`` are
    each candidate's distance to its nearest labelled point (``None`` with no labelled points).
    The robust (outlier-tolerant) MIP variant of the paper is not implemented.
    """

    name = "coreset"

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        """Greedy k-center selection of ``budget`` candidates."""
        budget = check_budget(budget, context.num_candidates)
        emb = eval_embeddings(
            context.model,
            context.x_candidates,
            device=context.device,
            batch_size=context.batch_size,
        ).double()
        sq_emb = (emb * emb).sum(dim=1)
        chosen: list[int] = []
        scores = None
        if context.x_labelled is not None and context.x_labelled.shape[0] > 0:
            labelled = eval_embeddings(
                context.model,
                context.x_labelled,
                device=context.device,
                batch_size=context.batch_size,
            ).double()
            dist = _min_sq_distances(emb, sq_emb, labelled)
            scores = dist.sqrt().numpy()
        else:
            first = int(np.random.default_rng(context.seed).integers(emb.shape[0]))
            chosen.append(first)
            dist = (sq_emb + sq_emb[first] - 2.0 * (emb @ emb[first])).clamp_min_(0.0)
        while len(chosen) < budget:
            dist_pick = dist.clone()
            if chosen:
                dist_pick[chosen] = -1.0
            nxt = int(torch.argmax(dist_pick))
            chosen.append(nxt)
            step = (sq_emb + sq_emb[nxt] - 2.0 * (emb @ emb[nxt])).clamp_min_(0.0)
            dist = torch.minimum(dist, step)
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=scores)
