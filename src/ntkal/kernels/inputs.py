"""What every kernel entry point checks and decides before any work: the inputs, the network the
kernel is computed on (the dtype rule), and whether the output can fit at all."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ntkal.kernels._common import probe
from ntkal.kernels.blocking import free_memory

__all__ = ["check_inputs", "check_output_fits", "format_bytes", "network_for"]

#: Model dtypes computed on a float64 copy when a float64 kernel is asked for.
_LOWER_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


def check_inputs(model: nn.Module, x1, x2, device: torch.device, mdtype: torch.dtype):
    """``(x1, x2, probed)``: the inputs as tensors on ``device`` (floats in ``mdtype``), checked
    (a batch dimension, finite values, equal per-example shapes, a model that takes them and
    returns 2-D logits); ``probed`` is :func:`ntkal.kernels._common.probe` of one example, or
    ``None`` when both sides are empty."""

    def prep(x, name):
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if x.ndim == 0:
            raise ValueError(f"{name} must have a leading batch dimension, got a scalar")
        if x.is_floating_point():
            if not torch.isfinite(x).all():
                raise ValueError(f"{name} contains NaN or infinite values")
            x = x.to(device=device, dtype=mdtype)
        else:
            x = x.to(device)
        return x

    x1 = prep(x1, "x1")
    if x2 is not None:
        x2 = prep(x2, "x2")
        if tuple(x2.shape[1:]) != tuple(x1.shape[1:]):
            raise ValueError(
                f"x1 and x2 must have the same per-example shape, got "
                f"{tuple(x1.shape[1:])} and {tuple(x2.shape[1:])}"
            )
    if x1.shape[0] == 0 and (x2 is None or x2.shape[0] == 0):
        return x1, x2, None
    sample = x1 if x1.shape[0] else x2
    try:
        out, act, calls = probe(model, sample)
    except Exception as err:  # the model rejected the input: say so in terms the caller knows
        raise ValueError(
            f"model cannot be applied to inputs of per-example shape "
            f"{tuple(sample.shape[1:])}: {err}"
        ) from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return 2-D logits (n, k); got {shape}")
    return x1, x2, (out, act, calls)


def format_bytes(n: float) -> str:
    """``n`` bytes for a message: ``"512 B"``, ``"1.5 KiB"``, ... ``"TiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError  # pragma: no cover


def check_output_fits(
    kind: str, n1: int, n2: int, k: int, dtype: torch.dtype, device: torch.device
) -> None:
    """The output kernel must fit in the memory free on ``device``; ``max_memory`` bounds only
    the working set, so an impossible output is refused here, before any work, with the size and
    the alternatives (a ``full`` kernel is ``k²`` times the others)."""
    per_pair = k * k if kind == "full" else 1
    need = n1 * n2 * per_pair * torch.empty((), dtype=dtype).element_size()
    free = free_memory(device)
    if need <= free:
        return
    hint = f"kind='pseudo' or 'trace' ({per_pair}x smaller), " if kind == "full" else ""
    raise MemoryError(
        f"a kind={kind!r} kernel on {n1} x {n2} inputs with {k} outputs needs "
        f"{format_bytes(need)} but only {format_bytes(free)} is free on {device}; "
        f"use {hint}fewer inputs (e.g. score a subset of the pool) or dtype=float32"
    )


def network_for(
    model: nn.Module,
    mdtype: torch.dtype,
    dtype: torch.dtype,
    precision: str | None,
    device: torch.device,
    *,
    own: bool = False,
) -> tuple[nn.Module, torch.dtype]:
    """The network the kernel is computed on, and its dtype: the one dtype rule.

    A float64 kernel of a lower-precision model is computed on a float64 copy, so that
    activations, sensitivities and the per-layer Grams are float64 (summing float32 Grams in
    float64 keeps their rounding, ~1e-7 relative, which Σ = Θ_SS − Θ_SL K⁻¹ Θ_LS then amplifies
    by cancellation); it costs one float64 copy of the parameters and about 2x the float32 time on
    CPUs. Reduced-precision Grams (``precision``) run the network in float32 (a copy unless it
    is float32). ``own=True`` always returns a copy (for a caller that keeps the network).
    """
    if precision is not None:
        if precision == "tf32" and device.type != "cuda":
            raise ValueError(
                f"precision='tf32' needs a CUDA device (TF32 is a tensor-core matmul "
                f"format); the model is on {device}: use 'fp32' or 'bf16' there"
            )
        target = torch.float32
    elif dtype == torch.float64 and mdtype in _LOWER_PRECISION:
        target = torch.float64
    else:
        target = mdtype
    if target != mdtype or own:
        return copy.deepcopy(model).to(target), target
    return model, mdtype
