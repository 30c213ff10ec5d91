"""Run an experiment's (strategy, seed) runs as Ray tasks, into the same resumable records.

``ntkal run CONFIG --ray`` starts a private Ray on this machine (loopback only, see
:func:`ntkal.ray_cluster.ray_cluster`); ``--ray-address ADDRESS`` joins an existing cluster. Every unfinished
(strategy, seed) run becomes one task asking for the config's ``resources`` (``cpus``, ``gpus``;
a strategy entry's own ``resources`` win). A task runs :func:`ntkal.experiments.runner.run_strategy_seed`,
the function the local runner calls, so the records are the local runner's records: the same
seeds give the same accuracies (timing fields aside) when both use the same torch thread count
(set ``threads`` in the config; without it a task uses ``floor(cpus)`` threads).

Tasks need no shared filesystem: a task receives the run's saved learner state (when resuming)
and returns its records and final state; the driver alone writes ``results.json`` and
``state/``. The output directory therefore resumes either way (local after Ray, Ray after local).
Its granularity under Ray is a whole run: a run interrupted mid-way is redone from the last
state the driver holds. On a remote cluster the nodes need ntkal installed and the dataset's files
(``dataset.root`` or ``$NTKAL_DATA``) at the same path; ``digits`` and ``synthetic`` are built in.

The driver loads and checks the dataset exactly as the local runner does
(:func:`ntkal.experiments.results.load_run_dataset`) before any task starts. Install with
``pip install 'ntkal[ray]'``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import torch

from ntkal.atomic_files import atomic_write
from ntkal.experiments.config import ConfigError, ExperimentConfig, StrategySpec
from ntkal.experiments.results import (
    Results,
    is_quiet,
    load_run_dataset,
    progress_display,
    resolve_device,
    state_path,
)
from ntkal.experiments.runner import run_strategy_seed
from ntkal.ray_cluster import LOOPBACK, RayTaskFailed, as_completed, import_ray, ray_cluster

__all__ = ["ray_cluster", "run_experiment_ray", "import_ray", "LOOPBACK"]

# ----------------------------------------------------------------------------- worker side
_DATASETS: dict = {}


def _dataset(cfg):
    """The config's dataset, loaded once per worker process."""
    if cfg not in _DATASETS:
        _DATASETS[cfg] = cfg.load(seed=0)
    return _DATASETS[cfg]


def _run_in_worker(
    config: ExperimentConfig,
    spec: StrategySpec,
    seed: int,
    finished: set[int],
    state: bytes | None,
) -> dict:
    """One (strategy, seed) run inside a Ray task; returns what the driver merges."""
    threads = config.threads or max(1, int(config.resources_for(spec).cpus))
    torch.set_num_threads(threads)
    device = resolve_device(config.device)
    dataset = _dataset(config.dataset)
    restarts: list[int] = []
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ntkal-run-") as tmp:
        state_path = Path(tmp) / "learner.pt"
        if state is not None:
            state_path.write_bytes(state)
        run_strategy_seed(
            config,
            spec,
            seed,
            dataset,
            device=device,
            finished=finished,
            state_path=state_path,
            restart_from=restarts.append,
            add_record=records.append,
        )
        final = state_path.read_bytes() if state_path.exists() else None
    return {"restarts": restarts, "records": records, "state": final, "pid": os.getpid()}


# ----------------------------------------------------------------------------- driver side
def _merge(results: Results, out: Path, spec: StrategySpec, seed: int, outcome: dict) -> None:
    for cycle in outcome["restarts"]:
        results.drop_from(spec.label, seed, cycle)
    results.records.extend(outcome["records"])
    if outcome["state"] is not None:
        data = outcome["state"]
        atomic_write(state_path(out, spec.label, seed), lambda fh: fh.write(data), binary=True)
    results.write()


def _canonical_order(config: ExperimentConfig, records: list[dict]) -> list[dict]:
    """The local runner's order: seed, then strategy (config order), then cycle; records of
    entries no longer in the config keep their place after those."""
    seeds = {s: i for i, s in enumerate(config.seeds)}
    labels = {s.label: i for i, s in enumerate(config.strategies)}
    return sorted(
        records,
        key=lambda r: (
            seeds.get(r["seed"], len(seeds)),
            labels.get(r["strategy"], len(labels)),
            r["cycle"],
        ),
    )


