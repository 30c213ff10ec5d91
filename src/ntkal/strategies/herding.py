"""Kernel herding for coverage: MaxHerding and uncertainty herding (Bae, Noh, Oliveira &
Sutherland 2024).

Both greedily maximise a *generalized coverage* of the pool,
``C(S) = (1/m) Σ_i w_i max_{s ∈ L ∪ S} k(x_i, x_s)``, with a Gaussian kernel ``k`` on a
representation of the points (the trained network's embeddings by default; the representations of
:mod:`ntkal.strategies.typicality`). With ``w_i = 1`` this is MaxHerding, a smooth ProbCover made
for low budgets; weighting each point by the network's uncertainty ``w_i = U(x_i)`` gives
uncertainty coverage, whose greedy maximiser is uncertainty herding, built to move from coverage at
low budgets to uncertainty sampling at high ones as the kernel narrows with the labelled set.

References: Bae, Noh & Sutherland, "Generalized Coverage for More Robust Low-Budget Active
Learning", ECCV 2024; Bae, Oliveira & Sutherland, "Uncertainty Herding: One Active Learning Method
for All Label Budgets", ICLR 2025.
"""

from __future__ import annotations

import numpy as np
import torch

from ntkal.arguments import as_float, as_int
from ntkal.models.forward import predict_logits
from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget
from ntkal.strategies.typicality import (
    Representation,
    _cdist,
    _check_representation,
    representation_features,
)

__all__ = [
    "MaxHerding",
    "UncertaintyHerding",
    "coverage_gains",
    "herding_select",
    "gaussian_kernel",
    "margin_uncertainty",
]


def gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """``exp(-‖a_i - b_j‖² / σ²)``, ``(len(a), len(b))`` float64."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    return np.exp(-(_cdist(a, b) ** 2) / bandwidth**2)


def coverage_gains(kernel: np.ndarray, covered: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Increase of the weighted coverage from adding each candidate, ``(m,)``.

    ``gain_j = (1/m) Σ_i w_i max(k(x_i, x_j) - c_i, 0)`` with ``c_i = max_{s ∈ L ∪ S} k(x_i, x_s)``
    the current coverage of point ``i`` (``kernel[i, j] = k(x_i, x_j)``).
    """
    return (weights @ np.maximum(kernel - covered[:, None], 0.0)) / kernel.shape[0]


