"""BADGE: diverse, uncertain batches from k-means++ seeding on last-layer gradient embeddings."""

from __future__ import annotations

import numpy as np
import torch

from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget
from ntkal.strategies.forward_passes import eval_embeddings
from ntkal.strategies.registry import register_strategy

__all__ = ["BADGE"]


def _sq_distances_to(c: int, a: np.ndarray, h: np.ndarray, sq_norm: np.ndarray) -> np.ndarray:
    """``‖g_i − g_c‖²`` for every ``i``, with ``g_i = a_i ⊗ [h_i, 1]`` never formed:
    ``<g_i, g_c> = <a_i, a_c> (<h_i, h_c> + 1)``; clamped at 0 against rounding."""
    d = sq_norm + sq_norm[c] - 2.0 * (a @ a[c]) * (h @ h[c] + 1.0)
    return np.maximum(d, 0.0)


@register_strategy
class BADGE(Strategy):
    """k-means++ seeding on hallucinated last-layer gradients (Ash et al. 2020).

    Each candidate is embedded as the gradient of the cross-entropy loss at its *predicted* label
    ``ŷ`` w.r.t. the final linear layer, weights and bias:
    ``g = (p - onehot(ŷ)) ⊗ [h, 1]`` with ``h = model.embed(x)`` and ``p`` the softmax. Its norm
    grows with uncertainty (a lower bound on the gradient for any label) and its direction encodes
    what the point would teach, so k-means++ seeding (Arthur & Vassilvitskii 2007) — first the
    largest-norm embedding, as in the authors' code, then ``D²`` sampling — picks a batch both
    uncertain and diverse.

    Notes
    -----
    The ``k (d + 1)``-dimensional embeddings are never materialised: the inner product of two of
    them factorises as ``<a_i, a_j> (<h_i, h_j> + 1)``, so each seeding step costs ``O(m (k + d))``.
    ``scores`` are the gradient-embedding norms. Sampling uses ``context.seed``.
    """

    name = "badge"

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        """k-means++ seeds of the gradient embeddings of the candidates."""
        budget = check_budget(budget, context.num_candidates)
        emb, logits = eval_embeddings(
            context.model,
            context.x_candidates,
            device=context.device,
            batch_size=context.batch_size,
            with_logits=True,
        )
        probs = torch.softmax(logits, dim=1)
        grad = probs.clone()
        grad[torch.arange(grad.shape[0]), probs.argmax(dim=1)] -= 1.0  # dCE/dlogits at ŷ
        a, h = grad.numpy(), emb.numpy()
        sq_a = (a * a).sum(axis=1)
        sq_h = (h * h).sum(axis=1) + 1.0  # the bias appends a constant 1 to h
        sq_norm = sq_a * sq_h
        rng = np.random.default_rng(context.seed)
        n = a.shape[0]
        chosen = [int(np.argmax(sq_norm))]
        dist = np.full(n, np.inf)
        for _ in range(1, budget):
            dist = np.minimum(dist, _sq_distances_to(chosen[-1], a, h, sq_norm))
            dist[chosen] = 0.0
            total = dist.sum()
            if total > 0 and np.isfinite(total):
                nxt = int(rng.choice(n, p=dist / total))
            else:  # every remaining embedding coincides with a chosen one: pick uniformly
                rest = np.setdiff1d(np.arange(n), chosen)
                nxt = int(rng.choice(rest))
            chosen.append(nxt)
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=np.sqrt(sq_norm))
