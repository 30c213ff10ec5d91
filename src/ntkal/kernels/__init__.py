"""Empirical neural tangent kernels of any ``nn.Module`` that returns logits.

``empirical_ntk`` linearises a network at its *current* weights: Θ(x, x') = J(x) J(x')ᵀ with J the
Jacobian of the logits w.r.t. the trainable parameters, the model in eval mode. Two exact engines
sit behind the one call:

``"jacobian"``
    Per-example Jacobians from ``torch.func`` (``vmap(jacrev)``), contracted blockwise. General
    and trusted, but it costs ``k'·P`` memory per example and ``2·n1·n2·k'^2·P`` FLOPs.
``"structured"``
    Per-layer factorisation. For ``nn.Linear``, Θ_layer(x, x') = (a(x)·a(x') + 1)(δ(x)·δ(x')) with
    ``a`` the layer input and ``δ`` the output sensitivities at the pre-activation, so no
    per-example weight gradient is ever formed. ``nn.Conv2d`` uses the same identity summed over
    spatial positions, or per-example gradients built from unfolded patches when that is cheaper
    (a per-layer FLOP model decides); BatchNorm affine parameters get analytic per-example
    gradients; any other trainable parameter falls back to ``torch.func`` per-example gradients.
``"auto"``
    Estimates the FLOPs of both engines for this model, kind and ``(n1, n2)`` and runs the cheaper
    one. Jacobian engine: ``(n1+n2)(1+2k')·F`` for the Jacobian rows (``F`` the forward FLOPs of
    the recognised layers) plus ``2·n1·n2·c·P`` for the Gram (``c`` = k^2 full, k trace, 1
    pseudo). Structured engine: the sum of the per-layer choices of
    :func:`ntkal.kernels.structured.layer_costs` (factorised vs per-example gradients, whichever
    is cheaper for that layer's positions and widths), plus the fallback's cost for
    unrecognised parameters. In practice ``structured`` wins whenever Linear/Conv layers hold the
    parameters.

The kernel lives on the model's device. Examples must not interact in eval mode (standard layers
do not; BatchNorm then uses its running statistics).
"""
from __future__ import annotations

import contextlib

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import nn

from ntkal.kernels._common import (KINDS, model_device_dtype, num_outputs, probe,
                                   split_parameters, add_contracted_rows)
from ntkal.kernels.blocking import (PRECISIONS, default_max_memory, free_memory, gram_precision,
                                    plan_blocks, run_blocked)
from ntkal.models.forward import predict_logits
from ntkal.models.modes import evaluating

__all__ = ["empirical_ntk", "available_kinds", "available_implementations", "KINDS",
           "IMPLEMENTATIONS", "PRECISIONS", "Featuriser", "make_featuriser", "slice_features"]

IMPLEMENTATIONS = ("auto", "jacobian", "structured")


def available_kinds() -> tuple[str, ...]:
    """Kernel variants :func:`empirical_ntk` accepts."""
    return KINDS


def available_implementations() -> tuple[str, ...]:
    """Engines :func:`empirical_ntk` accepts for ``implementation=``."""
    return IMPLEMENTATIONS


def _check_inputs(model: nn.Module, x1: torch.Tensor, x2: Optional[torch.Tensor],
                  device: torch.device, mdtype: torch.dtype):
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
            raise ValueError(f"x1 and x2 must have the same per-example shape, got "
                             f"{tuple(x1.shape[1:])} and {tuple(x2.shape[1:])}")
    if x1.shape[0] == 0 and (x2 is None or x2.shape[0] == 0):
        return x1, x2, None
    sample = x1 if x1.shape[0] else x2
    try:
        out, act, calls = probe(model, sample)
    except Exception as err:  # the model rejected the input: say so in terms the caller knows
        raise ValueError(f"model cannot be applied to inputs of per-example shape "
                         f"{tuple(sample.shape[1:])}: {err}") from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return 2-D logits (n, k); got {shape}")
    return x1, x2, (out, act, calls)


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _check_output_fits(kind: str, n1: int, n2: int, k: int, dtype: torch.dtype,
                       device: torch.device) -> None:
    """The output kernel must fit in the memory free on ``device``; ``max_memory`` bounds only
    the working set, so an impossible output is refused here, before any work, with the size and
    the alternatives (a ``full`` kernel is ``k²`` times the others)."""
    per_pair = k * k if kind == "full" else 1
    need = n1 * n2 * per_pair * torch.empty((), dtype=dtype).element_size()
    free = free_memory(device)
    if need <= free:
        return
    hint = (f"kind='pseudo' or 'trace' ({per_pair}x smaller), " if kind == "full" else "")
    raise MemoryError(f"a kind={kind!r} kernel on {n1} x {n2} inputs with {k} outputs needs "
                      f"{_format_bytes(need)} but only {_format_bytes(free)} is free on {device}; "
                      f"use {hint}fewer inputs (e.g. score a subset of the pool) or dtype=float32")


