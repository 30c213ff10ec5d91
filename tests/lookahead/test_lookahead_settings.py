"""LookaheadSettings: checked once, when built, in the Python API and in a config alike."""

from __future__ import annotations

import dataclasses

import pytest

from ntkal.experiments.config import ConfigError, parse_config
from ntkal.lookahead import LookaheadSettings
from ntkal.strategies import get_strategy
from ntkal.strategies.lookahead import MLMOC

BAD = [
    ("eval_size", -3),
    ("eval_size", 0),
    ("eval_size", "most"),
    ("eval_size", True),
    ("engine", "fast"),
    ("ridge", -1),
    ("ridge", float("nan")),
    ("max_memory", -5),
    ("max_memory", 1.5),
    ("eps", 0.0),
    ("kernel", "rbf"),
    ("implementation", "fast"),
    ("block_size", 0),
    ("block_memory", -1),
]

RAW = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "train_size": 100, "test_size": 40},
    "model": {"name": "mlp", "width": 8},
    "trainer": {"epochs": 1, "batch_size": 16},
    "initial_size": 8,
    "budget": 4,
    "cycles": 1,
    "seeds": [0],
    "threads": 1,
}


@pytest.mark.parametrize("key, value", BAD)
@pytest.mark.parametrize("name", ["mlmoc", "eer", "emoc", "vr"])
def test_bad_setting_is_refused_when_the_strategy_is_built(name, key, value):
    with pytest.raises(ValueError, match=rf"^{key} must be"):
        get_strategy(name, **{key: value})


@pytest.mark.parametrize("key, value", BAD[:8])
def test_bad_setting_in_a_config_fails_at_parse_time_naming_the_key(key, value):
    raw = {**RAW, "strategies": [{"name": "mlmoc", "params": {key: value}}]}
    with pytest.raises(ConfigError, match=rf"strategy 'mlmoc': params\.{key} must be"):
        parse_config(raw)


def test_flat_parameters_and_settings_object_are_one_thing():
    flat = MLMOC(kernel="trace", eval_size=100, score="norm")
    given = MLMOC(score="norm", settings=LookaheadSettings(kernel="trace", eval_size=100))
    assert flat.settings == given.settings == LookaheadSettings(kernel="trace", eval_size=100)
    assert flat.kernel == "trace" and flat.eval_size == 100 and flat.score == "norm"
    # flat keys override the object's fields
    mixed = MLMOC(settings=LookaheadSettings(kernel="trace"), eval_size="all")
    assert mixed.settings == LookaheadSettings(kernel="trace", eval_size="all")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown look-ahead parameter.*eval_sise.*valid: kernel"):
        get_strategy("mlmoc", eval_sise=3)


def test_old_names_are_accepted_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="chunk_size.*block_size"):
        strat = MLMOC(chunk_size=7, memory_budget=2**20)
    assert strat.settings.block_size == 7 and strat.settings.block_memory == 2**20
    with pytest.raises(TypeError, match="not both"), pytest.warns(DeprecationWarning):
        MLMOC(chunk_size=7, block_size=8)


def test_settings_are_frozen_and_normalised():
    s = LookaheadSettings(ridge=1, max_memory=2.0**20)  # YAML writes 1048576.0
    assert isinstance(s.ridge, float) and s.max_memory == 2**20
    assert isinstance(s.max_memory, int)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ridge = 2.0  # type: ignore[misc]
