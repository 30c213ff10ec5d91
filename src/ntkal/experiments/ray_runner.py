"""Run an experiment's (strategy, seed) runs as Ray tasks, into the same resumable records.

``ntkal run CONFIG --ray`` starts a private Ray on this machine (loopback only, see
:func:`ray_cluster`); ``--ray ADDRESS`` joins an existing cluster. Every unfinished
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

Install with ``pip install 'ntkal[ray]'``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

from ntkal.atomic_files import atomic_write
from ntkal.experiments.config import ConfigError, DatasetConfig, ExperimentConfig, StrategySpec
from ntkal.experiments.runner import (_progress, _resolve_device, _Results, _state_path, is_quiet,
                                      run_strategy_seed)

__all__ = ["ray_cluster", "run_experiment_ray", "import_ray", "LOOPBACK"]

LOOPBACK = "127.0.0.1"

#: Object store of a private local Ray: records, states and kernel blocks, not datasets.
LOCAL_OBJECT_STORE_BYTES = 256 << 20

# Ray replaces a requested node address of 127.0.0.1 by the outward interface's address and its
# gRPC servers then listen there; its "local only" mode (meant for macOS / Windows) keeps the node
# address, and with it every listening socket, on 127.0.0.1. The driver reads the switch from
# ``ray._private.ray_constants``; the processes Ray starts read it from the environment.
_LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray():
    """``import ray``, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("the Ray runner needs the `ray` package: pip install 'ntkal[ray]'") \
            from err
    return ray


def _ntkal_search_path() -> str:
    """``PYTHONPATH`` for the private Ray's workers: this process's ntkal first, so that they
    unpickle the same classes (it may come from a source tree rather than an installation)."""
    import ntkal

    here = str(Path(ntkal.__file__).resolve().parents[1])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    return os.pathsep.join([here, *rest])


@contextmanager
def _loopback_only(ray) -> Iterator[None]:
    """Environment of the private Ray: loopback only, no usage reports, this ntkal."""
    from ray._private import ray_constants

    env = dict(_LOCAL_ONLY_ENV, PYTHONPATH=_ntkal_search_path())
    saved_env = {k: os.environ.get(k) for k in env}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def ray_cluster(address: Optional[str] = None, *, num_cpus: Optional[int] = None,
                num_gpus: Optional[int] = None, object_store_memory: Optional[int] = None):
    """A Ray session for the duration of the block; yields the ``ray`` module.

    Parameters
    ----------
    address : str, optional
        An existing cluster (``"host:port"``, ``"auto"``, ``"ray://..."``); it is left running.
        ``None``: start a private Ray on this machine and stop it at the end. It listens on
        127.0.0.1 only (node address and every gRPC server; checked with ``ss -ltnp``), has no
        dashboard, a bounded object store, and a temporary directory of its own that is removed
        afterwards.
    num_cpus, num_gpus : int, optional
        Size of the private Ray (default: every CPU, every visible GPU). Ignored with ``address``.
    object_store_memory : int, optional
        Object store of the private Ray in bytes (default :data:`LOCAL_OBJECT_STORE_BYTES`).

    Notes
    -----
    When Ray is already initialised in this process (e.g. by the caller) that session is used
    as it is and not shut down.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        try:
            yield ray
        finally:
            ray.shutdown()
        return
    if num_cpus is not None and int(num_cpus) < 1:
        raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
    temp_dir = tempfile.mkdtemp(prefix="ntkal-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        with _loopback_only(ray):
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     _node_ip_address=LOOPBACK, _temp_dir=temp_dir,
                     object_store_memory=object_store_memory or LOCAL_OBJECT_STORE_BYTES,
                     log_to_driver=False,
                     configure_logging=False)
            try:
                yield ray
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- worker side
_DATASETS: dict[DatasetConfig, object] = {}


def _dataset(cfg: DatasetConfig):
    """The config's dataset, loaded once per worker process."""
    if cfg not in _DATASETS:
        _DATASETS[cfg] = cfg.load(seed=0)
    return _DATASETS[cfg]


def _run_in_worker(config: ExperimentConfig, spec: StrategySpec, seed: int, finished: set[int],
                   state: Optional[bytes]) -> dict:
    """One (strategy, seed) run inside a Ray task; returns what the driver merges."""
    threads = config.threads or max(1, int(config.resources_for(spec).cpus))
    torch.set_num_threads(threads)
    device = _resolve_device(config.device)
    dataset = _dataset(config.dataset)
    restarts: list[int] = []
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ntkal-run-") as tmp:
        state_path = Path(tmp) / "learner.pt"
        if state is not None:
            state_path.write_bytes(state)
        run_strategy_seed(config, spec, seed, dataset, device=device, finished=finished,
                          state_path=state_path, restart_from=restarts.append,
                          add_record=records.append)
        final = state_path.read_bytes() if state_path.exists() else None
    return {"restarts": restarts, "records": records, "state": final, "pid": os.getpid()}


