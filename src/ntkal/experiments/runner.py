"""Run every strategy x seed of an :class:`ExperimentConfig`, resumably.

Per (strategy, seed) run, cycle ``c = 0..cycles``: train (warm start unless ``retrain: scratch``),
record the last-epoch test accuracy, then (except after the last cycle) query ``budget`` points,
timed, and teach their dataset labels. Every seed draws one initial labelled set shared by all
strategies, so curves of one seed differ only by what the strategies chose.

Output directory layout::

    results.json        config, hashes and one record per (strategy, seed, cycle); rewritten
                        atomically after every record
    results.csv         the same records as a table
    state/<label>-seed<seed>.pt
                        the learner after its last finished cycle (labels, weights, counters)
    learning_curves.png, auc.json, auc.md   written at the end (see :mod:`ntkal.experiments.plots`)

Resuming: running the same config into the same directory skips finished records and continues
each unfinished run from its saved learner, so an interrupted run ends exactly as an uninterrupted
one would. Seeds and strategies may be added between invocations; a change to anything else
(dataset, model, trainer, sizes, mode, retrain, or the parameters of a strategy already run) is
refused with :class:`ConfigError` rather than silently mixing results: use a new ``--out`` or
``overwrite=True``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from ntkal.atomic_files import atomic_write_text
from ntkal.progress import environment_is_quiet
from ntkal.experiments.config import ConfigError, ExperimentConfig, StrategySpec

__all__ = ["run_experiment", "run_strategy_seed", "is_quiet", "RECORD_FIELDS", "RESULTS_FORMAT"]

RESULTS_FORMAT = "ntkal.results"
RECORD_FIELDS = ("strategy", "seed", "cycle", "labelled", "accuracy", "query_seconds",
                 "train_seconds")


def is_quiet(quiet: Optional[bool] = None) -> bool:
    """Explicit ``quiet`` wins; otherwise quiet when ``NTKAL_QUIET=1`` or ``CI`` is set."""
    if quiet is not None:
        return bool(quiet)
    return environment_is_quiet()


def records_to_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(RECORD_FIELDS), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


class _Results:
    """results.json / results.csv of one output directory."""

    def __init__(self, out: Path, config: ExperimentConfig, overwrite: bool) -> None:
        self.out = out
        self.json_path = out / "results.json"
        self.csv_path = out / "results.csv"
        self.config = config
        self.records: list[dict] = []
        self.strategy_hashes: dict[str, str] = {}
        if overwrite:
            for p in (self.json_path, self.csv_path):
                p.unlink(missing_ok=True)
            shutil.rmtree(out / "state", ignore_errors=True)
        if self.json_path.exists():
            self._load_existing()
        for spec in config.strategies:
            self.strategy_hashes[spec.label] = config.strategy_hash(spec)

    def _load_existing(self) -> None:
        try:
            old = json.loads(self.json_path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{self.json_path} exists but cannot be read ({err}); use another "
                              "output directory or --overwrite") from err
        if not isinstance(old, dict) or old.get("format") != RESULTS_FORMAT:
            raise ConfigError(f"{self.json_path} is not an ntkal results file; use another output "
                              "directory or --overwrite")
        if old.get("config_hash") != self.config.shared_hash():
            raise ConfigError(f"{self.out} holds results of a different config (dataset, model, "
                              "trainer, sizes, mode or retrain changed); use another output "
                              "directory (--out) or --overwrite")
        old_hashes = old.get("strategy_hashes", {})
        for spec in self.config.strategies:
            if spec.label in old_hashes and old_hashes[spec.label] != self.config.strategy_hash(spec):
                raise ConfigError(f"strategy {spec.label!r} was run in {self.out} with different "
                                  "parameters; give the new entry another label, use another "
                                  "output directory (--out) or --overwrite")
        self.strategy_hashes.update(old_hashes)
        from ntkal.experiments.plots import check_records

        try:
            self.records = list(check_records(old.get("records", []), str(self.json_path),
                                              RECORD_FIELDS[:5]))
        except ValueError as err:
            raise ConfigError(f"{err}; use another output directory or --overwrite") from None

    def finished(self, label: str, seed: int) -> set[int]:
        return {r["cycle"] for r in self.records if r["strategy"] == label and r["seed"] == seed}

    def drop_from(self, label: str, seed: int, cycle: int) -> None:
        self.records = [r for r in self.records
                        if not (r["strategy"] == label and r["seed"] == seed and r["cycle"] >= cycle)]

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        doc = {"format": RESULTS_FORMAT, "version": 1, "name": self.config.name,
               "config_hash": self.config.shared_hash(), "strategy_hashes": self.strategy_hashes,
               "config": self.config.to_dict(), "records": self.records}
        atomic_write_text(self.json_path, json.dumps(doc, indent=1))
        atomic_write_text(self.csv_path, records_to_csv(self.records))


def _resolve_device(device: str) -> str:
    from ntkal.models.devices import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as err:
        raise ConfigError(f"{err} (on the command line: --device cpu)") from None


def _build_model(config: ExperimentConfig, spec: StrategySpec, dataset, seed: int):
    mcfg = config.model_for(spec)
    torch.manual_seed(seed)  # the same initial weights for every strategy of a seed
    return mcfg.build(dataset.in_shape, dataset.num_classes)


def _state_path(out: Path, label: str, seed: int) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return out / "state" / f"{safe}-seed{seed}.pt"


def _progress(quiet: bool, console):
    if quiet:
        return nullcontext(None)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def run_experiment(config: ExperimentConfig, out_dir: Union[str, os.PathLike], *,
                   quiet: Optional[bool] = None, overwrite: bool = False, console=None,
                   plot: bool = True) -> list[dict]:
    """Run (or resume) every strategy x seed of ``config``, writing results into ``out_dir``.

    Parameters
    ----------
    config : ExperimentConfig
    out_dir : path
        Output directory (created); see the module docstring for its layout and resuming.
    quiet : bool, optional
        No progress display (default: from ``NTKAL_QUIET`` / ``CI``, see :func:`is_quiet`).
    overwrite : bool
        Discard earlier results in ``out_dir`` instead of resuming.
    console : rich.console.Console, optional
    plot : bool
        Write the learning-curve PNG and AUC tables at the end.

    Returns
    -------
    list of dict
        All records (finished earlier and now), with keys :data:`RECORD_FIELDS`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet = is_quiet(quiet)
    device = _resolve_device(config.device)
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run_all(config, out, quiet, device, overwrite, console, plot)
    finally:
        torch.set_num_threads(threads_before)


