"""Runner on a tiny config: outputs, shared initial sets, resuming after an interruption."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import ntkal.training
from ntkal.experiments.config import ConfigError, parse_config
from ntkal.experiments.plots import auc_table, curves, load_records, normalised_auc
from ntkal.experiments.runner import is_quiet, run_experiment

_TRAIN = ntkal.training.train


def _cfg(**changes):
    raw = {
        "name": "tiny",
        "dataset": {"name": "synthetic", "train_size": 120, "test_size": 40},
        "model": {"name": "mlp", "width": 16},
        "trainer": {"epochs": 3, "batch_size": 16, "lr": 0.05},
        "strategies": ["random", {"name": "mlmoc", "params": {"kernel": "pseudo"}}],
        "initial_size": 8,
        "budget": 4,
        "cycles": 2,
        "subset": 40,
        "seeds": [0, 1],
        "threads": 1,
    }
    raw.update(changes)
    return parse_config(raw)


class _CountingTrain:
    """Wraps ``ntkal.training.train``; raises after ``fail_after`` calls to mimic a crash."""

    def __init__(self, fail_after=None):
        self.calls = 0
        self.fail_after = fail_after
        self.inner = _TRAIN

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return self.inner(*args, **kwargs)


def _key(records):
    return sorted(
        (r["strategy"], r["seed"], r["cycle"], r["labelled"], round(r["accuracy"], 6))
        for r in records
    )


def test_tiny_run_writes_outputs_and_resumes_without_training(tmp_path, monkeypatch):
    out = tmp_path / "run"
    counter = _CountingTrain()
    monkeypatch.setattr(ntkal.training, "train", counter)
    threads = torch.get_num_threads()
    records = run_experiment(_cfg(), out, quiet=True)
    assert torch.get_num_threads() == threads  # the config's thread count does not leak
    assert counter.calls == 2 * 2 * 3 and len(records) == 12
    for name in ("results.json", "results.csv", "learning_curves.png", "auc.json", "auc.md"):
        assert (out / name).stat().st_size > 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["budget"] == 4 and len(doc["records"]) == 12
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 12 and set(rows[0]) >= {
        "strategy",
        "seed",
        "cycle",
        "labelled",
        "accuracy",
        "query_seconds",
        "train_seconds",
    }
    by = {(r["strategy"], r["seed"], r["cycle"]): r for r in records}
    assert [by["random", 0, c]["labelled"] for c in range(3)] == [8, 12, 16]
    assert by["random", 0, 2]["query_seconds"] is None and by["random", 0, 0]["query_seconds"] >= 0
    # the same initial set and initial weights for every strategy of a seed
    assert by["random", 1, 0]["accuracy"] == by["mlmoc", 1, 0]["accuracy"]

    again = _CountingTrain()
    monkeypatch.setattr(ntkal.training, "train", again)
    assert _key(run_experiment(_cfg(), out, quiet=True)) == _key(records)
    assert again.calls == 0


def test_interrupted_run_resumes_to_the_same_results(tmp_path, monkeypatch):
    cfg = _cfg(strategies=["random"], seeds=[0])
    reference = run_experiment(cfg, tmp_path / "full", quiet=True, plot=False)
    out = tmp_path / "cut"
    monkeypatch.setattr(ntkal.training, "train", _CountingTrain(fail_after=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(cfg, out, quiet=True, plot=False)
    assert len(load_records(out / "results.json")) == 2
    resumed = _CountingTrain()
    monkeypatch.setattr(ntkal.training, "train", resumed)
    records = run_experiment(cfg, out, quiet=True, plot=False)
    assert resumed.calls == 1
    assert _key(records) == _key(reference)


def test_changed_config_is_refused_but_new_seeds_are_added(tmp_path):
    out = tmp_path / "run"
    run_experiment(_cfg(strategies=["random"], seeds=[0], cycles=1), out, quiet=True, plot=False)
    with pytest.raises(ConfigError, match="different config"):
        run_experiment(_cfg(strategies=["random"], seeds=[0], cycles=1, budget=5), out, quiet=True)
    records = run_experiment(
        _cfg(strategies=["random"], seeds=[0, 1], cycles=1), out, quiet=True, plot=False
    )
    assert sorted({r["seed"] for r in records}) == [0, 1]
    records = run_experiment(
        _cfg(strategies=["random"], seeds=[0], cycles=1, budget=5),
        out,
        quiet=True,
        plot=False,
        overwrite=True,
    )
    assert len(records) == 2


def test_quiet_from_environment(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("NTKAL_QUIET", raising=False)
    assert not is_quiet(None) and is_quiet(True)
    monkeypatch.setenv("NTKAL_QUIET", "1")
    assert is_quiet(None) and not is_quiet(False)
    monkeypatch.delenv("NTKAL_QUIET")
    monkeypatch.setenv("CI", "true")
    assert is_quiet(None)


def test_auc_and_curves():
    assert normalised_auc([0, 10, 20], [0.5, 0.5, 1.0]) == pytest.approx(0.625)
    assert normalised_auc([5], [0.7]) == pytest.approx(0.7)
    recs = [
        {"strategy": s, "seed": seed, "cycle": c, "labelled": 10 + 10 * c, "accuracy": a}
        for s, seed, c, a in [
            ("a", 0, 0, 0.5),
            ("a", 0, 1, 0.7),
            ("a", 1, 0, 0.5),
            ("a", 1, 1, 0.9),
            ("b", 0, 0, 0.4),
            ("b", 0, 1, 0.4),
        ]
    ]
    table = auc_table(recs)
    assert list(table) == ["a", "b"]
    assert table["a"]["mean"] == pytest.approx(0.65) and table["a"]["seeds"] == 2
    assert table["b"]["std"] == 0.0
    c = curves(recs)["a"]
    assert c["labelled"].tolist() == [10, 20] and c["mean"][1] == pytest.approx(0.8)


def test_sequential_mode_runs_mlmoc(tmp_path):
    cfg = _cfg(strategies=["mlmoc"], seeds=[0], cycles=1, mode="sequential")
    records = run_experiment(cfg, tmp_path / "seq", quiet=True, plot=False)
    assert [r["labelled"] for r in sorted(records, key=lambda r: r["cycle"])] == [8, 12]


def test_per_strategy_mode_compares_sequential_and_batch_in_one_run(tmp_path, monkeypatch):
    from ntkal.learner import ActiveLearner

    modes = {}
    original = ActiveLearner.query

    def spy(self, budget):
        modes.setdefault(type(self.strategy).__name__ + ":" + self.mode, 0)
        modes[type(self.strategy).__name__ + ":" + self.mode] += 1
        return original(self, budget)

    monkeypatch.setattr(ActiveLearner, "query", spy)
    cfg = _cfg(
        strategies=[
            {"name": "mlmoc", "label": "mlmoc_seq", "mode": "sequential"},
            "mlmoc",
            "random",
        ],
        seeds=[0],
        cycles=1,
    )
    assert [cfg.mode_for(s) for s in cfg.strategies] == ["sequential", "batch", "batch"]
    records = run_experiment(cfg, tmp_path / "mixed", quiet=True, plot=False)
    assert {r["strategy"] for r in records} == {"mlmoc_seq", "mlmoc", "random"}
    assert modes == {"MLMOC:sequential": 1, "MLMOC:batch": 1, "RandomSampling:batch": 1}
    # an entry without `mode` hashes as before, so earlier results still resume
    import dataclasses

    from ntkal.experiments.config import _hash

    plain = cfg.strategies[1]
    before = {
        "name": plain.name,
        "params": plain.params,
        "label": plain.label,
        "model": plain.model,
    }
    assert cfg.strategy_hash(plain) == _hash(
        {
            "shared": cfg.shared_hash(),
            "strategy": before,
            "model": {
                k: v for k, v in dataclasses.asdict(cfg.model_for(plain)).items() if k != "factory"
            },
        }
    )  # hashed as before factories
    assert cfg.strategy_hash(cfg.strategies[0]) != cfg.strategy_hash(
        dataclasses.replace(cfg.strategies[0], mode=None)
    )
