"""Saving and loading an :class:`~ntkal.learner.ActiveLearner`: the file format and its checks.

This module never imports the learner (the learner imports it): it reads a learner's public
attributes when saving, and is handed the class to build when loading.

The file is a ``torch.save`` of plain values and tensors (read back with
``torch.load(weights_only=True)``, so loading never runs code from the file), written atomically.
Every way a file can be unusable (damaged, truncated, of another format or version, missing a
part, for another architecture) is reported with the file's name and what to do.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkal.atomic_files import atomic_torch_save
from ntkal.data.pool import Pool
from ntkal.learner.inputs import as_input_tensor
from ntkal.strategies.base import Strategy

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "learner_state",
    "save_learner",
    "read_learner_state",
    "load_model_state",
    "strategy_params",
    "restore_learner",
]

PathLike = str | os.PathLike
FORMAT = "ntkal.ActiveLearner"
FORMAT_VERSION = 1
#: Keys every saved learner has (``strategy_state`` is optional).
REQUIRED_KEYS = (
    "format",
    "version",
    "pool",
    "labels",
    "num_classes",
    "mode",
    "subset",
    "seed",
    "device",
    "cycle",
    "num_queries",
    "train_config",
    "strategy",
    "model_state",
    "pool_shape",
    "x_pool",
    "y_pool",
)
_RESAVE = "save the learner again (or restore the file from a backup)"


def _is_plain(value: Any) -> bool:
    """Whether ``value`` survives ``torch.load(weights_only=True)`` (and JSON) unchanged in kind."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def strategy_params(strategy: Strategy) -> dict[str, Any]:
    """The public constructor state of ``strategy`` (its attributes not starting with ``_``)."""
    return {k: v for k, v in vars(strategy).items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- writing
def learner_state(learner: Any, include_pool: bool = True) -> dict[str, Any]:
    """Everything needed to resume ``learner``: plain types and tensors only."""
    cfg = learner.train_config
    cfg_dict = None
    if dataclasses.is_dataclass(cfg):
        if isinstance(cfg, type):
            raise TypeError("train_config must be a dataclass instance, not a dataclass type")
        cfg_dict = dataclasses.asdict(cfg)
    params = strategy_params(learner.strategy)
    strategy = learner.strategy
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "pool": learner.pool.state_dict(),
        "labels": learner.labels.tolist(),
        "num_classes": learner.num_classes,
        "mode": learner.mode,
        "subset": learner.subset,
        "seed": learner.seed,
        "device": str(learner.device),
        "cycle": learner.cycle,
        "num_queries": learner.num_queries,
        "train_config": cfg_dict if cfg_dict is not None and _is_plain(cfg_dict) else None,
        "strategy": {"name": strategy.name, "params": params if _is_plain(params) else None},
        "strategy_state": (
            strategy.state_dict() if callable(getattr(strategy, "state_dict", None)) else None
        ),
        "model_state": {k: v.detach().cpu().clone() for k, v in learner.model.state_dict().items()},
        "pool_shape": list(learner.x_pool.shape),
        "x_pool": learner.x_pool.clone() if include_pool else None,
        "y_pool": learner.y_pool.tolist() if include_pool and learner.y_pool is not None else None,
    }


def save_learner(learner: Any, path: PathLike, include_pool: bool = True) -> None:
    """Write :func:`learner_state` to ``path`` atomically (temporary file + rename)."""
    atomic_torch_save(learner_state(learner, include_pool=include_pool), path)


# ----------------------------------------------------------------------------- reading
def _load_file(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with messages that name the file and the fix."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved learner at {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a saved learner file")
    if os.path.getsize(path) == 0:
        raise ValueError(
            f"{path} is empty (0 bytes), probably left by an interrupted copy; {_RESAVE}"
        )
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are noise here
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise PermissionError(
            f"{path} cannot be read: permission denied (check the file's permissions)"
        ) from None
    except (pickle.UnpicklingError, AttributeError, ImportError, TypeError):
        # torch's message here advises weights_only=False, i.e. running code from the file: no.
        raise ValueError(
            f"{path} is not an ActiveLearner file ntkal can read safely: it holds "
            "something other than plain values and tensors, or is corrupt; "
            f"{_RESAVE}"
        ) from None
    except (OSError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError):
        # a truncated zip archive fails as a RuntimeError or as an OSError with no errno text
        raise ValueError(
            f"{path} is truncated or corrupt (not a complete torch file), e.g. cut "
            f"short by an interrupted copy; {_RESAVE}"
        ) from None


