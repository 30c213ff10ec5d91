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

from collections.abc import Callable

import numpy as np
import torch

from ntkal.arguments import as_float, as_int
from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget
from ntkal.strategies.forward_passes import eval_embeddings

__all__ = ["TypiClust", "ProbCover", "REPRESENTATIONS", "representation_features", "typicality"]

REPRESENTATIONS = ("embedding", "pca", "inputs")
Representation = str | Callable[[torch.Tensor], object]


def _check_representation(representation: Representation) -> Representation:
    if callable(representation):
        return representation
    if representation not in REPRESENTATIONS:
        raise ValueError(
            f"representation must be one of {REPRESENTATIONS} or a callable "
            f"mapping inputs to (n, d) features; got {representation!r}"
        )
    return representation


def _flat(x: torch.Tensor | None) -> np.ndarray:
    if x is None or x.shape[0] == 0:
        return np.zeros((0, 0))
    return x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64).numpy()


def representation_features(
    context: QueryContext, representation: Representation, pca_components: int = 50, seed: int = 0
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
            out = np.asarray(
                out.detach().cpu() if isinstance(out, torch.Tensor) else out, dtype=np.float64
            )
            if out.ndim != 2 or out.shape[0] != x.shape[0]:
                raise ValueError(
                    f"the representation callable must return (n, d) features for n "
                    f"inputs; got shape {out.shape} for n = {x.shape[0]}"
                )
            return out

        cand = encode(context.x_candidates)
        lab = encode(context.x_labelled)
        lab = np.zeros((0, cand.shape[1])) if lab is None else lab
    elif representation == "embedding":

        def embed(x: torch.Tensor) -> np.ndarray:
            out = eval_embeddings(
                context.model, x, device=context.device, batch_size=context.batch_size
            )
            assert isinstance(out, torch.Tensor)
            return out.numpy()

        cand = embed(context.x_candidates)
        lab = embed(context.x_labelled) if n_lab else np.zeros((0, cand.shape[1]))
    else:
        cand = _flat(context.x_candidates)
        lab = _flat(context.x_labelled) if n_lab else np.zeros((0, cand.shape[1]))
        if representation == "pca":
            from sklearn.decomposition import PCA

            both = np.concatenate([cand, lab])
            comps = int(min(pca_components, both.shape[0], both.shape[1]))
            both = PCA(n_components=comps, random_state=seed).fit_transform(both)
            cand, lab = both[: cand.shape[0]], both[cand.shape[0] :]
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
        model = MiniBatchKMeans(
            n_clusters=clusters, n_init=1, random_state=seed, batch_size=max(1024, 3 * clusters)
        )
    # k-means++ makes many tiny BLAS calls: one thread is several times faster than a pool
    # (and far faster on busy cores); the clustering is the same.
    with threadpool_limits(limits=1):
        return model.fit_predict(features)


def typicality(features: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """Typicality as the reference code of Hacohen et al. (2022) computes it, ``(n,)``.

    ``1 / (mean squared L2 distance to the K nearest *other* points + 1e-5)`` with
    K = ``min(neighbours, n - 1)``; the reference's k-NN index returns squared distances and its
    typicality uses them. A point is never its own neighbour. ``neighbours = 0`` or a lone point
    gives 0 (nothing to be typical of).
    """
    n = features.shape[0]
    k = min(int(neighbours), n - 1)
    if k < 1:
        return np.zeros(n)
    d = _cdist(features, features) ** 2
    np.fill_diagonal(d, np.inf)
    near = np.partition(d, k - 1, axis=1)[:, :k]
    return 1.0 / (near.mean(axis=1) + 1e-5)


def _cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _cluster_typicality(features: np.ndarray, neighbours: int) -> np.ndarray:
    """Typicality within one cluster's unlabelled members, K = min(neighbours, |members| // 2)
    (the reference's rule: a small cluster's density is measured over half of it)."""
    return typicality(features, min(int(neighbours), features.shape[0] // 2))


class TypiClust(Strategy):
    """The most typical point of the least-covered clusters (TypiClust, Hacohen et al. 2022).

    Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High and
    Low Budgets", ICML 2022; implemented as its authors' code does it. Candidates and labelled
    points are clustered together by k-means into ``|L| + budget`` clusters (at most
    ``max_clusters``). Clusters of at most ``min_cluster_size`` points are dropped; the rest are
    ordered once by their number of labelled points (fewest first), then by size (largest first),
    and the picks go round the clusters in that order. Each pick is the cluster's most typical
    unlabelled point, typicality being measured over the cluster's *unlabelled* members only, with
    K = ``min(neighbours, |unlabelled members| // 2)``, and recomputed after every pick.

    Parameters
    ----------
    representation : {"embedding", "pca", "inputs"} or callable
        Where distances are measured: ``model.embed`` features, a PCA of the flattened inputs, the
        flattened inputs, or ``callable(x) -> (n, d)``.
    pca_components : int
        Components of the ``"pca"`` representation.
    neighbours : int
        Largest K of the typicality (20 in the paper).
    min_cluster_size : int
        Clusters of this many points or fewer (labelled ones included) are dropped (5 in the
        authors' code).
    max_clusters : int
        Cap on the number of clusters (500 in the authors' code).

    Notes
    -----
    The authors' code fails when no cluster is large enough or a cluster runs out of unlabelled
    points. Here a cluster without candidates left is skipped, and once every kept cluster is
    exhausted the dropped small clusters are visited, in the same order, in the same way.
    Typicality uses squared distances, as the reference's k-NN search returns them (the paper
    writes plain distances). ``scores`` are each candidate's typicality among its cluster's
    unlabelled members before the first pick.
    """

    name = "typiclust"

    def __init__(
        self,
        representation: Representation = "embedding",
        pca_components: int = 50,
        neighbours: int = 20,
        min_cluster_size: int = 5,
        max_clusters: int = 500,
    ) -> None:
        self.representation = _check_representation(representation)
        self.pca_components = as_int(pca_components, "pca_components", minimum=1)
        self.neighbours = as_int(neighbours, "neighbours", minimum=1)
        self.min_cluster_size = as_int(min_cluster_size, "min_cluster_size", minimum=0)
        self.max_clusters = as_int(max_clusters, "max_clusters", minimum=1)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        budget = check_budget(budget, context.num_candidates)
        cand, lab = representation_features(
            context, self.representation, self.pca_components, context.seed
        )
        m, n = cand.shape[0], lab.shape[0]
        labels = _kmeans(
            np.concatenate([cand, lab]), min(n + budget, self.max_clusters), context.seed
        )
        cand_cluster = labels[:m]
        clusters, size = np.unique(labels, return_counts=True)
        covered = np.array([np.sum(labels[m:] == c) for c in clusters])
        # fewest labelled first, then the largest cluster, then the lowest cluster id
        order = clusters[np.lexsort((clusters, -size, covered))]
        size_of = dict(zip(clusters.tolist(), size.tolist()))
        kept = [c for c in order.tolist() if size_of[c] > self.min_cluster_size]
        dropped = [c for c in order.tolist() if size_of[c] <= self.min_cluster_size]
        members_of = {c: np.flatnonzero(cand_cluster == c) for c in clusters.tolist()}
        left = {c: int(v.size) for c, v in members_of.items()}  # candidates not yet picked
        scores = np.zeros(m)
        for members in members_of.values():
            if members.size:
                scores[members] = _cluster_typicality(cand[members], self.neighbours)
        remaining = np.ones(m, dtype=bool)
        chosen: list[int] = []
        for cycle in (kept, dropped):
            turn = 0
            while len(chosen) < budget and any(left[c] for c in cycle):
                # round robin over the fixed order, skipping clusters without candidates left
                c = cycle[turn % len(cycle)]
                turn += 1
                if not left[c]:
                    continue
                members = members_of[c][remaining[members_of[c]]]
                typ = _cluster_typicality(cand[members], self.neighbours)
                pick = int(members[np.argmax(typ)])
                chosen.append(pick)
                remaining[pick] = False
                left[c] -= 1
        return QueryResult(
            indices=np.asarray(chosen, dtype=np.int64),
            scores=scores,
            info={"clusters": int(clusters.size), "kept_clusters": len(kept)},
        )


def _purity_radius(
    feats: np.ndarray, dist: np.ndarray, num_classes: int, alpha: float, seed: int
) -> float:
    """Largest δ (on a grid of distance quantiles) whose balls are ``alpha``-pure with respect to a
    k-means clustering into ``num_classes`` clusters (Yehuda et al., Sec. 4)."""
    pseudo = _kmeans(feats, num_classes, seed)
    off = (
        dist[~np.eye(dist.shape[0], dtype=bool)]
        if dist.shape[0] <= 4000
        else dist[np.random.default_rng(seed).integers(0, dist.shape[0], 4000)].ravel()
    )
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

    def __init__(
        self,
        representation: Representation = "embedding",
        radius: float | None = None,
        purity: float = 0.95,
        pca_components: int = 50,
    ) -> None:
        self.representation = _check_representation(representation)
        self.radius = (
            None if radius is None else as_float(radius, "radius", minimum=0.0, strict_minimum=True)
        )
        self.purity = as_float(purity, "purity", minimum=0.0, maximum=1.0, strict_minimum=True)
        self.pca_components = as_int(pca_components, "pca_components", minimum=1)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        budget = check_budget(budget, context.num_candidates)
        cand, lab = representation_features(
            context, self.representation, self.pca_components, context.seed
        )
        m = cand.shape[0]
        feats = np.concatenate([cand, lab])
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        dist = _cdist(feats, feats)
        radius = (
            self.radius
            if self.radius is not None
            else _purity_radius(feats, dist, context.num_classes, self.purity, context.seed)
        )
        ball = dist[:m] < radius  # (m, m + n)
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
        return QueryResult(
            indices=np.asarray(chosen, dtype=np.int64), scores=scores, info={"radius": radius}
        )
