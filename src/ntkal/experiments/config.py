"""Experiment configuration: a YAML file parsed into validated dataclasses.

Every error names the offending key and, where there is a closed set, the valid options, so that a
typo fails in the first second of a run instead of an hour into it.

Example (``configs/digits.yml``)::

    dataset: {name: digits}
    model: {name: mlp, width: 128, dropout: 0.2}
    trainer: {epochs: 60, batch_size: 32, lr: 0.05, loss: mse}
    strategies: [random, entropy, {name: mlmoc, params: {kernel: pseudo}}]
    initial_size: 20
    budget: 10
    cycles: 6
    subset: 500
    seeds: [0, 1, 2]

``resources: {cpus: 1, gpus: 0}`` (top level, or per strategy entry) is the share of a Ray
worker each (strategy, seed) run asks for under ``ntkal run --ray``; it does not change results
and is ignored by the local runner.

``initial_strategy:`` (a strategy name or ``{name, params}``) picks the initial labelled set with
a strategy instead of at random, e.g. ``initial_strategy: typiclust`` (cold start, Hacohen et al.
2022). It runs on the untrained network, so a strategy with a ``representation`` parameter
(TypiClust, ProbCover) gets ``representation: pca`` (a PCA of the raw inputs) unless the entry says
otherwise. The initial set is the same for every strategy of a seed.

A strategy entry may carry ``model:`` overrides (e.g. ``{dropout: 0.3}`` for BALD); this changes
the network for that strategy only, so its curve is no longer a like-for-like comparison. Giving
the shared model dropout keeps every strategy on the same network (the shipped configs do that).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from ntkal.arguments import as_float, as_int, is_integer
from ntkal.learner.active_learner import MODES

__all__ = [
    "ConfigError",
    "DatasetConfig",
    "ModelConfig",
    "Resources",
    "StrategySpec",
    "ExperimentConfig",
    "load_config",
    "parse_config",
    "MODES",
    "RETRAIN",
]

RETRAIN = ("warm", "scratch")


class ConfigError(ValueError):
    """An invalid experiment configuration; the message names the key and the valid options."""


# ----------------------------------------------------------------------------- small checkers
@overload
def _int(
    key: str, value: Any, minimum: int | None = None, allow_none: Literal[False] = False
) -> int: ...


@overload
def _int(
    key: str, value: Any, minimum: int | None = None, allow_none: bool = False
) -> int | None: ...


def _int(key: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    return as_int(value, key, minimum=minimum, error=ConfigError)


def _float(key: str, value: Any, minimum: float = 0.0, maximum: float = float("inf")) -> float:
    value = as_float(value, key, error=ConfigError)
    if not minimum <= value <= maximum:
        raise ConfigError(f"{key} must lie in [{minimum}, {maximum}], got {value}")
    return value


def _bool(key: str, value: Any) -> bool:
    # Strict: YAML's true/false only. A quoted "false" is a non-empty string, truthy in Python.
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false (unquoted), got {value!r}")
    return value


def _choice(key: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"{key} must be one of {', '.join(options)}; got {value!r}")
    return value


def _mapping(key: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _no_unknown(key: str, given: dict, valid: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        where = f"in {key}" if key else "at the top level"
        raise ConfigError(
            f"unknown key(s) {', '.join(map(str, unknown))} {where}; valid keys: {', '.join(valid)}"
        )


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DatasetConfig:
    """Which data: a built-in ``name`` as in :func:`ntkal.data.load_dataset`, or a user's file
    (``path``: ``.npz``, ``.csv``, ``.parquet`` or an image folder, with the reading options of
    :func:`ntkal.data.files.load_file_dataset`), and optional stratified sizes. A relative
    ``path`` is read relative to ``root`` when given, else to the working directory.

    Examples: ``{name: digits}``, ``{path: data.csv, label_column: y}``,
    ``{path: imgs/, image_size: [28, 28]}``.
    """

    name: str
    train_size: int | None = None
    test_size: int | None = None
    root: str | None = None
    path: str | None = None
    label_column: str | None = None
    image_size: tuple[int, int] | None = None
    normalise: str = "standard"
    classes: tuple[str, ...] | None = None
    test_fraction: float = 0.2

    _FILE_KEYS = ("label_column", "image_size", "normalise", "classes", "test_fraction")

    @classmethod
    def parse(cls, raw: Any) -> DatasetConfig:
        if isinstance(raw, str):
            raw = {"name": raw}
        raw = _mapping("dataset", raw)
        _no_unknown(
            "dataset", raw, ("name", "train_size", "test_size", "root", "path") + cls._FILE_KEYS
        )
        sizes: dict[str, Any] = dict(
            train_size=_int("dataset.train_size", raw.get("train_size"), 1, True),
            test_size=_int("dataset.test_size", raw.get("test_size"), 1, True),
            root=None if raw.get("root") is None else str(raw["root"]),
        )
        if raw.get("path") is not None:
            return cls._parse_file(raw, sizes)
        given = sorted(k for k in cls._FILE_KEYS if k in raw)
        if given:
            raise ConfigError(
                f"dataset: {', '.join(given)} apply to a user's files; give dataset.path too"
            )
        from ntkal.data import available_datasets, builtin_dataset_name

        names = tuple(available_datasets())
        name = raw.get("name")
        if name is None:
            raise ConfigError(
                f"dataset.name or dataset.path is required; valid names: {', '.join(names)}"
            )
        key = builtin_dataset_name(str(name))
        if key is None:
            raise ConfigError(f"dataset.name must be one of {', '.join(names)}; got {name!r}")
        return cls(name=key, **sizes)

    @classmethod
    def _parse_file(cls, raw: dict, sizes: dict) -> DatasetConfig:
        from ntkal.data.files import NORMALISE

        path = str(raw["path"])
        size = raw.get("image_size")
        if size is not None:
            if is_integer(size):
                size = [size, size]
            if not isinstance(size, (list, tuple)) or len(size) != 2:
                raise ConfigError(f"dataset.image_size must be [height, width], got {size!r}")
            size = tuple(_int("dataset.image_size[]", v, 1) for v in size)
        classes = raw.get("classes")
        if classes is not None:
            if not isinstance(classes, (list, tuple)) or len(classes) < 2:
                raise ConfigError(
                    f"dataset.classes must be a list of at least two names, got {classes!r}"
                )
            classes = tuple(str(c) for c in classes)
        label_column = raw.get("label_column")
        return cls(
            name=str(raw.get("name") or Path(path.rstrip("/\\")).stem),
            path=path,
            label_column=None if label_column is None else str(label_column),
            image_size=size,
            normalise=_choice("dataset.normalise", raw.get("normalise", "standard"), NORMALISE),
            classes=classes,
            test_fraction=_float("dataset.test_fraction", raw.get("test_fraction", 0.2), 0.0, 0.95),
            **sizes,
        )

    def file_options(self) -> dict:
        """Keyword arguments of :func:`ntkal.data.files.load_file_dataset` (``{}`` for a built-in
        dataset)."""
        if self.path is None:
            return {}
        return {
            "label_column": self.label_column,
            "image_size": self.image_size,
            "normalise": self.normalise,
            "classes": self.classes,
            "test_fraction": self.test_fraction,
        }

    def resolved_path(self) -> Path:
        """Where a user's data lies: ``path``, read relative to ``root`` when that is given."""
        if self.path is None:
            raise ValueError(f"dataset {self.name!r} is built in; it has no path")
        path = Path(self.path).expanduser()
        if self.root is not None and not path.is_absolute():
            path = Path(self.root).expanduser() / path
        return path

    def load(self, seed: int = 0):
        """The :class:`ntkal.data.Dataset` this section describes."""
        from ntkal.data import load_dataset
        from ntkal.data.files import load_file_dataset

        if self.path is None:
            return load_dataset(
                self.name,
                self.root,
                train_size=self.train_size,
                test_size=self.test_size,
                seed=seed,
            )
        dataset = load_file_dataset(self.resolved_path(), seed=0, **self.file_options())
        if self.train_size is None and self.test_size is None:
            return dataset
        return dataset.subset(self.train_size, self.test_size, seed=seed)


