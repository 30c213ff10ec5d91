"""``empirical_ntk``: the public entry point, its checks, and the choice between this process
(:func:`ntkal.kernels.local.local_ntk`) and a pool of workers
(:func:`ntkal.kernels.distributed.empirical_ntk_on`). See :mod:`ntkal.kernels` for the engines."""

from __future__ import annotations

import torch
from torch import nn

from ntkal.kernels.blocking import PRECISIONS
from ntkal.kernels.featuriser import check_kind
from ntkal.kernels.local import local_ntk

__all__ = ["empirical_ntk"]


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    kind: str = "pseudo",
    implementation: str = "auto",
    max_memory: int | None = None,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    return_outputs: bool = False,
    executor=None,
    precision: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empirical NTK of ``model`` at its current weights.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``(n, k)``. Temporarily put in eval mode (BatchNorm running statistics are
        constants and stay untouched, dropout is off); every submodule's mode is restored after.
    x1 : Tensor
        ``(n1, ...)`` inputs.
    x2 : Tensor, optional
        ``(n2, ...)`` inputs; ``None`` means Θ(x1, x1), computed as a symmetric kernel (each
        off-diagonal block once, then mirrored).
    kind : {"pseudo", "trace", "full", "last_layer"}
        ``full``: ``(n1, n2, k, k)`` blocks J_c(x)·J_c'(x'). ``trace``: ``(n1, n2)``, Σ_c J_c·J_c.
        ``pseudo`` (default): ``(n1, n2)``, the NTK of s(x) = Σ_c f_c(x)/√k. ``last_layer``:
        ``(n1, n2)``, the kernel of the final ``nn.Linear`` only (``model.classifier`` if it is
        one, else the last ``nn.Linear`` in module order), i.e. a(x)·a(x') + 1 with ``a`` its
        input; like pseudo and trace it is read as Θ ⊗ I_k.
    implementation : {"auto", "jacobian", "structured"}
        Engine (see the module docstring); all give the same kernel up to rounding. Ignored for
        ``last_layer``, which only needs the classifier's inputs (one forward pass).
    max_memory : int, optional
        Working-memory budget in bytes that sets the block sizes (features and contraction
        intermediates; the output kernel comes on top and is checked against the free memory
        before any work). Default: half the free host memory (``MemAvailable``), or half the
        free device memory on CUDA.
    dtype : torch.dtype
        Dtype of the kernel. ``float64`` (the default) is float64 throughout: a lower-precision
        model is run as a float64 copy (the caller's model is untouched), so activations,
        sensitivities and Grams are all float64, at about twice the float32 cost. With
        ``float32`` the network runs in its own dtype.
    progress : bool
        Rich progress bar over blocks; silenced by env ``NTKAL_QUIET=1`` or ``CI``.
    return_outputs : bool
        Also return the logits ``f1``, ``f2`` computed on the way (``f2 is f1`` when ``x2`` is None).
    executor : ntkal.kernels.distributed.BlockExecutor, optional
        Compute row stripes of the kernel on a pool of workers, e.g. a
        :class:`~ntkal.kernels.distributed.RayBlockExecutor` (one actor per GPU); each worker uses
        this single-process engine with ``max_memory`` as its own budget. ``None``: this process.
    precision : {None, "fp32", "tf32", "bf16"}
        Reduced precision for the Gram products only: the network runs in float32 (a float32
        copy of a float64 model), its features are contracted in float32 (``fp32``), in float32
        with TF32 tensor-core matmuls (``tf32``, CUDA only: a ValueError elsewhere) or rounded to
        bfloat16 (``bf16``), and every Gram product is added into the kernel in ``dtype``
        (float64 by default). ``None`` (default): no reduction, float64 throughout for a float64
        kernel. Measured errors against float64: ``benchmarks/precision.py``.

    Returns
    -------
    Tensor or (Tensor, Tensor, Tensor)
        The kernel on the model's device, in ``dtype``; with ``return_outputs`` also the logits.

    Raises
    ------
    ValueError
        Unknown kind or implementation, NaN or infinite inputs, inputs the model cannot take or
        of mismatched shapes, a model that does not return 2-D logits.
    MemoryError
        The output kernel alone is larger than the memory free on the model's device.
    """
    check_kind(kind, implementation)
    if max_memory is not None and max_memory <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS} or None")
    if executor is not None:
        from ntkal.kernels.distributed import empirical_ntk_on

        return empirical_ntk_on(
            executor,
            model,
            x1,
            x2,
            kind=kind,
            implementation=implementation,
            max_memory=max_memory,
            dtype=dtype,
            return_outputs=return_outputs,
            precision=precision,
        )
    kern, f1, f2 = local_ntk(
        model,
        x1,
        x2,
        kind=kind,
        implementation=implementation,
        max_memory=max_memory,
        dtype=dtype,
        progress=progress,
        precision=precision,
    )
    return (kern, f1, f2) if return_outputs else kern
