"""Bayesian active learning by disagreement with MC dropout: BALD and its batch-aware BatchBALD."""
from __future__ import annotations

import numpy as np

from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget, top_k
from ntkal.strategies.forward_passes import mc_dropout_probabilities
from ntkal.strategies.registry import register_strategy
from ntkal.strategies.uncertainty import predictive_entropy

__all__ = ["BALD", "BatchBALD", "mutual_information"]


def mutual_information(probs: np.ndarray) -> np.ndarray:
    """``I(y; w) = H(E_t p_t) - E_t H(p_t)`` per point from MC samples ``probs`` ``(T, n, k)``."""
    mi = predictive_entropy(probs.mean(axis=0)) - predictive_entropy(probs).mean(axis=0)
    return np.maximum(mi, 0.0)  # non-negative in exact arithmetic


def _check_samples(num_samples: int) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    return int(num_samples)


@register_strategy
class BALD(Strategy):
    """Largest mutual information between a label and the weights, under MC dropout.

    Houlsby et al. (2011) and Gal, Islam & Ghahramani (2017): ``I(y; w) = H[y] - E_w H[y | w]``
    is high where the MC-dropout networks each predict confidently but disagree with one another —
    uncertainty that a label would remove — and low where every network is equally unsure (noise).

    Parameters
    ----------
    num_samples : int
        Number ``T`` of MC-dropout masks.

    Notes
    -----
    Needs a model built with ``dropout > 0``; masks are seeded by ``context.seed`` and shared by
    all candidates within one sample (see :func:`~ntkal.strategies.forward_passes.mc_dropout_probabilities`).
    """

    name = "bald"
    needs_dropout = True

    def __init__(self, num_samples: int = 20) -> None:
        self.num_samples = _check_samples(num_samples)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        """Top-``budget`` candidates by their individual mutual information."""
        budget = check_budget(budget, context.num_candidates)
        probs = mc_dropout_probabilities(context.model, context.x_candidates,
                                         num_samples=self.num_samples, seed=context.seed,
                                         device=context.device, batch_size=context.batch_size)
        scores = mutual_information(probs)
        indices = top_k(scores, budget, rng=np.random.default_rng(context.seed))
        return QueryResult(indices=indices.astype(np.int64), scores=scores)


