"""Cold-start strategies: TypiClust and ProbCover, on a fixed or learned representation.

At low budgets a network's uncertainty is not yet informative, and selecting *typical*, *covering*
points of the data distribution beats uncertainty sampling (Hacohen, Dekel & Weinshall, ICML 2022).
Both strategies here work on a representation of the points: the trained network's penultimate
features (``model.embed``, the default), the flattened raw inputs, a PCA of them (a fixed
representation that needs no trained network: use it to pick the *initial* labelled set, see
``initial_strategy`` in :mod:`ntkal.experiments.config`), or any callable the user gives (e.g. a
self-supervised encoder: ``representation=lambda x: encoder(x)``).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch

from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget
from ntkal.strategies.forward_passes import eval_embeddings

__all__ = ["TypiClust", "ProbCover", "REPRESENTATIONS", "representation_features", "typicality"]

REPRESENTATIONS = ("embedding", "pca", "inputs")
Representation = Union[str, Callable[[torch.Tensor], object]]


def _check_representation(representation: Representation) -> Representation:
    if callable(representation):
        return representation
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS} or a callable "
                         f"mapping inputs to (n, d) features; got {representation!r}")
    return representation


def _flat(x: Optional[torch.Tensor]) -> np.ndarray:
    if x is None or x.shape[0] == 0:
        return np.zeros((0, 0))
    return x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64).numpy()


def representation_features(context: QueryContext, representation: Representation,
                            pca_components: int = 50, seed: int = 0
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(candidates (m, d), labelled (n, d))`` of the context's points, float64.

    ``"pca"`` fits the PCA on candidates and labelled points together (deterministic under
    ``seed``); ``"embedding"`` runs ``model.embed`` in eval mode.
    """
    n_lab = 0 if context.x_labelled is None else int(context.x_labelled.shape[0])
    if callable(representation):
        def encode(x):
            if x is None or x.shape[0] == 0:
                return None
            with torch.no_grad():
                out = representation(x)
            out = np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out,
                             dtype=np.float64)
            if out.ndim != 2 or out.shape[0] != x.shape[0]:
                raise ValueError(f"the representation callable must return (n, d) features for n "
                                 f"inputs; got shape {out.shape} for n = {x.shape[0]}")
            return out
        cand = encode(context.x_candidates)
        lab = encode(context.x_labelled)
        lab = np.zeros((0, cand.shape[1])) if lab is None else lab
    elif representation == "embedding":
        kw = dict(device=context.device, batch_size=context.batch_size)
        cand = eval_embeddings(context.model, context.x_candidates, **kw).numpy()
        lab = (eval_embeddings(context.model, context.x_labelled, **kw).numpy() if n_lab
               else np.zeros((0, cand.shape[1])))
    else:
        cand = _flat(context.x_candidates)
        lab = _flat(context.x_labelled) if n_lab else np.zeros((0, cand.shape[1]))
        if representation == "pca":
            from sklearn.decomposition import PCA

            both = np.concatenate([cand, lab])
            comps = int(min(pca_components, both.shape[0], both.shape[1]))
            both = PCA(n_components=comps, random_state=seed).fit_transform(both)
            cand, lab = both[:cand.shape[0]], both[cand.shape[0]:]
    if not (np.isfinite(cand).all() and np.isfinite(lab).all()):
        raise ValueError("the representation has NaN or infinite features")
    return cand, lab