@dataclass(frozen=True)
class ModelConfig:
    """Which network: ``name`` as in :func:`ntkal.models.build_model`, width, dropout, extras; or a
    user's ``factory`` (``"package.module:function"``, see :func:`ntkal.models.build_from_factory`)
    called with ``kwargs``."""

    name: str = "mlp"
    width: int | None = None
    dropout: float = 0.0
    kwargs: dict = field(default_factory=dict)
    factory: str | None = None

    @classmethod
    def parse(cls, raw: Any, key: str = "model") -> ModelConfig:
        if isinstance(raw, str):
            raw = {"name": raw}
        raw = _mapping(key, raw)
        _no_unknown(key, raw, ("name", "width", "dropout", "kwargs", "factory"))
        factory = raw.get("factory")
        if factory is not None:
            if (
                not isinstance(factory, str)
                or factory.count(":") != 1
                or not all(factory.split(":"))
            ):
                raise ConfigError(
                    f"{key}.factory must look like 'package.module:function', got {factory!r}"
                )
            clash = sorted(
                k
                for k in ("name", "width", "dropout")
                if raw.get(k) not in (None, 0, 0.0)
                and not (k == "name" and raw.get(k) == "factory")
            )
            if clash:
                raise ConfigError(
                    f"{key}: {', '.join(clash)} apply to the built-in models; a "
                    "factory takes its options in kwargs"
                )
            return cls(
                name="factory", factory=factory, kwargs=_mapping(f"{key}.kwargs", raw.get("kwargs"))
            )
        from ntkal.models import available_models

        return cls(
            name=_choice(f"{key}.name", raw.get("name", "mlp"), tuple(available_models())),
            width=_int(f"{key}.width", raw.get("width"), 1, True),
            dropout=_float(f"{key}.dropout", raw.get("dropout", 0.0), 0.0, 0.99),
            kwargs=_mapping(f"{key}.kwargs", raw.get("kwargs")),
        )

    def build(self, in_shape, num_classes: int):
        """The network (built-in by name, or from the factory)."""
        from ntkal.models import build_from_factory, build_model

        if self.factory is not None:
            return build_from_factory(self.factory, in_shape, num_classes, self.kwargs)
        kwargs = dict(self.kwargs)
        if self.width is not None:
            kwargs["width"] = self.width
        return build_model(self.name, in_shape, num_classes, dropout=self.dropout, **kwargs)

    def merged(self, overrides: dict) -> ModelConfig:
        """This config with ``overrides`` (a strategy's ``model:`` entry) applied."""
        raw = dataclasses.asdict(self)
        raw.update(overrides)
        return ModelConfig.parse(raw, key="model (with strategy overrides)")