def _classifier(model: nn.Module) -> nn.Linear:
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError("kind='last_layer' needs a final nn.Linear (model.classifier, or the last "
                         "nn.Linear in module order); none found")
    return last


def _last_layer_pair(model):
    """``(featurise, contract, feature width)`` of the final linear layer's kernel."""
    head = _classifier(model)
    use_w = head.weight.requires_grad
    use_b = head.bias is not None and head.bias.requires_grad
    store = {}

    def hook(module, inp, out):
        store["a"] = inp[0].detach()

    def featurise(x):
        handle = head.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model(x)
        finally:
            handle.remove()
        return store.pop("a").reshape(x.shape[0], -1), logits

    def contract(a1, a2, dest):
        if use_w:
            dest.add_(a1 @ a2.T)
        if use_b:
            dest.add_(1.0)

    return featurise, contract, head.in_features


def _last_layer(model, x1, x2, dtype, device, max_memory, progress):
    """Kernel of the final linear layer alone: a(x)·a(x') (+1 with a trainable bias), the same for
    every class, so the k x k block is this times the identity."""
    featurise, contract, width = _last_layer_pair(model)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    e = width * x1.element_size()
    plan = plan_blocks(n1, n2, e, 2 * x1.element_size(), max_memory, symmetric=x2 is None)
    return run_blocked(featurise, contract, x1, x2, block_shape=(), plan=plan, dtype=dtype,
                       device=device, progress=progress, description="last-layer NTK")


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: Optional[torch.Tensor] = None, *,
                  kind: str = "pseudo", implementation: str = "auto",
                  max_memory: Optional[int] = None, dtype: torch.dtype = torch.float64,
                  progress: bool = False, return_outputs: bool = False, executor=None,
                  precision: Optional[str] = None
                  ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
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
    if kind not in KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; choose one of {KINDS}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; choose one of "
                         f"{IMPLEMENTATIONS}")
    if max_memory is not None and max_memory <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS} or None")
    if executor is not None:
        from ntkal.kernels.distributed import empirical_ntk_on

        return empirical_ntk_on(executor, model, x1, x2, kind=kind, implementation=implementation,
                                max_memory=max_memory, dtype=dtype, return_outputs=return_outputs,
                                precision=precision)
    device, mdtype = model_device_dtype(model)
    if precision is None:
        model, mdtype = _model_in_dtype(model, mdtype, dtype)
    else:
        model, mdtype = _model_in_float32(model, mdtype, device, precision)
    with evaluating(model):
        x1, x2, probed = _check_inputs(model, x1, x2, device, mdtype)
        n1 = int(x1.shape[0])
        n2 = n1 if x2 is None else int(x2.shape[0])
        if probed is None:
            shape = (n1, n2, 0, 0) if kind == "full" else (n1, n2)
            empty = torch.zeros(shape, dtype=dtype, device=device)
            f = torch.zeros(n1, 0, dtype=mdtype, device=device)
            return (empty, f, f if x2 is None else torch.zeros(n2, 0, dtype=mdtype, device=device)
                    ) if return_outputs else empty
        out0, act_numel, calls = probed
        k = int(out0.shape[1])
        _check_output_fits(kind, n1, n2, k, dtype, device)
        if max_memory is None:
            max_memory = default_max_memory(device)
        if kind == "last_layer":
            with gram_precision(precision):
                kern, f1, f2 = _last_layer(model, x1, x2, dtype, device, max_memory, progress)
        else:
            params, constants = split_parameters(model)
            if not params:
                shape = (n1, n2, k, k) if kind == "full" else (n1, n2)
                kern = torch.zeros(shape, dtype=dtype, device=device)
                with torch.no_grad():
                    f1 = _forward(model, x1)
                    f2 = f1 if x2 is None else _forward(model, x2)
            else:
                engine = _choose(implementation, model, params, calls, kind, k, n1, n2)
                with gram_precision(precision):
                    kern, f1, f2 = engine(model, params, constants, calls, x1, x2, kind=kind,
                                          k=k, act_numel=act_numel, max_memory=max_memory,
                                          dtype=dtype, device=device, progress=progress)
    f1 = f1.detach()
    f2 = f1 if x2 is None else f2.detach()
    return (kern, f1, f2) if return_outputs else kern