@register_strategy
class BatchBALD(Strategy):
    """Greedy maximisation of the joint mutual information of the whole batch with the weights.

    Kirsch, van Amersfoort & Gal (2019): BALD scores points one at a time, so it happily picks
    near-duplicates whose labels tell the same thing. BatchBALD instead adds, at each greedy step,
    the candidate ``i`` maximising ``I(y_A, y_i; w) = H(y_A, y_i) - Σ_{j∈A∪{i}} E_w H(y_j | w)``,
    which is submodular, so the greedy batch is within ``1 - 1/e`` of the best.

    The joint entropy ``H(y_A, y_i)`` uses the MC-dropout mixture
    ``p(y_A) = 1/T Σ_t Π_j p_t(y_j)``:

    * **exact** while the configurations of ``y_A`` number at most ``max_configurations``
      (``k^|A|`` of them), by summing over all of them;
    * **sampled** beyond, with ``num_sampled_configurations`` configurations of ``y_A`` drawn
      from ``p(y_A)`` (the exact set is resampled once, then each new label is drawn from
      ``p(y_i | y_A)``) and ``H(y_A, y_i)`` estimated by Monte Carlo over them, as in the paper.

    Parameters
    ----------
    num_samples : int
        Number ``T`` of MC-dropout masks (consistent across candidates).
    max_configurations : int
        Largest number of label configurations of the batch summed over exactly.
    num_sampled_configurations : int
        Number of configurations drawn once the exact sum is too large.

    Notes
    -----
    ``scores`` are the individual BALD scores (the first greedy step); the greedy batch's joint
    mutual information after each pick is in ``info["batch_mutual_information"]``.
    """

    name = "batchbald"
    needs_dropout = True

    def __init__(self, num_samples: int = 20, max_configurations: int = 1024,
                 num_sampled_configurations: int = 1024) -> None:
        self.num_samples = _check_samples(num_samples)
        if max_configurations < 1 or num_sampled_configurations < 1:
            raise ValueError("max_configurations and num_sampled_configurations must be >= 1")
        self.max_configurations = int(max_configurations)
        self.num_sampled_configurations = int(num_sampled_configurations)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        """Greedy batch of ``budget`` candidates by joint mutual information."""
        budget = check_budget(budget, context.num_candidates)
        probs = mc_dropout_probabilities(context.model, context.x_candidates,
                                         num_samples=self.num_samples, seed=context.seed,
                                         device=context.device, batch_size=context.batch_size)
        rng = np.random.default_rng(context.seed)
        t_count, n, k = probs.shape
        cond_entropy = predictive_entropy(probs).mean(axis=0)  # E_t H(y_i | w_t), (n,)
        bald = np.maximum(predictive_entropy(probs.mean(axis=0)) - cond_entropy, 0.0)

        # State of the chosen batch A as weighted configurations k of y_A:
        #   weight[k] = probability mass (exact) or 1/M (sampled),
        #   log_p[k]  = log p(y_A = k),
        #   ratio[t, k] = p_t(y_A = k) / p(y_A = k)   (mean over t is 1; avoids underflow).
        weight = np.ones(1)
        log_p = np.zeros(1)
        ratio = np.ones((t_count, 1))
        exact = True
        chosen: list[int] = []
        available = np.ones(n, dtype=bool)
        batch_mi: list[float] = []
        chosen_cond = 0.0
        for _ in range(budget):
            joint_entropy = -(weight * log_p).sum() + self._conditional_entropy(ratio, weight, probs)
            gain = joint_entropy - chosen_cond - cond_entropy
            gain[~available] = -np.inf
            i = int(np.argmax(gain))
            chosen.append(i)
            available[i] = False
            chosen_cond += cond_entropy[i]
            batch_mi.append(float(gain[i]))
            # Condition the configurations on the new label y_i.
            q = ratio.T @ probs[:, i, :] / t_count  # (K, k): p(y_i = c | y_A = config)
            if exact and weight.size * k <= self.max_configurations:
                new_ratio = (ratio[:, :, None] * probs[:, i, None, :]).reshape(t_count, -1)
                new_weight = (weight[:, None] * q).reshape(-1)
                keep = new_weight > 0
                q_flat = q.reshape(-1)[keep]
                ratio = new_ratio[:, keep] / q_flat
                weight = new_weight[keep]
                weight = weight / weight.sum()
                log_p = np.log(weight)
            else:
                if exact:  # resample the exact configurations once, then carry the samples
                    m = self.num_sampled_configurations
                    pick = rng.choice(weight.size, size=m, p=weight / weight.sum())
                    ratio, log_p, q = ratio[:, pick], log_p[pick], q[pick]
                    weight = np.full(m, 1.0 / m)
                    exact = False
                cdf = np.cumsum(q, axis=1)
                u = rng.random(q.shape[0])[:, None] * cdf[:, -1:]
                labels = np.minimum((u > cdf).sum(axis=1), k - 1)
                step = ratio * probs[:, i, labels]  # (T, M)
                mean = step.mean(axis=0)
                ratio = step / mean
                log_p = log_p + np.log(mean)
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=bald,
                           info={"batch_mutual_information": batch_mi,
                                 "exact_joint_entropy": exact})

    @staticmethod
    def _conditional_entropy(ratio: np.ndarray, weight: np.ndarray, probs: np.ndarray,
                             max_elements: int = 2**22) -> np.ndarray:
        """``Σ_k weight[k] H(y_i | y_A = k)`` for every candidate ``i``, in candidate chunks."""
        t_count, n, k = probs.shape
        chunk = max(1, max_elements // (ratio.shape[1] * k))
        out = np.empty(n)
        for start in range(0, n, chunk):
            p = probs[:, start:start + chunk, :]
            q = np.einsum("tk,tic->ikc", ratio, p, optimize=True) / t_count  # (chunk, K, k)
            out[start:start + chunk] = predictive_entropy(q) @ weight
        return out