@dataclass(frozen=True)
class Resources:
    """What one (strategy, seed) run asks of a Ray worker (``ntkal run --ray``): ``cpus`` (> 0,
    fractions allowed) and ``gpus`` (>= 0, fractions share a device). Scheduling only: results
    do not depend on it, so it is left out of the config hashes."""

    cpus: float = 1.0
    gpus: float = 0.0

    @classmethod
    def parse(cls, raw: Any, key: str = "resources") -> Resources:
        raw = _mapping(key, raw)
        _no_unknown(key, raw, ("cpus", "gpus"))
        cpus = _float(f"{key}.cpus", raw.get("cpus", 1.0), 0.0, 1024.0)
        if cpus <= 0:
            raise ConfigError(f"{key}.cpus must be > 0, got {cpus}")
        return cls(cpus=cpus, gpus=_float(f"{key}.gpus", raw.get("gpus", 0.0), 0.0, 64.0))


@dataclass(frozen=True)
class StrategySpec:
    """One strategy of the comparison: registry ``name``, constructor ``params``, a ``label``
    (unique; the name by default), optional per-strategy ``model`` overrides and ``mode``
    (``batch`` or ``sequential``; the config's ``mode`` when not given), so that one run can
    compare e.g. sequential MLMOC with batch MLMOC and the baselines."""

    name: str
    params: dict = field(default_factory=dict)
    label: str = ""
    model: dict = field(default_factory=dict)
    mode: str | None = None
    resources: Resources | None = None

    @classmethod
    def parse(cls, raw: Any, position: int) -> StrategySpec:
        key = f"strategies[{position}]"
        if isinstance(raw, str):
            raw = {"name": raw}
        raw = _mapping(key, raw)
        _no_unknown(key, raw, ("name", "params", "label", "model", "mode", "resources"))
        from ntkal.strategies import available_strategies

        names = tuple(available_strategies())
        name = raw.get("name")
        if name not in names:
            raise ConfigError(
                f"{key}.name: unknown strategy {name!r}; valid names: {', '.join(names)}"
            )
        params = _mapping(f"{key}.params", raw.get("params"))
        model = _mapping(f"{key}.model", raw.get("model"))
        _no_unknown(f"{key}.model", model, ("name", "width", "dropout", "kwargs", "factory"))
        label = str(raw.get("label") or name)
        mode = raw.get("mode")
        if mode is not None:
            mode = _choice(f"{key}.mode", mode, MODES)
        resources = raw.get("resources")
        if resources is not None:
            resources = Resources.parse(resources, f"{key}.resources")
        return cls(
            name=name, params=params, label=label, model=model, mode=mode, resources=resources
        )

    def build(self):
        """The strategy object (errors in ``params`` name this entry and the key). A look-ahead
        strategy validates its :class:`ntkal.lookahead.LookaheadSettings` here, so a bad value
        (``eval_size: -3``, ``engine: fast``) fails when the config is parsed."""
        from ntkal.lookahead import LookaheadSettings
        from ntkal.strategies import get_strategy

        try:
            return get_strategy(self.name, **self.params)
        except (TypeError, ValueError) as err:
            text = str(err)
            key = text.split(" ", 1)[0]
            if key in self.params and key in LookaheadSettings.names():
                text = f"params.{text}"  # "eval_size must be ..." -> "params.eval_size must ..."
            raise ConfigError(f"strategy {self.label!r}: {text}") from err


