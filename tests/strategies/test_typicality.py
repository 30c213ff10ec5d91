"""TypiClust and ProbCover: behaviour on blobs, representations, and picking the initial set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkal.experiments.config import ConfigError, parse_config
from ntkal.experiments.runner import run_experiment
from ntkal.strategies import QueryContext, get_strategy
from ntkal.strategies.typicality import ProbCover, TypiClust, representation_features


def _blobs():
    """Three 2-D blobs of 40, 25 and 12 points (centres far apart, in different directions from
    the origin, since ProbCover normalises) and two far outliers."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    sizes = (40, 25, 12)
    parts = [centres[i] + 0.6 * torch.randn(s, 2, generator=g) for i, s in enumerate(sizes)]
    x = torch.cat(parts + [torch.tensor([[30.0, -25.0], [-25.0, 30.0]])])
    blob = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)] + [np.array([-1, -1])])
    return x, blob, centres


def _context(x_c, x_l=None, y_l=None, k=3, seed=0):
    if x_l is None:
        x_l, y_l = x_c[:0], torch.zeros(0, dtype=torch.long)
    return QueryContext(
        model=torch.nn.Identity(),
        x_candidates=x_c,
        x_labelled=x_l,
        y_labelled=y_l,
        num_classes=k,
        seed=seed,
    )


def test_typiclust_takes_the_most_typical_point_of_each_blob():
    x, blob, _centres = _blobs()
    strategy = TypiClust(representation="inputs", neighbours=10, min_cluster_size=3)
    chosen = strategy.query(_context(x), 3).indices
    assert sorted(blob[chosen].tolist()) == [0, 1, 2]  # one per blob, no outlier
    for i in chosen:
        members = np.flatnonzero(blob == blob[i])
        dist = (x[members] - x[members].mean(0)).norm(dim=1).numpy()
        # the typical point is central: among the blob's most central quarter
        assert dist[list(members).index(i)] <= np.quantile(dist, 0.25)


def test_typiclust_skips_clusters_the_labelled_set_covers():
    x, blob, _ = _blobs()
    labelled = x[blob == 0][:3]
    strategy = TypiClust(representation="inputs", neighbours=10, min_cluster_size=3)
    chosen = strategy.query(_context(x, labelled, torch.zeros(3, dtype=torch.long)), 2).indices
    assert sorted(blob[chosen].tolist()) == [1, 2]


def test_probcover_covers_the_largest_uncovered_ball_first_and_scores_are_coverage():
    x, blob, _ = _blobs()
    strategy = ProbCover(representation="inputs", radius=0.2)
    result = strategy.query(_context(x), 3)
    assert sorted(blob[result.indices].tolist()) == [0, 1, 2]
    # first pick: the candidate whose radius-ball (on normalised features) holds the most points
    feats = x.double() / x.double().norm(dim=1, keepdim=True)
    counts = (torch.cdist(feats, feats) < 0.2).sum(dim=1).numpy()
    np.testing.assert_array_equal(result.scores, counts)
    assert counts[result.indices[0]] == counts.max()
    # with blob 0 labelled, it is covered and the first pick moves to another blob
    lab = x[blob == 0]
    covered = strategy.query(_context(x, lab, torch.zeros(len(lab), dtype=torch.long)), 1)
    assert blob[covered.indices[0]] != 0


def test_probcover_default_radius_is_pure():
    x, blob, _ = _blobs()
    result = ProbCover(representation="inputs").query(_context(x), 3)
    assert 0 < result.info["radius"] < 2
    assert sorted(blob[result.indices].tolist()) == [0, 1, 2]


def test_representations():
    x, _, _ = _blobs()
    ctx = _context(x.reshape(-1, 1, 2), x[:4].reshape(-1, 1, 2), torch.zeros(4, dtype=torch.long))
    cand, lab = representation_features(ctx, "pca", pca_components=1)
    assert cand.shape == (x.shape[0], 1) and lab.shape == (4, 1)
    cand, lab = representation_features(ctx, lambda t: t.reshape(t.shape[0], -1) * 2)
    np.testing.assert_allclose(cand, 2 * x.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(n, d\) features"):
        representation_features(ctx, lambda t: t.sum())
    with pytest.raises(ValueError, match="representation must be one of"):
        get_strategy("typiclust", representation="simclr")
    with pytest.raises(ValueError, match="radius"):
        get_strategy("probcover", radius=-1.0)


# ----------------------------------------------------------------------------- initial set
def _raw(**changes):
    raw = {
        "name": "cold",
        "dataset": {"name": "synthetic", "train_size": 120, "test_size": 40},
        "model": {"name": "mlp", "width": 16},
        "trainer": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "strategies": ["random", "entropy"],
        "initial_size": 8,
        "budget": 4,
        "cycles": 1,
        "subset": 40,
        "seeds": [0, 1],
        "threads": 1,
    }
    raw.update(changes)
    return raw


def test_initial_strategy_config_defaults_to_a_pca_representation_and_is_validated():
    cfg = parse_config(_raw(initial_strategy="typiclust"))
    assert cfg.initial_strategy.name == "typiclust"
    assert cfg.initial_strategy.params == {"representation": "pca"}
    assert parse_config(cfg.to_dict()) == cfg
    assert "initial_strategy" not in parse_config(_raw()).to_dict()  # old configs hash as before
    assert cfg.shared_hash() != parse_config(_raw()).shared_hash()
    with pytest.raises(ConfigError, match=r"initial_strategy\.name: unknown strategy 'typo'"):
        parse_config(_raw(initial_strategy="typo"))
    with pytest.raises(ConfigError, match="MC dropout"):
        parse_config(_raw(initial_strategy="bald", model={"name": "mlp", "dropout": 0.2}))
    with pytest.raises(ConfigError, match="representation"):
        parse_config(
            _raw(initial_strategy={"name": "probcover", "params": {"representation": "nope"}})
        )


def test_runner_picks_the_initial_set_with_the_initial_strategy(tmp_path, monkeypatch):
    import ntkal.learner
    from ntkal.data import load_dataset

    seen = []
    init = ntkal.learner.ActiveLearner.__init__

    def spy(self, *args, **kwargs):
        seen.append((kwargs["seed"], np.sort(np.asarray(kwargs["labelled"]))))
        init(self, *args, **kwargs)

    monkeypatch.setattr(ntkal.learner.ActiveLearner, "__init__", spy)
    cfg = parse_config(
        _raw(initial_strategy={"name": "typiclust", "params": {"min_cluster_size": 2}})
    )
    records = run_experiment(cfg, tmp_path, quiet=True, plot=False)
    assert len(records) == 2 * 2 * 2 and len(seen) == 4
    ds = load_dataset("synthetic", train_size=120, test_size=40, seed=0)
    for seed in (0, 1):
        expected = (
            TypiClust(representation="pca", min_cluster_size=2)
            .query(_context(ds.x_train, k=ds.num_classes, seed=seed), 8)
            .indices
        )
        got = [labelled for s, labelled in seen if s == seed]
        assert len(got) == 2  # both strategies of the seed
        for labelled in got:
            np.testing.assert_array_equal(labelled, np.sort(expected))
