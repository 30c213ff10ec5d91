"""The one featuriser factory: every kernel implementation behind one signature.

An implementation is a pair ``featurise(x) -> (features, logits)`` and ``contract(f1, f2,
dest)`` (adds Θ between two featurised blocks into ``dest``), with its memory estimates; a
:class:`Featuriser` carries them. :func:`build_featuriser` is the only place that makes one
(as neural-tangents keeps its implementations behind one ``empirical_kernel_fn`` signature):
the blocked kernel of :func:`ntkal.kernels.empirical_ntk` and the streaming look-ahead engine
(through :func:`make_featuriser`) both use it, so the implementations, their choice and their
memory estimates exist once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ntkal.kernels import structured
from ntkal.kernels._common import (
    KINDS,
    add_contracted_rows,
    model_device_dtype,
    num_outputs,
    split_parameters,
)
from ntkal.kernels.inputs import check_inputs, network_for
from ntkal.kernels.jacobian import make_jacobian_featuriser
from ntkal.kernels.last_layer import last_layer_pair

__all__ = [
    "Featuriser",
    "build_featuriser",
    "make_featuriser",
    "slice_features",
    "choose_implementation",
    "IMPLEMENTATIONS",
]

IMPLEMENTATIONS = ("auto", "jacobian", "structured")


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
    implementation : str
        ``"jacobian"``, ``"structured"`` or ``"last_layer"``: the one that runs.
    gram_terms : tuple of int or None
        Inner lengths of the products a scalar kernel entry is a sum of, for the rounding bound
        of :mod:`ntkal.kernels.rounding`; ``None`` where that bound does not apply.
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
    implementation: str = ""
    gram_terms: tuple[int, ...] | None = None

    def featurise(self, x: torch.Tensor):
        """``(features, logits)`` of a block of inputs (moved to the model's device/dtype)."""
        if x.is_floating_point():
            x = x.to(device=self.device, dtype=self.input_dtype)
        else:
            x = x.to(self.device)
        with torch.no_grad() if self.kind == "last_layer" else contextlib.nullcontext():
            feats, logits = self._featurise(x)
        return feats, logits.detach().to(self.dtype)

    def kernel(
        self, f1, f2, dtype: torch.dtype | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Θ between two featurised blocks: ``(b1, b2)`` or ``(b1, b2, k, k)`` in ``dtype``
        (default: the featuriser's; float32 features give a float32 kernel with ``float32``).

        ``out``: a tensor (or a strided view, such as a slice of a larger kernel) of that shape
        to write into instead of a new one, so that a caller assembling a kernel from pieces
        copies nothing."""
        b1, b2 = _feature_rows(f1), _feature_rows(f2)
        shape = (b1, b2, *self.block_shape)
        if out is None:
            out = torch.zeros(shape, dtype=dtype or self.dtype, device=self.device)
        else:
            if tuple(out.shape) != shape:
                raise ValueError(f"out has shape {tuple(out.shape)}, the kernel block {shape}")
            out.zero_()
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
            out[s : s + blk.shape[0]] = blk[idx, idx]
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


def choose_implementation(
    implementation: str,
    model: nn.Module,
    params: dict,
    calls: dict,
    kind: str,
    k: int,
    n1: int,
    n2: int,
) -> str:
    """``"jacobian"`` or ``"structured"``: the asked one, or for ``"auto"`` the cheaper by the
    FLOP models of both (see :mod:`ntkal.kernels`)."""
    if implementation != "auto":
        return implementation
    plan = structured.plan_layers(model, params, calls, kind, k, n1, n2)
    p = sum(t.numel() for t in params.values())
    jac_cost = structured.jacobian_cost(p, num_outputs(kind, k), n1, n2, plan.forward_flops, kind)
    return "structured" if plan.cost <= jac_cost else "jacobian"


def build_featuriser(
    model: nn.Module,
    params: dict,
    constants: dict,
    calls: dict,
    *,
    kind: str,
    k: int,
    act_numel: int,
    implementation: str,
    dtype: torch.dtype,
    device: torch.device,
    input_dtype: torch.dtype,
    n1: int,
    n2: int,
) -> Featuriser:
    """The :class:`Featuriser` of ``model`` (already in its computing dtype, in eval mode) for
    ``kind``: the last-layer pair, or the implementation ``implementation`` names (``"auto"``:
    costed for an ``n1 x n2`` kernel). ``params`` / ``constants`` and ``calls`` come from
    :func:`~ntkal.kernels._common.split_parameters` and the probe forward pass."""
    item = torch.empty((), dtype=input_dtype).element_size()
    common: dict[str, Any] = dict(
        kind=kind, num_classes=k, model=model, device=device, input_dtype=input_dtype, dtype=dtype
    )
    if kind == "last_layer":
        featurise, contract, width = last_layer_pair(model)
        return Featuriser(
            block_shape=(),
            bytes_per_example=width * item,
            transient_per_example=act_numel * item,
            bytes_per_pair=2 * item,
            _featurise=featurise,
            _contract=contract,
            implementation="last_layer",
            gram_terms=(width, 0),  # a(x)·a(x'), and the +1 of a bias
            **common,
        )
    chosen = choose_implementation(implementation, model, params, calls, kind, k, n1, n2)
    kk = num_outputs(kind, k)
    block_shape = (k, k) if kind == "full" else ()
    if chosen == "jacobian":
        p = sum(t.numel() for t in params.values())
        return Featuriser(
            block_shape=block_shape,
            bytes_per_example=kk * p * item,
            transient_per_example=2 * kk * p * item + 3 * kk * act_numel * item,
            bytes_per_pair=(kk * kk if kind == "full" else 1) * (item + 8),
            _featurise=make_jacobian_featuriser(model, params, constants, kind, k),
            _contract=lambda a, b, dest: add_contracted_rows(dest, a, b, kind),
            implementation=chosen,
            gram_terms=None if kind == "full" else (kk * p + len(params),),
            **common,
        )
    plan = structured.plan_layers(model, params, calls, kind, k, n1, n2)
    featurise, contract = structured.make_structured(model, params, constants, plan, kind, k, dtype)
    transient = (3 + 2 * kk) * act_numel * item
    if plan.generic:
        transient += 3 * kk * act_numel * item + 2 * kk * plan.generic_params * item
    return Featuriser(
        block_shape=block_shape,
        bytes_per_example=plan.bytes_per_example,
        transient_per_example=transient,
        bytes_per_pair=plan.bytes_per_pair,
        _featurise=featurise,
        _contract=contract,
        implementation=chosen,
        gram_terms=None if kind == "full" else structured.gram_terms(plan, kk),
        **common,
    )


def check_kind(kind: str, implementation: str) -> None:
    """ValueError for a kind or an implementation outside the closed sets."""
    if kind not in KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; choose one of {KINDS}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation {implementation!r}; choose one of {IMPLEMENTATIONS}"
        )


def make_featuriser(
    model: nn.Module,
    x_sample: torch.Tensor,
    *,
    kind: str = "pseudo",
    implementation: str = "auto",
    dtype: torch.dtype = torch.float64,
    n1: int = 1000,
    n2: int = 1000,
) -> Featuriser:
    """A :class:`Featuriser` for ``model`` (inputs shaped like ``x_sample``) on an eval-mode copy
    of it that it owns (float64 for a float64 kernel); ``n1, n2`` are the kernel sizes the
    engine choice ("auto") is costed for."""
    check_kind(kind, implementation)
    device, mdtype = model_device_dtype(model)
    own, mdtype = network_for(model, mdtype, dtype, None, device, own=True)
    own.eval()
    _, _, probed = check_inputs(own, torch.as_tensor(x_sample)[:1], None, device, mdtype)
    if probed is None:
        raise ValueError("x_sample must hold at least one example")
    out0, act_numel, calls = probed
    params, constants = split_parameters(own)
    if kind != "last_layer" and not params:
        raise ValueError("the model has no trainable parameters: its eNTK is zero")
    return build_featuriser(
        own,
        params,
        constants,
        calls,
        kind=kind,
        k=int(out0.shape[1]),
        act_numel=act_numel,
        implementation=implementation,
        dtype=dtype,
        device=device,
        input_dtype=mdtype,
        n1=n1,
        n2=n2,
    )
