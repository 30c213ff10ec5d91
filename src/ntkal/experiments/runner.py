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

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ntkal.experiments.config import ExperimentConfig, StrategySpec
from ntkal.experiments.results import (
    RECORD_FIELDS,
    RESULTS_FORMAT,
    Results,
    is_quiet,
    load_run_dataset,
    progress_display,
    resolve_device,
    state_path,
)

__all__ = ["run_experiment", "run_strategy_seed", "is_quiet", "RECORD_FIELDS", "RESULTS_FORMAT"]


def _build_model(config: ExperimentConfig, spec: StrategySpec, dataset, seed: int):
    mcfg = config.model_for(spec)
    torch.manual_seed(seed)  # the same initial weights for every strategy of a seed
    return mcfg.build(dataset.in_shape, dataset.num_classes)


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | os.PathLike,
    *,
    quiet: bool | None = None,
    overwrite: bool = False,
    console=None,
    plot: bool = True,
) -> list[dict]:
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
    device = resolve_device(config.device)
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run_all(config, out, quiet, device, overwrite, console, plot)
    finally:
        torch.set_num_threads(threads_before)


def _run_all(
    config: ExperimentConfig,
    out: Path,
    quiet: bool,
    device: str,
    overwrite: bool,
    console,
    plot: bool,
) -> list[dict]:
    results = Results(out, config, overwrite)
    dataset = load_run_dataset(config)
    runs = [(spec, seed) for seed in config.seeds for spec in config.strategies]
    y_train = dataset.y_train.numpy()
    initial_sets: dict[int, object] = {}

    def initial_for(seed: int):
        if seed not in initial_sets:
            initial_sets[seed] = _initial_labelled(config, dataset, y_train, seed, device)
        return initial_sets[seed]

    with progress_display(quiet, console) as progress:
        if progress is not None:
            all_runs = progress.add_task("runs", total=len(runs))
            cycles_task = progress.add_task("cycles", total=config.cycles + 1)
        for spec, seed in runs:
            if progress is not None:
                progress.update(cycles_task, completed=0, description=f"{spec.label} seed {seed}")
            run_strategy_seed(
                config,
                spec,
                seed,
                dataset,
                device=device,
                finished=results.finished(spec.label, seed),
                state_path=state_path(out, spec.label, seed),
                restart_from=functools.partial(results.drop_from, spec.label, seed),
                add_record=results.add,
                tick=lambda: progress.advance(cycles_task) if progress is not None else None,
                initial_for=initial_for,
            )
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
        return Pool.random_initial(
            dataset.num_train,
            config.initial_size,
            seed,
            y=y_train,
            stratified=config.stratified_initial,
        ).labelled_indices
    from ntkal.strategies.base import QueryContext

    spec = config.initial_strategy
    model = _build_model(config, StrategySpec(name=spec.name), dataset, seed)
    x = dataset.x_train
    context = QueryContext(
        model=model,
        x_candidates=x,
        x_labelled=x[:0],
        y_labelled=torch.zeros(0, dtype=torch.long),
        num_classes=dataset.num_classes,
        seed=seed,
        device=torch.device(device),
    )
    chosen = np.asarray(spec.build().query(context, config.initial_size).indices, dtype=np.int64)
    if np.unique(chosen).size != config.initial_size:
        raise RuntimeError(
            f"initial_strategy {spec.name!r} returned {np.unique(chosen).size} "
            f"distinct points, expected {config.initial_size}"
        )
    return np.sort(chosen)


def _saved_learner(
    config: ExperimentConfig, dataset, model, strategy, state_path: Path, device: str
):
    """The learner saved at ``state_path``, or ``None`` when there is none, it is unreadable, or
    its labelled count does not fit its cycle (the run is then redone from the start)."""
    from ntkal.learner import ActiveLearner

    if not state_path.exists():
        return None
    try:
        learner = ActiveLearner.load(
            state_path,
            model=model,
            strategy=strategy,
            x_pool=dataset.x_train,
            y_pool=dataset.y_train.numpy(),
            train_config=config.train_config(),
            device=device,
        )
    except (ValueError, RuntimeError, KeyError):
        return None
    if learner.labelled_indices.size != config.initial_size + learner.cycle * config.budget:
        return None
    return learner


def run_strategy_seed(
    config: ExperimentConfig,
    spec: StrategySpec,
    seed: int,
    dataset,
    *,
    device: str,
    finished: set[int],
    state_path: Path,
    restart_from: Callable[[int], None],
    add_record: Callable[[dict], None],
    tick: Callable[[], None] = lambda: None,
    initial_for: Callable[[int], Any] | None = None,
) -> None:
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
    learner = _saved_learner(config, dataset, model, strategy, state_path, device) if done else None
    if learner is None:
        restart_from(0)
        model.load_state_dict(init_state)
        learner = ActiveLearner(
            model,
            strategy,
            dataset.x_train,
            y_pool=y_train,
            labelled=(
                initial_for(seed)
                if initial_for is not None
                else _initial_labelled(config, dataset, y_train, seed, device)
            ),
            num_classes=dataset.num_classes,
            train_config=train_config,
            mode=config.mode_for(spec),
            subset=config.subset,
            seed=seed,
            device=device,
        )
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
        add_record(
            {
                "strategy": label,
                "seed": seed,
                "cycle": cycle,
                "labelled": labelled,
                "accuracy": accuracy,
                "query_seconds": query_seconds,
                "train_seconds": train_seconds,
            }
        )
        learner.save(state_path, include_pool=False)  # after the record: a crash between redoes it
        tick()
