"""Kernel blocks on a pool of workers: Ray actors (one per GPU, or CPU actors), or in-process.

An *executor* runs a *block job* on many parts: ``executor.map(job, parts)`` yields
``(index, job(part))`` as parts finish, in any order. A block job is any picklable object with

``job.to(device)``
    the job with its tensors and network moved to a worker's device (called once per worker);
``job(part)``
    the result for one part (e.g. a block of kernel rows), as CPU tensors.

The job is shipped to each worker once per ``map`` (through Ray's object store), then only the
small ``part`` descriptors travel. Any "compute this block of (rows, cols)" work fits: the
kernel's row stripes (:class:`KernelStripes`, behind ``empirical_ntk(..., executor=...)``) and
equally a look-ahead engine's Σ blocks.

For ``empirical_ntk`` the symmetric kernel Θ(x, x) is cut into row stripes ``[a, b) x [a, n)``
(the upper triangle), with boundaries that give every stripe about the same number of pairs; each
worker computes its stripe with the single-process engine (its own :func:`plan_blocks` /
:func:`run_blocked` blocking and memory budget), and the caller mirrors the stripes into the lower
triangle and symmetrises the diagonal blocks exactly. A stripe's own columns are featurised in
that stripe, so column features are computed about ``stripes / 2`` times in all; with the
contraction dominating at large ``n`` this is the price of needing no feature exchange.

:class:`SerialBlockExecutor` runs the same schedule in this process (a reference, and for tests);
:class:`RayBlockExecutor` needs ``pip install 'ntkal[ray]'``.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any, Literal, Protocol

import torch
from torch import nn

from ntkal.kernels._common import model_device_dtype
from ntkal.kernels.blocking import mirror
from ntkal.kernels.inputs import check_inputs
from ntkal.kernels.local import local_ntk
from ntkal.models.modes import evaluating
from ntkal.ray_cluster import RayTaskFailed, as_completed, ray_cluster

__all__ = [
    "BlockJob",
    "BlockExecutor",
    "SerialBlockExecutor",
    "RayBlockExecutor",
    "KernelStripes",
    "stripe_bounds",
    "empirical_ntk_on",
]


class BlockJob(Protocol):
    """A picklable unit of block work (see the module docstring)."""

    def to(self, device: torch.device) -> BlockJob: ...

    def __call__(self, part: Any) -> Any: ...


class BlockExecutor(Protocol):
    """Runs a :class:`BlockJob` on parts; ``workers`` is how many run at once."""

    workers: int

    def map(self, job: BlockJob, parts: Sequence[Any]) -> Iterator[tuple[int, Any]]: ...


class SerialBlockExecutor:
    """The executor interface in this process, one part after another (on ``device``, default
    the job's own)."""

    workers = 1

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device

    def map(self, job: BlockJob, parts: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        bound = job.to(self.device) if self.device is not None else job
        for i, part in enumerate(parts):
            yield i, bound(part)


# ----------------------------------------------------------------------------- Ray actors
def _worker_class(ray):
    @ray.remote
    class _BlockWorker:
        """Holds one job (fetched once per map) and runs parts of it."""

        def __init__(self, threads: int) -> None:
            torch.set_num_threads(max(1, int(threads)))
            self.key: str | None = None
            self.job: Any = None
            gpus = ray.get_gpu_ids()
            self.device = (
                torch.device("cuda", 0)
                if gpus and torch.cuda.is_available()
                else torch.device("cpu")
            )

        def run(self, job_ref: list, index: int, part: Any) -> tuple[int, Any]:
            ref = job_ref[0]  # wrapped in a list so that Ray does not fetch it for every call
            key = ref.hex()
            if key != self.key:
                self.job, self.key = None, None
                self.job = ray.get(ref).to(self.device)
                self.key = key
            return index, self.job(part)

        def info(self) -> dict:
            return {"pid": os.getpid(), "device": str(self.device)}

    return _BlockWorker


class RayBlockExecutor:
    """A pool of Ray actors running :class:`BlockJob` parts, most work first, as they free up.

    Parameters
    ----------
    workers : int, optional
        Number of actors. Default: one per GPU of the cluster when it has GPUs, else one per
        ``cpus_per_worker`` CPUs.
    gpus_per_worker : float, optional
        GPU share of an actor. Default: 1 when the cluster has GPUs, else 0.
    cpus_per_worker : float
        CPU share of an actor; its torch thread count is ``max(1, floor(cpus_per_worker))``.
    address : str, optional
        An existing Ray cluster. Without it, and when Ray is not running in this process, a
        private loopback-only Ray is started (:func:`ntkal.ray_cluster.ray_cluster`,
        ``num_cpus`` CPUs) and stopped by :meth:`close`.
    num_cpus : int, optional
        Size of that private Ray (default: all CPUs).
    object_store_memory : int, optional
        Object store of the private Ray in bytes (stripes travel through it; larger kernels
        spill to disk beyond it).

    Use as a context manager, or call :meth:`close`, so that the actors (and a private Ray) stop.
    """

    _actors: list[Any] | None  # None once closed

    def __init__(
        self,
        workers: int | None = None,
        *,
        gpus_per_worker: float | None = None,
        cpus_per_worker: float = 1.0,
        address: str | None = None,
        num_cpus: int | None = None,
        object_store_memory: int | None = None,
    ) -> None:
        if workers is not None and int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
        self._stack = ExitStack()
        self._ray = self._stack.enter_context(
            ray_cluster(address, num_cpus=num_cpus, object_store_memory=object_store_memory)
        )
        ray = self._ray
        try:
            total = ray.cluster_resources()
            gpus = float(total.get("GPU", 0.0))
            if gpus_per_worker is None:
                gpus_per_worker = 1.0 if gpus >= 1 else 0.0
            if workers is None:
                workers = (
                    int(gpus // gpus_per_worker)
                    if gpus_per_worker > 0
                    else int(float(total.get("CPU", 1.0)) // cpus_per_worker)
                )
            self.workers = max(1, int(workers))
            cls = _worker_class(ray)
            threads = max(1, math.floor(cpus_per_worker))
            self._actors = [
                cls.options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker).remote(threads)
                for _ in range(self.workers)
            ]
            self._info = ray.get([a.info.remote() for a in self._actors])
        except BaseException:
            self._stack.close()
            raise

    def worker_info(self) -> list[dict]:
        """``{"pid", "device"}`` of every actor."""
        return list(self._info)

    def map(self, job: BlockJob, parts: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, job(parts[index]))`` as the actors finish them; a part that raises
        stops the map with a RuntimeError naming it (its traceback is the cause)."""
        ray = self._ray
        if self._actors is None:
            raise RuntimeError("this RayBlockExecutor is closed")
        ref = [ray.put(job)]
        queue = iter(enumerate(parts))
        inflight: dict[Any, Any] = {}

        def submit(actor) -> None:
            for index, part in queue:
                inflight[actor.run.remote(ref, index, part)] = (index, actor)
                return

        for actor in self._actors:
            submit(actor)
        try:
            for (_index, actor), result in as_completed(ray, inflight):
                submit(actor)
                yield result
        except RayTaskFailed as err:
            raise RuntimeError(f"block part {err.key[0]} failed on a Ray worker: {err}") from err

    def close(self) -> None:
        """Stop the actors, and the private Ray if this executor started it."""
        actors = getattr(self, "_actors", None)
        if actors is not None:
            for actor in actors:
                self._ray.kill(actor)
            self._actors = None
        self._stack.close()

    def __enter__(self) -> RayBlockExecutor:
        return self

    def __exit__(self, *exc) -> Literal[False]:
        self.close()
        return False


# ----------------------------------------------------------------------------- the kernel
def stripe_bounds(n: int, stripes: int, symmetric: bool) -> list[tuple[int, int]]:
    """At most ``stripes`` row ranges covering ``[0, n)``.

    Non-symmetric: equal heights. Symmetric (rows ``[a, b)`` computed against columns ``[a, n)``,
    ``(b - a)(n - a)`` pairs): about equal pair counts, so thin stripes at the top and thick ones
    at the bottom (the smallest per-stripe count for which ``stripes`` suffice).
    """
    n, stripes = int(n), max(1, int(stripes))
    if n == 0:
        return []
    if not symmetric:
        stripes = min(stripes, n)
        cuts = sorted({round(n * i / stripes) for i in range(stripes)} | {n})
        return list(itertools.pairwise(cuts))

    def cut(work: int) -> list[int]:
        cuts = [0]
        while cuts[-1] < n:
            a = cuts[-1]
            cuts.append(min(n, a + max(1, -(-work // (n - a)))))
        return cuts

    lo, hi = 1, n * n  # hi: one stripe
    while lo < hi:
        mid = (lo + hi) // 2
        if len(cut(mid)) - 1 <= stripes:
            hi = mid
        else:
            lo = mid + 1
    cuts = cut(lo)
    return list(itertools.pairwise(cuts))


class KernelStripes:
    """Block job: row stripes of ``empirical_ntk(model, x1, x2)``; ``x2 is None`` means the
    upper-triangle stripes ``[a, b) x [a, n)`` of Θ(x1, x1). ``job((a, b))`` returns
    ``(kernel stripe, logits of rows a:b, logits of the columns)`` on the CPU."""

    def __init__(
        self,
        model: nn.Module,
        x1: torch.Tensor,
        x2: torch.Tensor | None,
        *,
        kind: str,
        implementation: str,
        dtype: torch.dtype,
        max_memory: int | None,
        precision: str | None = None,
    ) -> None:
        self.model, self.x1, self.x2 = model, x1, x2
        self.kind, self.implementation = kind, implementation
        self.dtype, self.max_memory, self.precision = dtype, max_memory, precision

    def to(self, device: torch.device) -> KernelStripes:
        moved = copy.copy(self)
        moved.model = copy.deepcopy(self.model).to(device)
        moved.x1 = self.x1.to(device)
        moved.x2 = None if self.x2 is None else self.x2.to(device)
        return moved

    def __call__(self, part: tuple[int, int]):
        a, b = part
        cols = self.x1[a:] if self.x2 is None else self.x2
        kern, f1, f2 = local_ntk(
            self.model,
            self.x1[a:b],
            cols,
            kind=self.kind,
            implementation=self.implementation,
            max_memory=self.max_memory,
            dtype=self.dtype,
            progress=False,
            precision=self.precision,
        )
        return kern.cpu(), f1.cpu(), f2.cpu()


def empirical_ntk_on(
    executor: BlockExecutor,
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    kind: str,
    implementation: str,
    max_memory: int | None,
    dtype: torch.dtype,
    return_outputs: bool,
    precision: str | None = None,
    stripes: int | None = None,
):
    """``empirical_ntk`` with its row stripes computed by ``executor`` (what
    ``empirical_ntk(..., executor=...)`` calls; inputs are checked here, before shipping).

    ``stripes`` defaults to four per worker. ``max_memory`` is each worker's budget (default:
    half of what is free on that worker's device). The kernel is assembled on the model's device.
    """
    device, mdtype = model_device_dtype(model)
    with evaluating(model):
        x1, x2, probed = check_inputs(model, x1, x2, device, mdtype)
    symmetric = x2 is None
    n1 = int(x1.shape[0])
    n2 = n1 if symmetric else int(x2.shape[0])
    if probed is None or n1 == 0 or n2 == 0:
        empty = local_ntk(
            model,
            x1,
            x2,
            kind=kind,
            implementation=implementation,
            max_memory=max_memory,
            dtype=dtype,
            progress=False,
            precision=precision,
        )
        return empty if return_outputs else empty[0]
    k = int(probed[0].shape[1])
    if stripes is None:
        stripes = 4 * max(1, int(getattr(executor, "workers", 1)))
    parts = stripe_bounds(n1, stripes, symmetric)
    job = KernelStripes(
        model,
        x1.detach(),
        None if symmetric else x2.detach(),
        kind=kind,
        implementation=implementation,
        dtype=dtype,
        max_memory=max_memory,
        precision=precision,
    )
    shape = (n1, n2, k, k) if kind == "full" else (n1, n2)
    out = torch.empty(shape, dtype=dtype, device=device)
    f1: torch.Tensor | None = None
    f2: torch.Tensor | None = None
    for index, (stripe, rows_f, cols_f) in executor.map(job, parts):
        a, b = parts[index]
        stripe = stripe.to(device)
        if f1 is None:
            f1 = torch.empty((n1, rows_f.shape[1]), dtype=rows_f.dtype, device=device)
        f1[a:b] = rows_f.to(device)
        if symmetric:
            out[a:b, a:] = stripe
            out[a:, a:b] = mirror(stripe)
            diag = stripe[:, : b - a]
            out[a:b, a:b] = 0.5 * (diag + mirror(diag))  # exactly symmetric, as run_blocked
        else:
            out[a:b] = stripe
            if f2 is None:
                f2 = cols_f.to(device)
    if f1 is None:
        raise RuntimeError("the executor returned no kernel stripes")
    f1 = f1.detach()
    if symmetric:
        f2 = f1
    else:
        assert f2 is not None  # set with the first stripe, as f1 was
        f2 = f2.detach()
    return (out, f1, f2) if return_outputs else out