def _trainer_fields() -> tuple[str, ...]:
    from ntkal.training import TRAIN_CONFIG_KEYS

    return TRAIN_CONFIG_KEYS


# ----------------------------------------------------------------------------- the experiment
_TOP = (
    "name",
    "dataset",
    "model",
    "trainer",
    "strategies",
    "initial_size",
    "budget",
    "cycles",
    "subset",
    "seeds",
    "mode",
    "device",
    "retrain",
    "stratified_initial",
    "threads",
    "resources",
    "initial_strategy",
)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole comparison: every strategy x seed runs ``cycles`` acquisition rounds.

    Attributes
    ----------
    initial_size : int
        Labelled points before the first round (a seeded draw, the same for every strategy of a
        seed; stratified by default so every class is present).
    budget : int
        Points labelled per round.
    cycles : int
        Acquisition rounds; accuracy is recorded ``cycles + 1`` times, at
        ``initial_size + c * budget`` labels for ``c = 0..cycles``.
    subset : int, optional
        Unlabelled points scored per round (``None``: the whole pool).
    retrain : {"warm", "scratch"}
        Continue from the previous round's weights (the reference protocol) or re-initialise.
    threads : int, optional
        CPU threads for torch (``torch.set_num_threads``); ``None`` leaves torch's default. One
        thread is faster for tiny networks, and far faster on a machine whose cores are busy
        (multi-threaded small matrix products then spend their time waiting on each other).
    resources : Resources
        Each run's share of a Ray worker under ``ntkal run --ray`` (a strategy entry's own
        ``resources`` wins); see :meth:`resources_for`.
    initial_strategy : StrategySpec, optional
        Strategy that picks the initial labelled set from the whole pool (on the untrained
        network; ``None``: a seeded random draw, stratified if ``stratified_initial``).
    """

    dataset: DatasetConfig
    model: ModelConfig
    trainer: dict
    strategies: tuple[StrategySpec, ...]
    initial_size: int
    budget: int
    cycles: int
    subset: int | None = None
    seeds: tuple[int, ...] = (0,)
    mode: str = "batch"
    device: str = "cpu"
    retrain: str = "warm"
    stratified_initial: bool = True
    name: str = "experiment"
    threads: int | None = None
    resources: Resources = field(default_factory=Resources)
    initial_strategy: StrategySpec | None = None

    # ------------------------------------------------------------------ derived
    def train_config(self):
        """A :class:`ntkal.training.TrainConfig` from ``trainer`` (device filled in)."""
        from ntkal.training import TrainConfig

        raw = dict(self.trainer)
        raw["device"] = self.device
        try:
            return TrainConfig(**raw)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"trainer: {err}") from err

    def model_for(self, spec: StrategySpec) -> ModelConfig:
        return self.model.merged(spec.model) if spec.model else self.model

    def to_dict(self) -> dict:
        """Plain-type form (what ``parse_config`` reads back)."""
        out = dataclasses.asdict(self)
        out["strategies"] = [dataclasses.asdict(s) for s in self.strategies]
        out["seeds"] = list(self.seeds)
        for entry in out["strategies"]:
            if entry["resources"] is None:
                del entry["resources"]
        if out["dataset"].get("path") is None:  # built-in data: the file-only keys do not apply
            for key in ("path",) + DatasetConfig._FILE_KEYS:
                out["dataset"].pop(key, None)
        if self.initial_strategy is None:
            del out["initial_strategy"]  # configs without one hash as before the key existed
        else:
            out["initial_strategy"] = dataclasses.asdict(self.initial_strategy)
        return out

    def shared_hash(self) -> str:
        """Hash of every setting that changes a single (strategy, seed) run, except the strategy
        itself: seeds, strategies, device, threads and name may change between resumed
        invocations."""
        raw = self.to_dict()
        for key in ("seeds", "strategies", "device", "name", "threads", "resources"):
            raw.pop(key)
        raw["dataset"].pop("root", None)  # where the files are, not which data
        if raw["model"].get("factory") is None:  # built-in models hash as before factories
            raw["model"].pop("factory", None)
        return _hash(raw)

    def mode_for(self, spec: StrategySpec) -> str:
        """The strategy's own ``mode`` if it has one, else the config's."""
        return spec.mode or self.mode

    def strategy_hash(self, spec: StrategySpec) -> str:
        """Hash of one strategy entry together with the shared settings."""
        entry = dataclasses.asdict(spec)
        if entry["mode"] is None:
            del entry["mode"]  # entries without a mode hash as before the key existed
        del entry["resources"]  # scheduling, not results
        return _hash(
            {
                "shared": self.shared_hash(),
                "strategy": entry,
                "model": _model_entry(self.model_for(spec)),
            }
        )

    def resources_for(self, spec: StrategySpec) -> Resources:
        """The strategy's own ``resources`` if it has them, else the config's."""
        return spec.resources or self.resources

    def validate_against(self, num_train: int, num_classes: int) -> None:
        """Checks that need the loaded dataset: sizes against the pool and the classes."""
        if (
            self.stratified_initial
            and self.initial_strategy is None
            and self.initial_size < num_classes
        ):
            raise ConfigError(
                f"initial_size ({self.initial_size}) must be >= the number of classes "
                f"({num_classes}) so that every class is labelled at the start"
            )
        need = self.initial_size + self.budget * self.cycles
        if need > num_train:
            raise ConfigError(
                f"initial_size + budget * cycles = {need} labels exceeds the pool of "
                f"{num_train} training points; lower budget or cycles"
            )
        if self.subset is not None and self.subset < self.budget:
            raise ConfigError(f"subset ({self.subset}) must be >= budget ({self.budget})")

    def with_overrides(
        self, *, seeds=None, device=None, threads=None, data_root=None
    ) -> ExperimentConfig:
        """A copy with command-line overrides applied (``data_root`` says where the files are,
        not what is run, so it does not change the results' identity)."""
        changes: dict[str, Any] = {}
        if data_root is not None:
            changes["dataset"] = dataclasses.replace(self.dataset, root=str(data_root))
        if threads is not None:
            changes["threads"] = _int("threads", threads, 1)
        if seeds is not None:
            changes["seeds"] = _seeds(list(seeds))
        if device is not None:
            changes["device"] = _device(device)
        return dataclasses.replace(self, **changes)


def _model_entry(model: ModelConfig) -> dict:
    entry = dataclasses.asdict(model)
    if entry["factory"] is None:
        del entry["factory"]
    return entry


def _hash(raw: Any) -> str:
    text = json.dumps(raw, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _seeds(raw: Any) -> tuple[int, ...]:
    if is_integer(raw):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"seeds must be a non-empty list of integers, got {raw!r}")
    seeds = tuple(_int("seeds[]", s, 0) for s in raw)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {list(seeds)}")
    return seeds


def _device(value: Any) -> str:
    value = str(value)
    if value not in ("cpu", "cuda", "auto") and not value.startswith("cuda:"):
        raise ConfigError(f"device must be one of cpu, cuda, cuda:N, auto; got {value!r}")
    return value


def _initial_strategy(raw: Any) -> StrategySpec | None:
    """Parse ``initial_strategy``: a batch strategy run once per seed on the untrained network."""
    if raw is None:
        return None
    try:
        spec = StrategySpec.parse(raw, 0)
    except ConfigError as err:
        raise ConfigError(str(err).replace("strategies[0]", "initial_strategy")) from err
    if spec.model or spec.mode not in (None, "batch"):
        raise ConfigError(
            "initial_strategy takes only name and params (it runs once, in batch "
            "mode, on the shared model)"
        )
    from ntkal.strategies.registry import strategy_parameters

    if "representation" in strategy_parameters(spec.name) and "representation" not in spec.params:
        spec = dataclasses.replace(spec, params={**spec.params, "representation": "pca"})
    strategy = spec.build()
    if getattr(strategy, "needs_dropout", False):
        raise ConfigError(
            f"initial_strategy {spec.name!r} uses MC dropout on a trained network; "
            "use a cold-start strategy such as typiclust, probcover or random"
        )
    return spec


def parse_config(raw: Any) -> ExperimentConfig:
    """Validate a config mapping (e.g. from YAML) into an :class:`ExperimentConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(raw).__name__}")
    _no_unknown("", raw, _TOP)
    for key in ("dataset", "strategies", "initial_size", "budget", "cycles"):
        if key not in raw:
            raise ConfigError(f"missing required key {key!r}")
    trainer = _mapping("trainer", raw.get("trainer"))
    _no_unknown("trainer", trainer, _trainer_fields())
    strategies_raw = raw["strategies"]
    if not isinstance(strategies_raw, list) or not strategies_raw:
        raise ConfigError("strategies must be a non-empty list of names or {name, params} mappings")
    strategies = tuple(StrategySpec.parse(s, i) for i, s in enumerate(strategies_raw))
    labels = [s.label for s in strategies]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(
            f"strategies: {', '.join(dupes)} appear(s) more than once; give each "
            "entry a distinct `label`"
        )
    model = ModelConfig.parse(raw.get("model"))
    cfg = ExperimentConfig(
        dataset=DatasetConfig.parse(raw["dataset"]),
        model=model,
        trainer=trainer,
        strategies=strategies,
        initial_size=_int("initial_size", raw["initial_size"], 1),
        budget=_int("budget", raw["budget"], 1),
        cycles=_int("cycles", raw["cycles"], 0),
        subset=_int("subset", raw.get("subset"), 1, True),
        seeds=_seeds(raw.get("seeds", [0])),
        mode=_choice("mode", raw.get("mode", "batch"), MODES),
        device=_device(raw.get("device", "cpu")),
        retrain=_choice("retrain", raw.get("retrain", "warm"), RETRAIN),
        stratified_initial=_bool("stratified_initial", raw.get("stratified_initial", True)),
        name=str(raw.get("name", "experiment")),
        threads=_int("threads", raw.get("threads"), 1, True),
        resources=Resources.parse(raw.get("resources")),
        initial_strategy=_initial_strategy(raw.get("initial_strategy")),
    )
    if cfg.subset is not None and cfg.subset < cfg.budget:
        raise ConfigError(f"subset ({cfg.subset}) must be >= budget ({cfg.budget})")
    from ntkal.strategies.base import Strategy

    for spec in strategies:
        strategy = spec.build()  # parameter errors now, not mid-run
        if (
            cfg.mode_for(spec) == "sequential"
            and type(strategy).begin_sequential is Strategy.begin_sequential
        ):
            raise ConfigError(
                f"mode: sequential needs look-ahead strategies; {spec.label!r} has no "
                "sequential mode (use mode: batch)"
            )
        if getattr(strategy, "needs_dropout", False) and cfg.model_for(spec).dropout <= 0:
            raise ConfigError(
                f"strategy {spec.label!r} uses MC dropout: set model.dropout > 0 "
                f"(or strategies[{labels.index(spec.label)}].model.dropout)"
            )
    cfg.train_config()  # TrainConfig's own validation
    return cfg


#: Largest config file read (bytes); real configs are a few hundred bytes.
MAX_CONFIG_BYTES = 1 << 20


def _yaml_loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """``SafeLoader`` that refuses aliases (``*name``): nested aliases expand exponentially
        ("billion laughs"), and a config has no need for them."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise ConfigError(
                    f"line {event.start_mark.line + 1}: YAML aliases "
                    f"(*{event.anchor}) are not allowed in configs; write the "
                    "values out"
                )
            return super().compose_node(parent, index)

    return NoAliasLoader


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML experiment config.

    Raises
    ------
    ConfigError
        The file is missing, larger than ``MAX_CONFIG_BYTES``, not UTF-8 text, not valid YAML,
        uses YAML aliases, or fails validation; the message names the file.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is {size} bytes, more than the "
            f"{MAX_CONFIG_BYTES} a config may have; is it the right file?"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.start}); is it the right file?"
        ) from None
    try:
        raw = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    try:
        return parse_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{path.name}: {err}") from err
