"""The Ray lifecycle every Ray user in ntkal shares: import, a private loopback-only cluster, and
the wait/cancel loop over running tasks.

Two callers use it: the kernel's :class:`ntkal.kernels.distributed.RayBlockExecutor` (actors
computing kernel stripes) and the experiment driver :mod:`ntkal.experiments.ray_runner` (one task
per (strategy, seed) run). It sits at the bottom of the layer order (it imports nothing from
ntkal), so that neither of them has to import the other.

Install with ``pip install 'ntkal[ray]'``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "ray_cluster",
    "import_ray",
    "as_completed",
    "RayTaskFailed",
    "LOOPBACK",
    "LOCAL_OBJECT_STORE_BYTES",
]

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
        raise ImportError(
            "the Ray runner needs the `ray` package: pip install 'ntkal[ray]'"
        ) from err
    return ray


def _ntkal_search_path() -> str:
    """``PYTHONPATH`` for the private Ray's workers: this process's ntkal first, so that they
    unpickle the same classes (it may come from a source tree rather than an installation)."""
    here = str(Path(__file__).resolve().parents[1])  # the folder holding the ntkal package
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
def ray_cluster(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
):
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
            ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                _node_ip_address=LOOPBACK,
                _temp_dir=temp_dir,
                object_store_memory=object_store_memory or LOCAL_OBJECT_STORE_BYTES,
                log_to_driver=False,
                configure_logging=False,
            )
            try:
                yield ray
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


class RayTaskFailed(RuntimeError):
    """A task of :func:`as_completed` raised; ``key`` is its caller's key, ``cause`` the task's
    own exception (Ray's wrapper unwrapped)."""

    def __init__(self, key: Any, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.key = key
        self.cause = cause


def as_completed(
    ray, pending: MutableMapping[Any, Any], *, force_cancel: bool = False
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(key, result)`` for the object refs in ``pending`` (ref -> key) as they finish.

    ``pending`` may grow while this runs (a caller handing a freed worker its next part). A
    failed task stops the loop with :class:`RayTaskFailed`; whatever still runs when the loop
    ends early (that failure, the caller's own exception, Ctrl-C, an abandoned generator) is
    cancelled, so no work outlives its caller (``force_cancel`` kills the worker process too,
    which tasks allow and actor calls do not).
    """
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                key = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    raise RayTaskFailed(key, getattr(err, "cause", None) or err) from err
                yield key, result
    finally:
        for ref in list(pending):
            ray.cancel(ref, force=force_cancel)