def herding_select(
    kernel: np.ndarray, covered: np.ndarray, weights: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy maximisation of the weighted coverage: ``budget`` positions in choice order, and the
    gains before the first pick. Ties go to the lowest position; once nothing more can be covered
    the remaining picks follow the same rule (gain 0), never repeating a point."""
    covered = covered.astype(np.float64).copy()
    remaining = np.ones(kernel.shape[0], dtype=bool)
    chosen: list[int] = []
    first: np.ndarray | None = None
    for _ in range(budget):
        gain = coverage_gains(kernel, covered, weights)
        if first is None:
            first = gain.copy()
        gain[~remaining] = -np.inf
        pick = int(np.argmax(gain))
        chosen.append(pick)
        remaining[pick] = False
        covered = np.maximum(covered, kernel[:, pick])
    assert first is not None  # budget >= 1
    return np.asarray(chosen, dtype=np.int64), first


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _nonzero_distances(x: np.ndarray, limit: int = 4000, seed: int = 0) -> np.ndarray:
    if x.shape[0] > limit:  # a seeded sample keeps the cost bounded on large pools
        x = x[np.random.default_rng(seed).choice(x.shape[0], limit, replace=False)]
    d = _cdist(x, x)[np.triu_indices(x.shape[0], k=1)]
    return d[d > 0]


def margin_uncertainty(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``1 - (p_(1) - p_(2))`` of ``softmax(logits / T)``: 1 at a tie, 0 when certain."""
    z = logits / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if p.shape[1] < 2:
        return np.zeros(p.shape[0])
    top = np.sort(p, axis=1)[:, -2:]
    return 1.0 - (top[:, 1] - top[:, 0])


class _Herding(Strategy):
    """Shared representation, bandwidth and greedy loop of the herding strategies."""

    def __init__(
        self,
        representation: Representation = "embedding",
        bandwidth: float | None = None,
        normalize: bool = True,
        pca_components: int = 50,
    ) -> None:
        self.representation = _check_representation(representation)
        self.bandwidth = (
            None
            if bandwidth is None
            else as_float(bandwidth, "bandwidth", minimum=0.0, strict_minimum=True)
        )
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        self.normalize = normalize
        self.pca_components = as_int(pca_components, "pca_components", minimum=1)

    def _features(self, context: QueryContext) -> tuple[np.ndarray, np.ndarray]:
        cand, lab = representation_features(
            context, self.representation, self.pca_components, context.seed
        )
        if self.normalize:
            cand = _normalise(cand)
            lab = _normalise(lab) if lab.shape[0] else lab
        return cand, lab

    def _auto_bandwidth(self, cand: np.ndarray, lab: np.ndarray, seed: int) -> float:
        """The median heuristic: the median distance between candidates."""
        d = _nonzero_distances(cand, seed=seed)
        return float(np.median(d)) if d.size else 1.0

    def _weights(self, context: QueryContext) -> np.ndarray:
        return np.ones(context.num_candidates)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        budget = check_budget(budget, context.num_candidates)
        cand, lab = self._features(context)
        sigma = (
            self.bandwidth
            if self.bandwidth is not None
            else self._auto_bandwidth(cand, lab, context.seed)
        )
        kernel = gaussian_kernel(cand, cand, sigma)
        covered = (
            gaussian_kernel(cand, lab, sigma).max(axis=1)
            if lab.shape[0]
            else np.zeros(cand.shape[0])
        )
        weights = self._weights(context)
        chosen, gains = herding_select(kernel, covered, weights, budget)
        return QueryResult(indices=chosen, scores=gains, info={"bandwidth": sigma})


class MaxHerding(_Herding):
    """Greedy kernel coverage of the pool by the labelled and picked points (MaxHerding).

    Bae, Noh & Sutherland, "Generalized Coverage for More Robust Low-Budget Active Learning",
    ECCV 2024. Each pick maximises the gain in ``Σ_i max_{s ∈ L ∪ S} k(x_i, x_s)`` over the
    candidates ``x_i``, with the Gaussian kernel ``k(x, x') = exp(-‖x - x'‖² / σ²)``: ProbCover's
    objective with a smooth ball, far less sensitive to its radius.

    Parameters
    ----------
    representation : {"embedding", "pca", "inputs"} or callable
        Where distances are measured, as in :class:`~ntkal.strategies.typicality.TypiClust`.
    bandwidth : float, optional
        σ of the kernel. ``None``: the median distance between candidates (after normalising).
    normalize : bool
        Scale every feature vector to unit length first (as the paper does with its
        self-supervised features).
    pca_components : int
        Components of the ``"pca"`` representation.

    Notes
    -----
    ``scores`` are the coverage gains before the first pick. Memory is quadratic in the number of
    candidates and time ``O(budget · m²)``: score a subset of a large pool.
    """

    name = "maxherding"


class UncertaintyHerding(_Herding):
    """Greedy uncertainty-weighted kernel coverage (uncertainty herding, UHerding).

    Bae, Oliveira & Sutherland, "Uncertainty Herding: One Active Learning Method for All Label
    Budgets", ICLR 2025. Each pick maximises the gain in the uncertainty coverage
    ``Σ_i U(x_i) max_{s ∈ L ∪ S} k(x_i, x_s)``, with ``U`` the margin uncertainty
    ``1 - (p_(1) - p_(2))`` of the temperature-scaled softmax of the network and the Gaussian
    kernel of :class:`MaxHerding`. The kernel adapts to the labelled set (the paper's
    self-adaptive bandwidth, as scikit-activeml's implementation of it reads it): σ is the
    smallest non-zero distance between labelled points, so that as labels accumulate the kernel
    narrows and the criterion moves from coverage (MaxHerding) towards uncertainty sampling. With
    fewer than two distinct labelled points σ is the median distance between candidates.

    Parameters
    ----------
    representation, normalize, pca_components
        As in :class:`MaxHerding`.
    bandwidth : float, optional
        A fixed σ instead of the adaptive rule.
    temperature : float
        Softmax temperature ``T`` of the uncertainty.

    Notes
    -----
    Simplification: the paper chooses ``T`` by calibrating the network on held-out labelled data,
    which needs a second training run per round; here ``T`` is a parameter (1 by default: the
    plain softmax, as the other uncertainty baselines use). When the network is certain everywhere
    (every ``U`` is 0) the weights fall back to 1, i.e. to MaxHerding.
    """

    name = "uherding"

    def __init__(
        self,
        representation: Representation = "embedding",
        bandwidth: float | None = None,
        temperature: float = 1.0,
        normalize: bool = True,
        pca_components: int = 50,
    ) -> None:
        super().__init__(
            representation=representation,
            bandwidth=bandwidth,
            normalize=normalize,
            pca_components=pca_components,
        )
        self.temperature = as_float(temperature, "temperature", minimum=0.0, strict_minimum=True)

    def _auto_bandwidth(self, cand: np.ndarray, lab: np.ndarray, seed: int) -> float:
        d = _nonzero_distances(lab, seed=seed) if lab.shape[0] >= 2 else np.zeros(0)
        if d.size:
            return float(d.min())
        return super()._auto_bandwidth(cand, lab, seed)

    def _weights(self, context: QueryContext) -> np.ndarray:
        logits = predict_logits(
            context.model,
            context.x_candidates,
            device=context.device,
            batch_size=context.batch_size,
            out_dtype=torch.float64,
        ).numpy()
        u = margin_uncertainty(logits, self.temperature)
        if not np.isfinite(u).all():
            raise FloatingPointError("the network's outputs give non-finite uncertainties")
        return u if u.max() > 0 else np.ones_like(u)
