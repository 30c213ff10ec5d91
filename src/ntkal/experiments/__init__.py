"""Experiments: a YAML config of strategies x seeds, a resumable runner, learning curves.

``load_config(path)`` -> :class:`ExperimentConfig`; ``run_experiment(config, out_dir)`` writes
``results.json`` / ``results.csv`` (resumable) and, at the end, ``learning_curves.png`` and an AUC
table; :mod:`ntkal.experiments.plots` redraws them from any ``results.json``.
"""

from __future__ import annotations

from ntkal.experiments.config import (
    ConfigError,
    DatasetConfig,
    ExperimentConfig,
    ModelConfig,
    StrategySpec,
    load_config,
    parse_config,
)
from ntkal.experiments.runner import run_experiment

__all__ = [
    "ConfigError",
    "DatasetConfig",
    "ExperimentConfig",
    "ModelConfig",
    "StrategySpec",
    "load_config",
    "parse_config",
    "run_experiment",
]
