"""Bayesian active learning by disagreement with MC dropout: BALD and its batch-aware BatchBALD."""

from __future__ import annotations

import numpy as np

from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget, top_k
from ntkal.strategies.forward_passes import mc_dropout_probabilities
from ntkal.strategies.registry import register_strategy
from ntkal.strategies.uncertainty import predictive_entropy

__all__ = ["BALD", "BatchBALD", "batchbald_batch", "mutual_information"]


def mutual_information(probs: np.ndarray) -> np.ndarray:
    """``I(y; w) = H(E_t p_t) - E_t H(p_t)`` per point from MC samples ``probs`` ``(T, n, k)``."""
    mi = predictive_entropy(probs.mean(axis=0)) - predictive_entropy(probs).mean(axis=0)
    return np.maximum(mi, 0.0)  # non-negative in exact arithmetic


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_samples(num_samples: int) -> int:
    return _positive_int("num_samples", num_samples)


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
        probs = mc_dropout_probabilities(
            context.model,
            context.x_candidates,
            num_samples=self.num_samples,
            seed=context.seed,
            device=context.device,
            batch_size=context.batch_size,
        )
        scores = mutual_information(probs)
        indices = top_k(scores, budget, rng=np.random.default_rng(context.seed))
        return QueryResult(indices=indices.astype(np.int64), scores=scores)


