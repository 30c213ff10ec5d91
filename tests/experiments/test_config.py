"""Experiment config validation: every error names the key and the valid options."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntkal.experiments.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def _raw(**changes):
    raw = {
        "dataset": {"name": "synthetic", "train_size": 200, "test_size": 60},
        "model": {"name": "mlp", "width": 16},
        "trainer": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "strategies": ["random", {"name": "entropy"}],
        "initial_size": 8,
        "budget": 4,
        "cycles": 2,
        "seeds": [0, 1],
    }
    raw.update(changes)
    return raw


def test_valid_config_parses_with_defaults():
    cfg = parse_config(_raw())
    assert [s.label for s in cfg.strategies] == ["random", "entropy"]
    assert cfg.mode == "batch" and cfg.retrain == "warm" and cfg.subset is None
    assert cfg.train_config().epochs == 2
    assert cfg.shared_hash() == parse_config(_raw(seeds=[5])).shared_hash()
    assert cfg.shared_hash() != parse_config(_raw(budget=5)).shared_hash()


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"strategies": ["random", "nope"]},
            r"strategies\[1\].name: unknown strategy 'nope'; valid names: .*mlmoc",
        ),
        ({"dataset": {"name": "imagenet"}}, r"dataset.name must be one of .*digits"),
        ({"model": {"name": "vit"}}, r"model.name must be one of cnn, mlp"),
        ({"mode": "greedy"}, r"mode must be one of batch, sequential"),
        ({"retrain": "never"}, r"retrain must be one of warm, scratch"),
        ({"budget": 0}, r"budget must be >= 1"),
        ({"cycles": "two"}, r"cycles must be an integer"),
        ({"subset": 2}, r"subset \(2\) must be >= budget \(4\)"),
        ({"trainer": {"epochz": 3}}, r"unknown key\(s\) epochz in trainer; valid keys: epochs"),
        ({"trainer": {"lr": -1.0}}, r"trainer: .*lr"),
        ({"seeds": [0, 0]}, r"seeds must be distinct"),
        ({"strategies": ["random", "random"]}, r"distinct `label`"),
        ({"strategies": [{"name": "mlmoc", "params": {"foo": 1}}]}, r"strategy 'mlmoc': .*foo"),
        ({"strategies": ["bald"]}, r"'bald' uses MC dropout: set model.dropout > 0"),
        ({"mode": "sequential"}, r"sequential needs look-ahead strategies; 'random'"),
        (
            {"strategies": [{"name": "random", "mode": "sequential"}]},
            r"sequential needs look-ahead strategies; 'random'",
        ),
        (
            {"strategies": [{"name": "mlmoc", "mode": "greedy"}]},
            r"strategies\[0\].mode must be one of batch, sequential",
        ),
        ({"colour": "blue"}, r"unknown key\(s\) colour at the top level"),
    ],
)
def test_config_errors_name_key_and_options(changes, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(_raw(**changes))


def test_missing_required_key():
    raw = _raw()
    del raw["budget"]
    with pytest.raises(ConfigError, match="missing required key 'budget'"):
        parse_config(raw)


def test_checks_against_the_dataset():
    cfg = parse_config(_raw(initial_size=3))
    with pytest.raises(
        ConfigError, match=r"initial_size \(3\) must be >= the number of classes \(4\)"
    ):
        cfg.validate_against(200, 4)
    cfg = parse_config(_raw(budget=100, cycles=3))
    with pytest.raises(ConfigError, match="exceeds the pool of 200"):
        cfg.validate_against(200, 4)


def test_yaml_errors_and_shipped_configs(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yml")
    for name in ("digits.yml", "fashion_mnist.yml", "cifar10_resnet18.yml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.strategies and cfg.cycles >= 1