# ----------------------------------------------------------------------------- driver side
def _merge(results: _Results, out: Path, spec: StrategySpec, seed: int, outcome: dict) -> None:
    for cycle in outcome["restarts"]:
        results.drop_from(spec.label, seed, cycle)
    results.records.extend(outcome["records"])
    if outcome["state"] is not None:
        data = outcome["state"]
        atomic_write(_state_path(out, spec.label, seed), lambda fh: fh.write(data), binary=True)
    results.write()


def _canonical_order(config: ExperimentConfig, records: list[dict]) -> list[dict]:
    """The local runner's order: seed, then strategy (config order), then cycle; records of
    entries no longer in the config keep their place after those."""
    seeds = {s: i for i, s in enumerate(config.seeds)}
    labels = {s.label: i for i, s in enumerate(config.strategies)}
    return sorted(records, key=lambda r: (seeds.get(r["seed"], len(seeds)),
                                          labels.get(r["strategy"], len(labels)), r["cycle"]))


def _task_error(err: BaseException, spec: StrategySpec, seed: int) -> BaseException:
    cause = getattr(err, "cause", None) or err
    message = f"run {spec.label!r} seed {seed} failed on a Ray worker: {cause}"
    if isinstance(cause, ConfigError):
        return ConfigError(message)
    return RuntimeError(f"run {spec.label!r} seed {seed} failed on a Ray worker: "
                        f"{type(cause).__name__}: {cause}")


def run_experiment_ray(config: ExperimentConfig, out_dir: Union[str, os.PathLike], *,
                       address: Optional[str] = None, num_cpus: Optional[int] = None,
                       quiet: Optional[bool] = None, overwrite: bool = False, console=None,
                       plot: bool = True) -> list[dict]:
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
        A bad config, ``device: cuda`` without ``resources.gpus``, or a task's config error.
    ImportError
        Ray is not installed.
    """
    from ntkal.data import load_dataset

    import_ray()
    if config.device.startswith("cuda"):
        for spec in config.strategies:
            if config.resources_for(spec).gpus <= 0:
                raise ConfigError(f"device {config.device!r} under Ray needs resources.gpus > 0 "
                                  f"(strategy {spec.label!r} asks for none)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet = is_quiet(quiet)
    results = _Results(out, config, overwrite)
    ds = config.dataset
    dataset = load_dataset(ds.name, ds.root, train_size=ds.train_size, test_size=ds.test_size,
                           seed=0)
    config.validate_against(dataset.num_train, dataset.num_classes)
    all_cycles = set(range(config.cycles + 1))
    runs = [(spec, seed) for seed in config.seeds for spec in config.strategies]
    todo = [(spec, seed) for spec, seed in runs
            if not results.finished(spec.label, seed) >= all_cycles]

    with _progress(quiet, console) as progress:
        task = progress.add_task("runs (Ray)", total=len(runs),
                                 completed=len(runs) - len(todo)) if progress is not None else None
        if todo:
            with ray_cluster(address, num_cpus=num_cpus) as ray:
                remote = ray.remote(_run_in_worker)
                futures = {}
                try:
                    for spec, seed in todo:
                        finished = results.finished(spec.label, seed)
                        path = _state_path(out, spec.label, seed)
                        state = path.read_bytes() if finished and path.exists() else None
                        share = config.resources_for(spec)
                        ref = remote.options(num_cpus=share.cpus, num_gpus=share.gpus,
                                             max_retries=0).remote(config, spec, seed, finished,
                                                                   state)
                        futures[ref] = (spec, seed)
                    while futures:
                        ready, _ = ray.wait(list(futures), num_returns=1)
                        for ref in ready:
                            spec, seed = futures.pop(ref)
                            try:
                                outcome = ray.get(ref)
                            except ray.exceptions.RayTaskError as err:
                                raise _task_error(err, spec, seed) from err
                            _merge(results, out, spec, seed, outcome)
                            if progress is not None:
                                progress.advance(task)
                finally:
                    for ref in futures:  # interrupted or failed: stop what still runs
                        ray.cancel(ref, force=True)
    results.records = _canonical_order(config, results.records)
    results.write()
    if plot and results.records:
        from ntkal.experiments.plots import write_report

        write_report(results.records, out, title=config.name)
    return results.records
