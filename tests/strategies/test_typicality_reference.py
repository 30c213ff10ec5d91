"""TypiClust and ProbCover against the rules of their authors' code, by brute force."""

from __future__ import annotations

import numpy as np
import torch

from ntkal.strategies import QueryContext
from ntkal.strategies.typicality import ProbCover, TypiClust, _purity_radius, typicality


def _context(x_c, x_l=None, k=3, seed=0):
    if x_l is None:
        x_l = x_c[:0]
    return QueryContext(
        model=torch.nn.Identity(),
        x_candidates=x_c,
        x_labelled=x_l,
        y_labelled=torch.zeros(x_l.shape[0], dtype=torch.long),
        num_classes=k,
        seed=seed,
    )


def _brute_typicality(feats, k):
    """1 / (mean squared distance to the k nearest other points + 1e-5), by loops."""
    out = np.zeros(len(feats))
    for i in range(len(feats)):
        d = sorted(float(np.sum((feats[i] - feats[j]) ** 2)) for j in range(len(feats)) if j != i)
        out[i] = 1.0 / (np.mean(d[:k]) + 1e-5)
    return out


def test_typicality_is_the_inverse_mean_squared_distance_to_other_points():
    feats = np.random.default_rng(0).normal(size=(15, 3))
    for k in (1, 4, 14, 30):
        np.testing.assert_allclose(
            typicality(feats, k), _brute_typicality(feats, min(k, 14)), rtol=1e-10
        )
    # a duplicate pair: each is the other's nearest neighbour at distance 0, not itself
    dup = np.concatenate([feats[:1], feats])
    np.testing.assert_allclose(typicality(dup, 1)[:2], [1e5, 1e5], rtol=1e-12)
    assert typicality(feats, 3)[0] < 1e5
    np.testing.assert_array_equal(typicality(feats[:1], 20), [0.0])


def test_one_cluster_picks_follow_the_reference_rule_recomputed_after_each_pick():
    # one cluster holding everything: each pick is the most typical *unlabelled* point, with
    # K = min(neighbours, |unlabelled| // 2), over the points not yet picked
    g = torch.Generator().manual_seed(1)
    x_c = torch.cat([torch.randn(20, 2, generator=g), 3 + 0.3 * torch.randn(9, 2, generator=g)])
    x_l = 3 + 0.01 * torch.randn(6, 2, generator=g)  # labelled points inside the clump
    budget = 8
    got = (
        TypiClust(representation="inputs", max_clusters=1).query(_context(x_c, x_l), budget).indices
    )
    feats = x_c.double().numpy()
    left = list(range(len(feats)))
    expected = []
    for _ in range(budget):
        typ = _brute_typicality(feats[left], min(20, len(left) // 2))
        expected.append(left.pop(int(np.argmax(typ))))
    assert got.tolist() == expected


def _three_blobs(sizes, centres=((10.0, 0.0), (0.0, 10.0), (-10.0, -10.0)), spread=0.5):
    g = torch.Generator().manual_seed(0)
    parts = [
        torch.tensor(c) + spread * torch.randn(s, 2, generator=g) for c, s in zip(centres, sizes)
    ]
    blob = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)])
    return torch.cat(parts), blob


def test_uncovered_clusters_are_visited_largest_first():
    x, blob = _three_blobs((12, 40, 25))
    chosen = TypiClust(representation="inputs").query(_context(x), 3).indices
    assert blob[chosen].tolist() == [1, 2, 0]


def test_clusters_of_at_most_min_cluster_size_points_are_dropped():
    # blobs of 6 and 5 points, no labels, and a large blob with one labelled point: 3 clusters.
    # The 5-point blob is dropped (size <= 5), so the second pick goes to the labelled blob.
    x, blob = _three_blobs((6, 5, 30))
    x_l = torch.tensor([[-10.0, -10.0]])
    chosen = TypiClust(representation="inputs").query(_context(x, x_l), 2).indices
    assert blob[chosen].tolist() == [0, 2]
    kept = TypiClust(representation="inputs", min_cluster_size=4).query(_context(x, x_l), 2)
    assert blob[kept.indices].tolist() == [0, 1]


def test_exhausted_and_small_clusters_are_used_only_when_the_kept_ones_run_out():
    x, blob = _three_blobs((3, 4, 20))
    result = TypiClust(representation="inputs", max_clusters=3).query(_context(x), 27)
    assert sorted(result.indices.tolist()) == list(range(27))
    assert set(blob[result.indices[:20]].tolist()) == {2}  # the one kept cluster first
    assert result.info["kept_clusters"] == 1


def test_probcover_radius_is_the_largest_grid_radius_that_is_pure_enough():
    x, _ = _three_blobs((30, 20, 10), spread=2.0)
    feats = x.double().numpy()
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    dist = np.sqrt(((feats[:, None] - feats[None]) ** 2).sum(-1))
    off = dist[~np.eye(len(feats), dtype=bool)]
    grid = np.quantile(off, np.geomspace(1e-3, 0.3, 24))
    from ntkal.strategies.typicality import _kmeans

    pseudo = _kmeans(feats, 3, 0)
    purity = []
    for delta in grid:
        pure = [
            all(pseudo[j] == pseudo[i] for j in range(len(feats)) if dist[i, j] < delta)
            for i in range(len(feats))
        ]
        purity.append(np.mean(pure))
    for alpha in (1.0, purity[5], purity[12]):
        ok = [p >= alpha for p in purity]
        last = (ok.index(False) if False in ok else len(ok)) - 1
        expected = grid[max(last, 0)]
        assert _purity_radius(feats, dist, 3, alpha, 0) == expected
    assert _purity_radius(feats, dist, 3, 1.0, 0) > grid[0]  # purity 1 is reached
    chosen = ProbCover(representation="inputs", purity=1.0).query(_context(x), 3)
    assert chosen.info["radius"] > grid[0]