def _conditional_entropy(
    ratio: np.ndarray, weight: np.ndarray, probs: np.ndarray, max_elements: int = 2**22
) -> np.ndarray:
    """``Σ_k weight[k] H(y_i | y_A = k)`` for every candidate ``i``, in candidate chunks."""
    t_count, n, k = probs.shape
    chunk = max(1, max_elements // (ratio.shape[1] * k))
    out = np.empty(n)
    for start in range(0, n, chunk):
        p = probs[:, start : start + chunk, :]
        q = np.einsum("tk,tic->ikc", ratio, p, optimize=True) / t_count  # (chunk, K, k)
        out[start : start + chunk] = predictive_entropy(q) @ weight
    return out


def _sampled_configurations(
    probs: np.ndarray, chosen: list[int], num_configurations: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Configurations of ``y_A`` drawn from the MC-dropout mixture, the same number per mask.

    For every mask ``t`` the labels of the batch ``A`` are independent given the weights, so
    ``S = max(1, M // T)`` configurations are drawn from ``Π_j p_t(y_j)`` for each ``t`` (Kirsch et
    al. 2019, the reference implementation's ``sample_M_K``): stratified over the masks, so every
    mask's share of the mixture is represented exactly.

    Returns
    -------
    log_p : ndarray ``(T·S,)``
        ``log p(y_A = m)`` of each configuration under the mixture.
    ratio : ndarray ``(T, T·S)``
        ``p_t(y_A = m) / p(y_A = m)`` (its mean over ``t`` is 1).
    """
    t_count, _, k = probs.shape
    per_mask = max(1, num_configurations // t_count)
    batch = probs[:, chosen, :]  # (T, |A|, k)
    cdf = np.cumsum(batch, axis=2)
    u = rng.random((t_count, per_mask, len(chosen))) * cdf[:, None, :, -1]
    labels = np.minimum((u[..., None] > cdf[:, None, :, :]).sum(axis=3), k - 1)
    labels = labels.reshape(t_count * per_mask, len(chosen))  # (M, |A|), mask-major
    with np.errstate(divide="ignore"):
        log_batch = np.log(batch)
    # log p_t'(y_A = m) = Σ_j log p_t'(y_j = m_j), for every mask t' and configuration m.
    log_pt = log_batch[:, np.arange(len(chosen))[None, :], labels].sum(axis=2)  # (T, M)
    top = log_pt.max(axis=0)
    log_p = top + np.log(np.exp(log_pt - top).mean(axis=0))
    return log_p, np.exp(log_pt - log_p)


def batchbald_batch(
    probs: np.ndarray,
    budget: int,
    *,
    max_configurations: int = 1024,
    num_sampled_configurations: int = 1024,
    rng: np.random.Generator | None = None,
) -> tuple[list[int], list[float], int]:
    """Greedy BatchBALD batch from MC-dropout probabilities ``probs`` ``(T, n, k)``.

    Returns
    -------
    chosen : list of int
        Positions in choice order.
    estimates : list of float
        The greedy's value of ``I(y_A; w)`` after each pick: exact for the first ``exact_steps``
        picks, a Monte-Carlo estimate beyond (noisy, so not necessarily increasing).
    exact_steps : int
        Leading picks whose joint entropy was summed exactly.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    t_count, n, k = probs.shape
    cond_entropy = predictive_entropy(probs).mean(axis=0)  # E_t H(y_i | w_t), (n,)
    # State of the chosen batch A as weighted configurations m of y_A:
    #   weight[m] = probability mass (exact) or 1/M (sampled),
    #   log_p[m]  = log p(y_A = m),
    #   ratio[t, m] = p_t(y_A = m) / p(y_A = m)   (mean over t is 1; avoids underflow).
    weight, log_p, ratio = np.ones(1), np.zeros(1), np.ones((t_count, 1))
    exact = True
    exact_steps = 0
    chosen: list[int] = []
    available = np.ones(n, dtype=bool)
    estimates: list[float] = []
    chosen_cond = 0.0
    for _ in range(budget):
        joint_entropy = -(weight * log_p).sum() + _conditional_entropy(ratio, weight, probs)
        gain = joint_entropy - chosen_cond - cond_entropy
        gain[~available] = -np.inf
        i = int(np.argmax(gain))
        chosen.append(i)
        available[i] = False
        chosen_cond += cond_entropy[i]
        estimates.append(float(gain[i]))
        exact_steps += exact
        if len(chosen) == budget:
            break
        if exact and weight.size * k <= max_configurations:
            # Condition the exact configurations on every value of the new label y_i.
            q = ratio.T @ probs[:, i, :] / t_count  # (K, k): p(y_i = c | y_A = config)
            new_ratio = (ratio[:, :, None] * probs[:, i, None, :]).reshape(t_count, -1)
            new_weight = (weight[:, None] * q).reshape(-1)
            keep = new_weight > 0
            ratio = new_ratio[:, keep] / q.reshape(-1)[keep]
            weight = new_weight[keep] / new_weight[keep].sum()
            log_p = np.log(weight)
        else:  # too many configurations: draw a fresh sample of y_A for the enlarged batch
            exact = False
            log_p, ratio = _sampled_configurations(probs, chosen, num_sampled_configurations, rng)
            weight = np.full(log_p.size, 1.0 / log_p.size)
    return chosen, estimates, exact_steps


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
    * **sampled** beyond: at every greedy step a fresh set of configurations of ``y_A`` is drawn,
      ``num_sampled_configurations // T`` from each mask's ``Π_j p_t(y_j)`` (as the paper's
      reference code does), and ``H(y_A, y_i)`` is estimated by importance-weighted Monte Carlo
      over them.

    Parameters
    ----------
    num_samples : int
        Number ``T`` of MC-dropout masks (consistent across candidates).
    max_configurations : int
        Largest number of label configurations of the batch summed over exactly.
    num_sampled_configurations : int
        Configurations drawn once the exact sum is too large (rounded down to a multiple of
        ``T``, at least one per mask).

    Notes
    -----
    ``scores`` are the individual BALD scores (the first greedy step).
    ``info["mutual_information_estimates"]`` holds the greedy's value of ``I(y_A; w)`` after each
    pick: exact for the first ``info["exact_steps"]`` picks, a Monte-Carlo *estimate* beyond,
    whose noise makes it non-monotone — it is not the batch's information.
    ``info["batch_mutual_information"]`` is the batch's exact joint mutual information (under the
    ``T`` masks) when every step was exact, else None.
    """

    name = "batchbald"
    needs_dropout = True

    def __init__(
        self,
        num_samples: int = 20,
        max_configurations: int = 1024,
        num_sampled_configurations: int = 1024,
    ) -> None:
        self.num_samples = _check_samples(num_samples)
        self.max_configurations = _positive_int("max_configurations", max_configurations)
        self.num_sampled_configurations = _positive_int(
            "num_sampled_configurations", num_sampled_configurations
        )

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        """Greedy batch of ``budget`` candidates by joint mutual information."""
        budget = check_budget(budget, context.num_candidates)
        probs = mc_dropout_probabilities(
            context.model,
            context.x_candidates,
            num_samples=self.num_samples,
            seed=context.seed,
            device=context.device,
            batch_size=context.batch_size,
        )
        chosen, estimates, exact_steps = batchbald_batch(
            probs,
            budget,
            max_configurations=self.max_configurations,
            num_sampled_configurations=self.num_sampled_configurations,
            rng=np.random.default_rng(context.seed),
        )
        exact = exact_steps == len(chosen)
        return QueryResult(
            indices=np.asarray(chosen, dtype=np.int64),
            scores=mutual_information(probs),
            info={
                "mutual_information_estimates": estimates,
                "exact_steps": exact_steps,
                "exact_joint_entropy": exact,
                "batch_mutual_information": estimates[-1] if exact else None,
            },
        )