def _task_error(cause: BaseException, spec: StrategySpec, seed: int) -> BaseException:
    message = f"run {spec.label!r} seed {seed} failed on a Ray worker: {cause}"
    if isinstance(cause, ConfigError):
        return ConfigError(message)
    return RuntimeError(
        f"run {spec.label!r} seed {seed} failed on a Ray worker: {type(cause).__name__}: {cause}"
    )


def _check_gpu_shares(config: ExperimentConfig) -> None:
    if config.device.startswith("cuda"):
        for spec in config.strategies:
            if config.resources_for(spec).gpus <= 0:
                raise ConfigError(
                    f"device {config.device!r} under Ray needs resources.gpus > 0 "
                    f"(strategy {spec.label!r} asks for none)"
                )


def _for_workers(config: ExperimentConfig) -> ExperimentConfig:
    """The config as tasks receive it: a user's data path made absolute (``root`` folded in),
    since a Ray worker does not run in the driver's working directory."""
    if config.dataset.path is None:
        return config
    ds = dataclasses.replace(
        config.dataset, path=str(config.dataset.resolved_path().resolve()), root=None
    )
    return dataclasses.replace(config, dataset=ds)


def _run_tasks(
    ray, config: ExperimentConfig, out: Path, results: Results, todo: list, advance
) -> None:
    """Submit one task per unfinished run, merge each outcome as it arrives."""
    remote = ray.remote(_run_in_worker)
    shipped = _for_workers(config)
    futures = {}
    for spec, seed in todo:
        finished = results.finished(spec.label, seed)
        path = state_path(out, spec.label, seed)
        state = path.read_bytes() if finished and path.exists() else None
        share = config.resources_for(spec)
        ref = remote.options(num_cpus=share.cpus, num_gpus=share.gpus, max_retries=0).remote(
            shipped, spec, seed, finished, state
        )
        futures[ref] = (spec, seed)
    try:
        for (spec, seed), outcome in as_completed(ray, futures, force_cancel=True):
            _merge(results, out, spec, seed, outcome)
            advance()
    except RayTaskFailed as err:
        spec, seed = err.key
        raise _task_error(err.cause, spec, seed) from err


def run_experiment_ray(
    config: ExperimentConfig,
    out_dir: str | os.PathLike,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    quiet: bool | None = None,
    overwrite: bool = False,
    console=None,
    plot: bool = True,
) -> list[dict]:
    """:func:`ntkal.experiments.run_experiment` with every (strategy, seed) run a Ray task.

    Parameters
    ----------
    config : ExperimentConfig
        ``resources`` (or a strategy's own) sets each task's CPU / GPU share.
    out_dir : path
        Output directory; the same layout, resuming rules and final records as the local runner.
    address : str, optional
        An existing Ray cluster; ``None`` starts a private loopback-only Ray (:func:`ray_cluster`).
    num_cpus : int, optional
        CPUs of the private Ray (default: all). Ignored with ``address``.
    quiet, overwrite, console, plot
        As for :func:`ntkal.experiments.run_experiment`.

    Returns
    -------
    list of dict
        All records, in the local runner's order.

    Raises
    ------
    ConfigError
        A bad config or dataset (the local runner's checks), ``device: cuda`` without
        ``resources.gpus``, or a task's config error.
    ImportError
        Ray is not installed.
    """
    import_ray()
    _check_gpu_shares(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet = is_quiet(quiet)
    results = Results(out, config, overwrite)
    load_run_dataset(config)  # the local runner's data checks, before any task starts
    all_cycles = set(range(config.cycles + 1))
    runs = [(spec, seed) for seed in config.seeds for spec in config.strategies]
    todo = [
        (spec, seed) for spec, seed in runs if not results.finished(spec.label, seed) >= all_cycles
    ]
    with progress_display(quiet, console) as progress:
        task = (
            progress.add_task("runs (Ray)", total=len(runs), completed=len(runs) - len(todo))
            if progress is not None
            else None
        )
        if todo:
            with ray_cluster(address, num_cpus=num_cpus) as ray:
                _run_tasks(
                    ray,
                    config,
                    out,
                    results,
                    todo,
                    lambda: progress.advance(task) if progress is not None else None,
                )
    results.records = _canonical_order(config, results.records)
    results.write()
    if plot and results.records:
        from ntkal.experiments.plots import write_report

        write_report(results.records, out, title=config.name)
    return results.records