def _run_all(config: ExperimentConfig, out: Path, quiet: bool, device: str, overwrite: bool,
             console, plot: bool) -> list[dict]:

    results = _Results(out, config, overwrite)
    ds = config.dataset
    dataset = ds.load(seed=0)
    if dataset.num_unlabelled:
        raise ConfigError(f"dataset {ds.path or ds.name!r} has {dataset.num_unlabelled} unlabelled "
                          "training points: `ntkal run` simulates the annotator with the known "
                          "labels, so every pool point needs one; label them with `ntkal label`")
    if dataset.num_test == 0:
        raise ConfigError(f"dataset {ds.path or ds.name!r} has no labelled test points to score "
                          "on; add x_test/y_test or set dataset.test_fraction > 0")
    config.validate_against(dataset.num_train, dataset.num_classes)
    runs = [(spec, seed) for seed in config.seeds for spec in config.strategies]
    y_train = dataset.y_train.numpy()
    initial_sets: dict[int, object] = {}

    def initial_for(seed: int):
        if seed not in initial_sets:
            initial_sets[seed] = _initial_labelled(config, dataset, y_train, seed, device)
        return initial_sets[seed]

    with _progress(quiet, console) as progress:
        if progress is not None:
            all_runs = progress.add_task("runs", total=len(runs))
            cycles_task = progress.add_task("cycles", total=config.cycles + 1)
        for spec, seed in runs:
            if progress is not None:
                progress.update(cycles_task, completed=0,
                                description=f"{spec.label} seed {seed}")
            run_strategy_seed(
                config, spec, seed, dataset, device=device,
                finished=results.finished(spec.label, seed),
                state_path=_state_path(out, spec.label, seed),
                restart_from=lambda cycle, label=spec.label, seed=seed:
                    results.drop_from(label, seed, cycle),
                add_record=results.add,
                tick=lambda: progress.advance(cycles_task) if progress is not None else None,
                initial_for=initial_for)
            if progress is not None:
                progress.advance(all_runs)
    results.write()
    if plot and results.records:
        from ntkal.experiments.plots import write_report

        write_report(results.records, out, title=config.name)
    return results.records