def _model_in_dtype(model: nn.Module, mdtype: torch.dtype, dtype: torch.dtype
                    ) -> tuple[nn.Module, torch.dtype]:
    """The network the kernel is computed on: ``model`` itself, or a float64 copy of it when a
    float64 kernel is asked of a lower-precision model, so that activations, sensitivities and
    the per-layer Grams are float64 (summing float32 Grams in float64 keeps their rounding, ~1e-7
    relative, which Σ = Θ_SS − Θ_SL K⁻¹ Θ_LS then amplifies by cancellation). Costs one copy of
    the parameters in float64 and float64 arithmetic (about 2x the float32 time on CPUs)."""
    if dtype == torch.float64 and mdtype in (torch.float32, torch.float16, torch.bfloat16):
        return copy.deepcopy(model).to(torch.float64), torch.float64
    return model, mdtype


def _model_in_float32(model: nn.Module, mdtype: torch.dtype, device: torch.device,
                      precision: str) -> tuple[nn.Module, torch.dtype]:
    """The network for reduced-precision Grams: ``model`` if it is float32, else a float32 copy."""
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(f"precision='tf32' needs a CUDA device (TF32 is a tensor-core matmul "
                         f"format); the model is on {device}: use 'fp32' or 'bf16' there")
    if mdtype != torch.float32:
        return copy.deepcopy(model).to(torch.float32), torch.float32
    return model, mdtype


@dataclass
class Featuriser:
    """Kernel blocks on demand from per-example features, for callers that never hold a whole
    kernel (the streaming look-ahead engine): ``featurise`` a block of inputs once, then
    ``kernel`` any pair of featurised blocks. The same engines and dtype rule as
    :func:`empirical_ntk` (it owns an eval-mode copy of the model, float64 when asked).

    Attributes
    ----------
    kind : str
    num_classes : int
    block_shape : tuple
        ``()`` for scalar kernels, ``(k, k)`` for full blocks.
    bytes_per_example, transient_per_example, bytes_per_pair : float
        Memory estimates: features kept per example, extra while featurising, and kernel
        intermediates per pair (what the block planner of :func:`empirical_ntk` uses).
    """

    kind: str
    num_classes: int
    block_shape: tuple
    bytes_per_example: float
    transient_per_example: float
    bytes_per_pair: float
    model: nn.Module
    device: torch.device
    input_dtype: torch.dtype
    dtype: torch.dtype
    _featurise: Callable
    _contract: Callable

    def featurise(self, x: torch.Tensor):
        """``(features, logits)`` of a block of inputs (moved to the model's device/dtype)."""
        if x.is_floating_point():
            x = x.to(device=self.device, dtype=self.input_dtype)
        else:
            x = x.to(self.device)
        with torch.no_grad() if self.kind == "last_layer" else contextlib.nullcontext():
            feats, logits = self._featurise(x)
        return feats, logits.detach().to(self.dtype)

    def kernel(self, f1, f2) -> torch.Tensor:
        """Θ between two featurised blocks: ``(b1, b2)`` or ``(b1, b2, k, k)`` in ``dtype``."""
        b1, b2 = _feature_rows(f1), _feature_rows(f2)
        out = torch.zeros((b1, b2, *self.block_shape), dtype=self.dtype, device=self.device)
        if b1 and b2:
            self._contract(f1, f2, out)
        return out

    def diagonal(self, feats, chunk: int = 32) -> torch.Tensor:
        """Θ(x, x) per example ``(b,)`` or ``(b, k, k)``, from sub-blocks along the diagonal."""
        b = _feature_rows(feats)
        out = torch.empty((b, *self.block_shape), dtype=self.dtype, device=self.device)
        for s in range(0, b, chunk):
            sub = slice_features(feats, slice(s, min(b, s + chunk)))
            blk = self.kernel(sub, sub)
            idx = torch.arange(blk.shape[0], device=blk.device)
            out[s:s + blk.shape[0]] = blk[idx, idx]
        return out


def slice_features(feats, sl: slice):
    """Rows ``sl`` of featurised examples (any engine's feature structure)."""
    if isinstance(feats, torch.Tensor):
        return feats[sl]
    if isinstance(feats, (list, tuple)):
        return type(feats)(slice_features(f, sl) for f in feats)
    if hasattr(feats, "__slots__") and hasattr(feats, "factors"):
        return type(feats)(slice_features(feats.factors, sl), slice_features(feats.grads, sl))
    return feats  # layer plans and other per-model constants


def _feature_rows(feats) -> int:
    if isinstance(feats, torch.Tensor):
        return int(feats.shape[0])
    if isinstance(feats, (list, tuple)):
        for f in feats:
            r = _feature_rows(f)
            if r >= 0:
                return r
        return -1
    if hasattr(feats, "factors"):
        r = _feature_rows(feats.factors)
        return r if r >= 0 else _feature_rows(feats.grads)
    return -1