def _kmeans(features: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    clusters = max(1, min(int(clusters), features.shape[0]))
    if clusters <= 50:
        model = KMeans(n_clusters=clusters, n_init=1, random_state=seed)
    else:  # as in the reference implementation: many clusters, mini-batch k-means
        model = MiniBatchKMeans(n_clusters=clusters, n_init=1, random_state=seed,
                                batch_size=max(1024, 3 * clusters))
    # k-means++ makes many tiny BLAS calls: one thread is several times faster than a pool
    # (and far faster on busy cores); the clustering is the same.
    with threadpool_limits(limits=1):
        return model.fit_predict(features)


def typicality(features: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """Hacohen et al.'s typicality: ``1 / mean distance to the K nearest other points`` (K at most
    ``neighbours``), ``(n,)``; a lone point gets 0."""
    n = features.shape[0]
    if n <= 1:
        return np.zeros(n)
    k = min(int(neighbours), n - 1)
    d = _cdist(features, features)
    np.fill_diagonal(d, np.inf)
    near = np.partition(d, k - 1, axis=1)[:, :k]
    return 1.0 / (near.mean(axis=1) + 1e-12)


def _cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy()


class TypiClust(Strategy):
    """The most typical point of the least-covered clusters (TypiClust, Hacohen et al. 2022).

    Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High and
    Low Budgets", ICML 2022.
    Candidates and labelled points are clustered together by k-means into ``|L| + budget`` clusters
    (at most ``max_clusters``); each pick goes to the cluster with the fewest labelled (or already
    picked) points, the largest first among equals, ignoring clusters of fewer than
    ``min_cluster_size`` points; within it, the candidate of highest typicality (inverse mean
    distance to its ``neighbours`` nearest neighbours in the cluster) is taken.

    Parameters
    ----------
    representation : {"embedding", "pca", "inputs"} or callable
        Where distances are measured: ``model.embed`` features, a PCA of the flattened inputs, the
        flattened inputs, or ``callable(x) -> (n, d)``.
    pca_components : int
        Components of the ``"pca"`` representation.
    neighbours : int
        K of the typicality (20 in the paper).
    min_cluster_size : int
        Clusters smaller than this are skipped while larger ones have candidates (5 in the paper's
        code).
    max_clusters : int
        Cap on the number of clusters (500 in the paper's code).

    Notes
    -----
    ``scores`` are each candidate's typicality within its cluster. When every usable cluster is
    exhausted the remaining picks go by typicality over all candidates.
    """

    name = "typiclust"

    def __init__(self, representation: Representation = "embedding", pca_components: int = 50,
                 neighbours: int = 20, min_cluster_size: int = 5, max_clusters: int = 500) -> None:
        self.representation = _check_representation(representation)
        for key, value in (("pca_components", pca_components), ("neighbours", neighbours),
                           ("max_clusters", max_clusters)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, (int, np.integer)) \
                or min_cluster_size < 0:
            raise ValueError(f"min_cluster_size must be an integer >= 0, got {min_cluster_size!r}")
        self.pca_components = int(pca_components)
        self.neighbours = int(neighbours)
        self.min_cluster_size = int(min_cluster_size)
        self.max_clusters = int(max_clusters)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        budget = check_budget(budget, context.num_candidates)
        cand, lab = representation_features(context, self.representation, self.pca_components,
                                            context.seed)
        m, n = cand.shape[0], lab.shape[0]
        feats = np.concatenate([cand, lab])
        labels = _kmeans(feats, min(n + budget, self.max_clusters), context.seed)
        cand_cluster = labels[:m]
        clusters = np.unique(labels)
        size = np.array([np.sum(labels == c) for c in clusters])
        covered = np.array([np.sum(labels[m:] == c) for c in clusters])
        scores = np.zeros(m)
        for c in clusters:
            members = np.flatnonzero(labels == c)
            typ = typicality(feats[members], self.neighbours)
            in_cand = members < m
            scores[members[in_cand]] = typ[in_cand]
        remaining = np.ones(m, dtype=bool)
        chosen: list[int] = []
        while len(chosen) < budget:
            has_cand = np.array([remaining[cand_cluster == c].any() for c in clusters])
            usable = has_cand & (size >= self.min_cluster_size)
            if not usable.any():
                usable = has_cand
            # fewest labelled first, then the largest cluster, then the lowest cluster id
            order = np.lexsort((clusters, -size, covered))
            ci = next(i for i in order if usable[i])
            members = np.flatnonzero((cand_cluster == clusters[ci]) & remaining)
            pick = int(members[np.argmax(scores[members])])
            chosen.append(pick)
            remaining[pick] = False
            covered[ci] += 1
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=scores,
                           info={"clusters": int(clusters.size)})


def _purity_radius(feats: np.ndarray, dist: np.ndarray, num_classes: int, alpha: float,
                   seed: int) -> float:
    """Largest δ (on a grid of distance quantiles) whose balls are ``alpha``-pure with respect to a
    k-means clustering into ``num_classes`` clusters (Yehuda et al., Sec. 4)."""
    pseudo = _kmeans(feats, num_classes, seed)
    off = dist[~np.eye(dist.shape[0], dtype=bool)] if dist.shape[0] <= 4000 else \
        dist[np.random.default_rng(seed).integers(0, dist.shape[0], 4000)].ravel()
    grid = np.quantile(off, np.geomspace(1e-3, 0.3, 24))
    best = float(grid[0])
    differs = pseudo[:, None] != pseudo[None, :]
    for delta in grid:
        impure = ((dist < delta) & differs).any(axis=1)
        if 1.0 - impure.mean() >= alpha:
            best = float(delta)
        else:
            break
    return best


class ProbCover(Strategy):
    """Greedy maximum coverage of δ-balls around the picks (ProbCover, Yehuda et al. 2022).

    Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens", NeurIPS 2022.
    Points are L2-normalised in the representation; a candidate covers every point within distance
    ``radius``. Points already within ``radius`` of a labelled point are covered; each pick is the
    candidate covering the most uncovered points (ties at random under the seed), whose ball is
    then marked covered. When everything is covered the rest are drawn at random, as in the paper.

    Parameters
    ----------
    representation : {"embedding", "pca", "inputs"} or callable
        As in :class:`TypiClust`.
    radius : float, optional
        δ. ``None``: the largest δ whose balls are ``purity``-pure with respect to a k-means
        clustering into ``num_classes`` clusters (the paper's rule), chosen on a grid of distance
        quantiles.
    purity : float
        α of that rule (0.95 in the paper).
    pca_components : int
        Components of the ``"pca"`` representation.

    Notes
    -----
    ``scores`` are the numbers of uncovered points each candidate covered before the first pick.
    Memory is quadratic in the number of points (candidates + labelled): score a subset of a large
    pool.
    """

    name = "probcover"

    def __init__(self, representation: Representation = "embedding",
                 radius: Optional[float] = None, purity: float = 0.95,
                 pca_components: int = 50) -> None:
        self.representation = _check_representation(representation)
        if radius is not None and not (float(radius) > 0 and np.isfinite(float(radius))):
            raise ValueError(f"radius must be a finite number > 0 or None, got {radius!r}")
        if not 0.0 < float(purity) <= 1.0:
            raise ValueError(f"purity must lie in (0, 1], got {purity!r}")
        if isinstance(pca_components, bool) or not isinstance(pca_components, (int, np.integer)) \
                or pca_components < 1:
            raise ValueError(f"pca_components must be an integer >= 1, got {pca_components!r}")
        self.radius = None if radius is None else float(radius)
        self.purity = float(purity)
        self.pca_components = int(pca_components)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        budget = check_budget(budget, context.num_candidates)
        cand, lab = representation_features(context, self.representation, self.pca_components,
                                            context.seed)
        m = cand.shape[0]
        feats = np.concatenate([cand, lab])
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        dist = _cdist(feats, feats)
        radius = self.radius if self.radius is not None else _purity_radius(
            feats, dist, context.num_classes, self.purity, context.seed)
        ball = dist[:m] < radius                                         # (m, m + n)
        covered = (dist[m:] < radius).any(axis=0) if lab.shape[0] else np.zeros(len(feats), bool)
        rng = np.random.default_rng(context.seed)
        remaining = np.ones(m, dtype=bool)
        chosen: list[int] = []
        scores = None
        while len(chosen) < budget:
            gain = ball[:, ~covered].sum(axis=1).astype(np.float64)
            if scores is None:
                scores = gain.copy()
            gain[~remaining] = -1.0
            best_gain = gain.max()
            if best_gain <= 0:
                rest = np.flatnonzero(remaining)
                extra = rng.choice(rest, size=budget - len(chosen), replace=False)
                chosen.extend(int(i) for i in extra)
                break
            ties = np.flatnonzero(gain == best_gain)
            pick = int(ties[rng.integers(ties.size)])
            chosen.append(pick)
            remaining[pick] = False
            covered |= ball[pick]
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=scores,
                           info={"radius": radius})