def _initial_labelled(config: ExperimentConfig, dataset, y_train, seed: int, device: str):
    """The seed's initial labelled pool indices: a seeded random draw, or ``initial_strategy``'s
    choice from the whole pool on the seed's untrained network (no labelled points yet)."""
    import numpy as np

    from ntkal.data import Pool

    if config.initial_strategy is None:
        return Pool.random_initial(dataset.num_train, config.initial_size, seed, y=y_train,
                                   stratified=config.stratified_initial).labelled_indices
    from ntkal.strategies.base import QueryContext

    spec = config.initial_strategy
    model = _build_model(config, StrategySpec(name=spec.name), dataset, seed)
    x = dataset.x_train
    context = QueryContext(model=model, x_candidates=x, x_labelled=x[:0],
                           y_labelled=torch.zeros(0, dtype=torch.long),
                           num_classes=dataset.num_classes, seed=seed, device=torch.device(device))
    chosen = np.asarray(spec.build().query(context, config.initial_size).indices, dtype=np.int64)
    if np.unique(chosen).size != config.initial_size:
        raise RuntimeError(f"initial_strategy {spec.name!r} returned {np.unique(chosen).size} "
                           f"distinct points, expected {config.initial_size}")
    return np.sort(chosen)


def run_strategy_seed(config: ExperimentConfig, spec: StrategySpec, seed: int, dataset, *,
                      device: str, finished: set[int], state_path: Path,
                      restart_from: Callable[[int], None], add_record: Callable[[dict], None],
                      tick: Callable[[], None] = lambda: None,
                      initial_for: Optional[Callable[[int], Any]] = None) -> None:
    """One (strategy, seed) run from its first unfinished cycle: what every runner executes.

    Parameters
    ----------
    config, spec, seed
        The experiment, the strategy entry and the seed of this run.
    dataset : ntkal.data.Dataset
        The loaded dataset of ``config``.
    device : str
        A resolved torch device (not ``"auto"``).
    finished : set of int
        Cycles already recorded for this run.
    state_path : Path
        Where the learner is saved after every cycle, and resumed from when ``finished`` is not
        empty.
    restart_from : callable
        ``restart_from(cycle)``: earlier records of this run from ``cycle`` on are void (called
        before any record of a resumed or restarted run is added).
    add_record : callable
        Receives each new record (keys :data:`RECORD_FIELDS`), in cycle order.
    tick : callable
        Called once per cycle (finished earlier or now), for progress displays.
    initial_for : callable, optional
        ``initial_for(seed)``: the initial labelled pool indices (lets a runner share one draw, or
        one ``initial_strategy`` query, among the strategies of a seed); default: computed here.
    """
    from ntkal.learner import ActiveLearner

    label = spec.label
    done = set(finished)
    train_config = config.train_config()
    y_train = dataset.y_train.numpy()
    if done >= set(range(config.cycles + 1)):
        for _ in range(config.cycles + 1):
            tick()
        return
    model = _build_model(config, spec, dataset, seed)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    strategy = spec.build()
    learner = None
    if done and state_path.exists():
        try:
            learner = ActiveLearner.load(state_path, model=model, strategy=strategy,
                                         x_pool=dataset.x_train, y_pool=y_train,
                                         train_config=train_config, device=device)
        except (ValueError, RuntimeError, KeyError):
            learner = None  # unreadable state: redo this run from the start
        if learner is not None and \
                learner.labelled_indices.size != config.initial_size + learner.cycle * config.budget:
            learner = None
    if learner is None:
        restart_from(0)
        model.load_state_dict(init_state)
        learner = ActiveLearner(model, strategy, dataset.x_train, y_pool=y_train,
                                labelled=(initial_for(seed) if initial_for is not None else
                                         _initial_labelled(config, dataset, y_train, seed, device)),
                                num_classes=dataset.num_classes,
                                train_config=train_config, mode=config.mode_for(spec),
                                subset=config.subset, seed=seed, device=device)
    start = learner.cycle
    restart_from(start)  # records ahead of the saved state are redone
    for _ in range(start):
        tick()
    for cycle in range(start, config.cycles + 1):
        if config.retrain == "scratch":
            learner.model.load_state_dict(init_state)
        t0 = time.perf_counter()
        learner.fit()
        train_seconds = time.perf_counter() - t0
        accuracy = learner.score(dataset.x_test, dataset.y_test)
        labelled = int(learner.labelled_indices.size)
        query_seconds = None
        if cycle < config.cycles:
            t0 = time.perf_counter()
            idx = learner.query(config.budget)
            query_seconds = time.perf_counter() - t0
            learner.teach(idx, y_train[idx])
        add_record({"strategy": label, "seed": seed, "cycle": cycle, "labelled": labelled,
                    "accuracy": accuracy, "query_seconds": query_seconds,
                    "train_seconds": train_seconds})
        learner.save(state_path, include_pool=False)  # after the record: a crash between redoes it
        tick()