def make_featuriser(model: nn.Module, x_sample: torch.Tensor, *, kind: str = "pseudo",
                    implementation: str = "auto", dtype: torch.dtype = torch.float64,
                    n1: int = 1000, n2: int = 1000) -> Featuriser:
    """A :class:`Featuriser` for ``model`` (inputs shaped like ``x_sample``); ``n1, n2`` are the
    kernel sizes the engine choice ("auto") is costed for."""
    if kind not in KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; choose one of {KINDS}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; choose one of "
                         f"{IMPLEMENTATIONS}")
    device, mdtype = model_device_dtype(model)
    if dtype == torch.float64 and mdtype in (torch.float32, torch.float16, torch.bfloat16):
        mdtype = torch.float64
    own = copy.deepcopy(model).to(mdtype).eval()
    x_sample, _, probed = _check_inputs(own, torch.as_tensor(x_sample)[:1], None, device, mdtype)
    if probed is None:
        raise ValueError("x_sample must hold at least one example")
    out0, act_numel, calls = probed
    k = int(out0.shape[1])
    item = torch.empty((), dtype=mdtype).element_size()
    common = dict(kind=kind, num_classes=k, model=own, device=device, input_dtype=mdtype,
                  dtype=dtype)
    if kind == "last_layer":
        featurise, contract, width = _last_layer_pair(own)
        return Featuriser(block_shape=(), bytes_per_example=width * item,
                          transient_per_example=act_numel * item, bytes_per_pair=2 * item,
                          _featurise=featurise, _contract=contract, **common)
    params, constants = split_parameters(own)
    if not params:
        raise ValueError("the model has no trainable parameters: its eNTK is zero")
    engine = _choose(implementation, own, params, calls, kind, k, n1, n2)
    kk = num_outputs(kind, k)
    block_shape = (k, k) if kind == "full" else ()
    if engine is _run_jacobian:
        from ntkal.kernels.jacobian import make_jacobian_featuriser

        p = sum(t.numel() for t in params.values())
        featurise = make_jacobian_featuriser(own, params, constants, kind, k)
        return Featuriser(block_shape=block_shape, bytes_per_example=kk * p * item,
                          transient_per_example=2 * kk * p * item + 3 * kk * act_numel * item,
                          bytes_per_pair=(kk * kk if kind == "full" else 1) * (item + 8),
                          _featurise=featurise,
                          _contract=lambda a, b, dest: add_contracted_rows(dest, a, b, kind),
                          **common)
    from ntkal.kernels import structured

    plan = structured.plan_layers(own, params, calls, kind, k, n1, n2)
    featurise, contract = structured.make_structured(own, params, constants, plan, kind, k, dtype)
    transient = (3 + 2 * kk) * act_numel * item
    if plan.generic:
        transient += 3 * kk * act_numel * item + 2 * kk * plan.generic_params * item
    return Featuriser(block_shape=block_shape, bytes_per_example=plan.bytes_per_example,
                      transient_per_example=transient, bytes_per_pair=plan.bytes_per_pair,
                      _featurise=featurise, _contract=contract, **common)


def _forward(model, x, batch=1024):
    return predict_logits(model, x, batch_size=batch, out_dtype=None, out_device=None)


def _run_jacobian(model, params, constants, calls, x1, x2, *, kind, k, act_numel, max_memory,
                  dtype, device, progress):
    from ntkal.kernels.jacobian import make_jacobian_featuriser

    kk = num_outputs(kind, k)
    p = sum(t.numel() for t in params.values())
    item = next(iter(params.values())).element_size()
    e = kk * p * item
    transient = 2 * e + 3 * kk * act_numel * item
    pair = (kk * kk if kind == "full" else 1) * (item + 8)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    plan = plan_blocks(n1, n2, e, pair, max_memory, transient_per_example=transient,
                       symmetric=x2 is None)
    featurise = make_jacobian_featuriser(model, params, constants, kind, k)
    block_shape = (k, k) if kind == "full" else ()
    return run_blocked(featurise, lambda a, b, dest: add_contracted_rows(dest, a, b, kind), x1, x2,
                       block_shape=block_shape, plan=plan, dtype=dtype, device=device,
                       progress=progress, description=f"eNTK ({kind}, jacobian)")


def _choose(implementation, model, params, calls, kind, k, n1, n2):
    from ntkal.kernels import structured

    if implementation == "jacobian":
        return _run_jacobian
    if implementation == "structured":
        return structured.run_structured
    plan = structured.plan_layers(model, params, calls, kind, k, n1, n2)
    p = sum(t.numel() for t in params.values())
    kk = num_outputs(kind, k)
    jac_cost = structured.jacobian_cost(p, kk, n1, n2, plan.forward_flops, kind)
    return structured.run_structured if plan.cost <= jac_cost else _run_jacobian