def read_learner_state(path: PathLike) -> dict[str, Any]:
    """The state saved in ``path``, checked for format, version and every required key."""
    state = _load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an ActiveLearner file (it was not written by ActiveLearner.save)"
        )
    if state.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {state.get('version')!r}; "
            f"this ntkal reads version {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"{path} is an incomplete ActiveLearner file: it lacks "
            f"{', '.join(repr(k) for k in missing)}; {_RESAVE}"
        )
    if not isinstance(state["model_state"], dict) or not all(
        isinstance(v, torch.Tensor) for v in state["model_state"].values()
    ):
        raise ValueError(f"{path} has a damaged 'model_state' (not a dict of tensors); {_RESAVE}")
    return state


def load_model_state(model: nn.Module, saved: dict[str, torch.Tensor], path: PathLike) -> None:
    """Load saved weights into ``model`` after checking it has the saved architecture.

    Raises
    ------
    ValueError
        Naming the first parameter or buffer whose name or shape differs, with both shapes.
    """
    current = model.state_dict()
    problem = None
    for key, value in saved.items():
        if key not in current:
            problem = f"the file has {key!r} {tuple(value.shape)}, which the model lacks"
        elif tuple(current[key].shape) != tuple(value.shape):
            problem = (
                f"{key!r} has shape {tuple(value.shape)} in the file but "
                f"{tuple(current[key].shape)} in the model"
            )
        if problem:
            break
    if problem is None:
        extra = [key for key in current if key not in saved]
        if extra:
            problem = (
                f"the model has {extra[0]!r} {tuple(current[extra[0]].shape)}, which the file lacks"
            )
    if problem is not None:
        raise ValueError(
            f"the model does not match the one saved in {path}: {problem}; pass "
            "model= a network built like the saved one (same architecture and sizes)"
        )
    model.load_state_dict(saved)


def saved_pool(state: dict[str, Any], path: PathLike) -> tuple[Pool, np.ndarray]:
    """The saved :class:`Pool` and labels, validated."""
    try:
        pool = Pool.from_state_dict(state["pool"])
        labels = np.asarray(state["labels"])
        if labels.shape != (pool.num_labelled,):
            raise ValueError(f"{pool.num_labelled} labelled points but {labels.size} labels")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} holds an invalid pool state ({err}); {_RESAVE}") from None
    return pool, labels


def saved_device(state: dict[str, Any], device: Any | None, path: PathLike) -> torch.device:
    """``device`` if given, else the saved one, which must be usable here."""
    from ntkal.models.devices import resolve_device

    if device is not None:
        return resolve_device(device)
    try:
        return resolve_device(state["device"])
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{path} was saved on device {state['device']!r}, which is not usable here "
            f"({err}); pass device='cpu' (or another) to ActiveLearner.load"
        ) from None


def restore_learner(
    factory: Callable[..., Any],
    path: PathLike,
    *,
    model: nn.Module,
    strategy: Any = None,
    x_pool: Any = None,
    y_pool: Any = None,
    train_config: Any = None,
    device: Any = None,
    progress: bool = False,
) -> Any:
    """What :meth:`ntkal.learner.ActiveLearner.load` does (see there): read and check ``path``,
    then build ``factory(model, strategy, x_pool, ...)`` (the learner class) from it."""
    state = read_learner_state(path)
    if x_pool is None:
        x_pool = state["x_pool"]
        if x_pool is None:
            raise ValueError(f"{path} was saved without the pool inputs: pass x_pool=")
    x_pool = as_input_tensor("x_pool", x_pool)
    if list(x_pool.shape) != list(state["pool_shape"]):
        raise ValueError(
            f"x_pool has shape {tuple(x_pool.shape)} but the saved learner's pool "
            f"had shape {tuple(state['pool_shape'])}"
        )
    if y_pool is None:
        y_pool = state["y_pool"]
    if strategy is None:
        spec = state["strategy"]
        if spec["params"] is None:
            raise ValueError(
                f"the saved strategy {spec['name']!r} has parameters that cannot be "
                "stored as plain values: pass strategy="
            )
        from ntkal.strategies import get_strategy

        strategy = get_strategy(spec["name"], **spec["params"])
    if train_config is None:
        if state["train_config"] is None:
            raise ValueError("the saved train config is not a plain dataclass: pass train_config=")
        from ntkal.training import TrainConfig

        train_config = TrainConfig(**state["train_config"])
    device = saved_device(state, device, path)
    load_model_state(model, state["model_state"], path)
    pool, labels = saved_pool(state, path)
    learner = factory(
        model,
        strategy,
        x_pool,
        y_pool=y_pool,
        labelled=pool.labelled_indices,
        labels=labels,
        num_classes=state["num_classes"],
        train_config=train_config,
        mode=state["mode"],
        subset=state["subset"],
        seed=state["seed"],
        device=device,
        progress=progress,
    )
    if state.get("strategy_state") is not None and callable(
        getattr(learner.strategy, "load_state_dict", None)
    ):
        learner.strategy.load_state_dict(state["strategy_state"])
    learner.cycle = int(state["cycle"])
    learner.num_queries = int(state["num_queries"])
    return learner
