"""Expected predictive information gain with MC dropout (EPIG; Bickford Smith et al. 2023).

BALD asks how much a label tells about the weights; EPIG asks how much it tells about the
*predictions* on inputs drawn from the data distribution,
``EPIG(x) = E_{x* ~ p*} I(y; y* | x, x*)``, so a point that is uncertain but unlike anything the
network will be asked about scores low. Estimated from MC-dropout samples as in Bickford Smith,
Kirsch, Farquhar, Gal, Foster & Rainforth, "Prediction-Oriented Bayesian Active Learning",
AISTATS 2023 (and baal's ``EPIG`` heuristic): with ``T`` consistent dropout masks,
``p(y, y*) = (1/T) Σ_t p_t(y | x) p_t(y* | x*)`` and EPIG is the mean over target inputs of the
KL divergence from ``p(y) p(y*)`` to that joint.
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from ntkal.arguments import as_int
from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget, top_k
from ntkal.strategies.forward_passes import mc_dropout_probabilities

__all__ = ["EPIG", "epig_from_probs"]


def epig_from_probs(
    probs_pool: np.ndarray, probs_target: np.ndarray, max_elements: int = 2**24
) -> np.ndarray:
    """EPIG of every pool point from MC samples, ``(n,)`` nats.

    Parameters
    ----------
    probs_pool : ndarray ``(T, n, k)``
        ``p_t(y | x_j)`` under mask ``t``.
    probs_target : ndarray ``(T, E, k)``
        ``p_t(y* | x*_e)`` under the *same* masks (the joint needs one network per sample).
    max_elements : int
        Size of the ``(chunk, E, k, k)`` joint held at once.
    """
    t_count, n, k = probs_pool.shape
    if probs_target.shape[0] != t_count or probs_target.shape[2] != k:
        raise ValueError(
            f"pool samples {probs_pool.shape} and target samples "
            f"{probs_target.shape} disagree in masks or classes"
        )
    e_count = probs_target.shape[1]
    marg_target = probs_target.mean(axis=0)  # (E, k)
    chunk = max(1, max_elements // max(1, e_count * k * k))
    out = np.empty(n)
    for start in range(0, n, chunk):
        pool = probs_pool[:, start : start + chunk]  # (T, c, k)
        joint = np.einsum("tja,teb->jeab", pool, probs_target, optimize=True) / t_count
        indep = pool.mean(axis=0)[:, None, :, None] * marg_target[None, :, None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = xlogy(joint, joint) - xlogy(joint, indep)
        out[start : start + chunk] = kl.sum(axis=(2, 3)).mean(axis=1)
    return np.maximum(out, 0.0)  # a mutual information: non-negative in exact arithmetic


class EPIG(Strategy):
    """Largest expected predictive information gain about pool predictions, under MC dropout.

    Bickford Smith et al., "Prediction-Oriented Bayesian Active Learning", AISTATS 2023. Target
    inputs ``x*`` are ``num_targets`` candidates drawn at random (under ``context.seed``) from the
    scored pool, standing in for the input distribution; each candidate's score is
    ``mean_e I(y; y*_e)`` under the MC-dropout mixture, and the top ``budget`` are taken.

    Parameters
    ----------
    num_samples : int
        Number ``T`` of MC-dropout masks.
    num_targets : int
        Number of target inputs (all candidates when there are fewer).

    Notes
    -----
    Needs a model built with ``dropout > 0``; masks are seeded by ``context.seed`` and shared by
    candidates and targets within a sample. Cost ``O(T · m · E · k²)``.
    """

    name = "epig"
    needs_dropout = True

    def __init__(self, num_samples: int = 20, num_targets: int = 100) -> None:
        self.num_samples = as_int(num_samples, "num_samples", minimum=1)
        self.num_targets = as_int(num_targets, "num_targets", minimum=1)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        budget = check_budget(budget, context.num_candidates)
        probs = mc_dropout_probabilities(
            context.model,
            context.x_candidates,
            num_samples=self.num_samples,
            seed=context.seed,
            device=context.device,
            batch_size=context.batch_size,
        )
        rng = np.random.default_rng(context.seed)
        m = context.num_candidates
        targets = np.sort(rng.choice(m, size=min(self.num_targets, m), replace=False))
        scores = epig_from_probs(probs, probs[:, targets])
        if not np.isfinite(scores).all():
            raise FloatingPointError("EPIG scores are not finite")
        indices = top_k(scores, budget, rng=rng)
        return QueryResult(
            indices=indices.astype(np.int64), scores=scores, info={"targets": targets}
        )
