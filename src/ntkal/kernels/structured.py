"""Structured engine: the eNTK assembled layer by layer from activations and output sensitivities.

For a layer z = W a + b, the Jacobian of output row ``c`` w.r.t. ``W`` is the outer product
δ_c aᵀ with δ_c = ∂f_c/∂z, so

    Θ_layer(x, x')_{cc'} = (a(x)·a(x') + 1) · (δ_c(x)·δ_c'(x')),

and a convolution is the same identity summed over output positions p, p' with ``a`` the input
patch (``unfold``). Nothing of size ``P`` per example is ever formed for such layers, which is where
the speed comes from: the Gram costs ``din + k'^2·dout`` per pair instead of ``k'^2·din·dout``.

Per layer a FLOP model (:func:`layer_costs`) chooses between that factorisation and explicit
per-example gradients built from the same ``a`` and δ (``Σ_p δ_p patch_pᵀ``; cheaper for early
convolutions with many positions and few weights). BatchNorm affine parameters get analytic
per-example gradients (eval mode: an affine map of the normalised input). Every other trainable
parameter - unknown layer types, weights shared between modules, modules called twice - falls back
to ``torch.func`` per-example gradients, so the kernel is always exact.

δ's come from one batched forward pass with a zero tensor added to each recognised layer's output
(its gradient *is* δ, and in-place activations after the layer cannot corrupt it) and one
batched vector-Jacobian product per needed output row. This assumes examples do not interact in
eval mode (true for standard layers; BatchNorm uses running statistics).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ntkal.kernels._common import add_contracted_rows, num_outputs, output_weights
from ntkal.kernels.jacobian import per_example_gradients

__all__ = [
    "LayerPlan",
    "ModelPlan",
    "plan_layers",
    "jacobian_cost",
    "make_structured",
    "gram_terms",
]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: Override the per-layer FLOP model for weights applied at several positions: ``"factor"`` or
#: ``"grad"`` (for tests and benchmarks); ``None`` lets :func:`layer_costs` decide.
FORCE_MODE: str | None = None


@dataclass
class LayerPlan:
    """How one recognised layer enters the kernel.

    ``mode`` is ``"factor"`` (activation x sensitivity Grams) or ``"grad"`` (explicit per-example
    gradients); ``op`` is ``"linear"``, ``"conv"`` or ``"bn"``; ``positions`` the number of output
    positions ``L`` a weight is applied at (1 for a plain dense layer).
    """

    module: nn.Module
    op: str
    mode: str
    use_w: bool
    use_b: bool
    positions: int
    din: int
    dout: int


@dataclass
class ModelPlan:
    """Per-layer choices, the parameters left to ``torch.func`` and the cost estimates."""

    layers: list[LayerPlan]
    generic: list[str]
    cost: float
    forward_flops: float
    bytes_per_example: float
    bytes_per_pair: float
    generic_params: int = 0


def _pair_factor(kind: str, kk: int) -> int:
    """Output rows paired per (x, x'): k^2 for full, k for trace (diagonal only), 1 for pseudo."""
    return kk * kk if kind == "full" else kk


def layer_costs(
    kind: str, kk: int, positions: int, din: int, dout: int, n1: int, n2: int
) -> dict[str, float]:
    """Estimated FLOPs of the weight's contribution under each mode, for an ``n1 x n2`` kernel.

    factor: per pair 2L²·din (patch Gram) + 2L²·c·dout (sensitivity Gram) + L²·c (reduction);
    grad: per example 2·k'·L·din·dout to form gradients, per pair 2·c·din·dout, with ``c`` the
    paired output rows (:func:`_pair_factor`). Dense layers (L = 1) essentially always factor.
    """
    c = _pair_factor(kind, kk)
    l2 = float(positions) ** 2
    pairs = float(n1) * float(n2)
    factor = pairs * (2 * l2 * din + 2 * l2 * c * dout + l2 * c)
    grad = (n1 + n2) * 2.0 * kk * positions * din * dout + pairs * 2.0 * c * din * dout
    return {"factor": factor, "grad": grad}


def gram_terms(plan: ModelPlan, kk: int) -> tuple[int, ...] | None:
    """Inner lengths of the terms a scalar kernel entry is a sum of (for the rounding bound of
    :mod:`ntkal.kernels.rounding`): ``din + k'·dout`` per factored dense layer, and one term for
    every explicit gradient row (``k'`` times their count, plus the pieces they are accumulated
    from); ``None`` with a positional factor layer, whose terms the diagonal does not bound."""
    terms: list[int] = []
    grad_rows, pieces = plan.generic_params, int(bool(plan.generic))
    for lay in plan.layers:
        if lay.mode == "factor":
            if lay.positions > 1:
                return None
            terms.append(lay.din + kk * lay.dout)
            continue
        if lay.op == "bn":
            grad_rows += lay.dout * (int(lay.use_w) + int(lay.use_b))
        else:
            grad_rows += (lay.din * lay.dout if lay.use_w else 0) + (lay.dout if lay.use_b else 0)
        pieces += int(lay.use_w) + int(lay.use_b)
    if grad_rows:
        terms.append(kk * grad_rows + pieces)
    return tuple(terms)


def jacobian_cost(
    num_params: int, kk: int, n1: int, n2: int, forward_flops: float, kind: str = "full"
) -> float:
    """FLOPs of the plain ``torch.func`` route: ``(1 + 2k')`` forward-equivalents per example for
    the Jacobian rows, plus ``2·c·P`` per pair for the Gram."""
    c = _pair_factor(kind, kk)
    return (n1 + n2) * (1 + 2 * kk) * forward_flops + float(n1) * n2 * 2.0 * c * num_params


def _owned_parameters(model: nn.Module, params: dict[str, torch.Tensor]):
    """Map each module to ``{local name: full name}`` of the trainable parameters it holds, and
    count in how many modules each parameter object appears (tied weights appear twice)."""
    by_id: dict[int, str] = {}
    for name, p in model.named_parameters():
        by_id.setdefault(id(p), name)
    owners: dict[int, int] = {}
    local: dict[nn.Module, dict[str, str]] = {}
    for module in model.modules():
        for pn, param in module._parameters.items():
            if param is None:
                continue
            owners[id(param)] = owners.get(id(param), 0) + 1
            full = by_id.get(id(param))
            if full is not None and full in params:
                local.setdefault(module, {})[pn] = full
    return local, owners


def _conv_padding(module: nn.Conv2d) -> tuple[int, int, int, int] | None:
    """``(left, right, top, bottom)`` zero padding of a Conv2d, or None if not plain zeros."""
    if module.padding_mode != "zeros":
        return None
    pad = module.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0, 0, 0)
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        return (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
    return (pad[1], pad[1], pad[0], pad[0])


def plan_layers(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    calls: dict,
    kind: str,
    k: int,
    n1: int,
    n2: int,
) -> ModelPlan:
    """Decide, per layer, factorisation vs per-example gradients vs ``torch.func`` fallback.

    Parameters
    ----------
    model : nn.Module
    params : dict
        Trainable parameters by name.
    calls : dict
        Per-module call records from a one-example probe forward pass (input/output shapes).
    kind : str
    k : int
        Number of outputs.
    n1, n2 : int
        Kernel size (the FLOP model is evaluated for these).

    Returns
    -------
    ModelPlan

    Notes
    -----
    One pass over the layers that adds each layer's cost, memory and gradient rows into the
    totals as it decides; it stays one function because every branch updates those same six
    accumulators, which a split would pass back and forth.
    """
    kk = num_outputs(kind, k)
    c = _pair_factor(kind, kk)
    item = next(iter(params.values())).element_size()
    local, owners = _owned_parameters(model, params)
    claimed: set[str] = set()
    layers: list[LayerPlan] = []
    fwd = 0.0
    per_ex = 0.0
    per_pair = 0.0
    cost = 0.0
    grad_rows = 0
    for module, names in local.items():
        rec = calls.get(module, [])
        if (
            len(rec) != 1
            or rec[0][0] is None
            or any(owners[id(getattr(module, pn))] > 1 for pn in names)
        ):
            continue  # unused, called twice or weight-tied: torch.func handles it exactly
        shape_in, shape_out = rec[0]
        use_w = "weight" in names
        use_b = "bias" in names
        if set(names) - {"weight", "bias"}:
            continue
        if type(module) is nn.Linear:
            positions = int(math.prod(shape_out[1:-1])) if len(shape_out) > 2 else 1
            din, dout = module.in_features, module.out_features
            op = "linear"
        elif (
            type(module) is nn.Conv2d
            and module.groups == 1
            and _conv_padding(module) is not None
            and len(shape_out) == 4
        ):
            positions = int(shape_out[2] * shape_out[3])
            din = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            dout = module.out_channels
            op = "conv"
        elif (
            isinstance(module, _BN)
            and module.running_mean is not None
            and module.affine
            and len(shape_in) >= 2
        ):
            ch = module.num_features
            layers.append(
                LayerPlan(module, "bn", "grad", use_w, use_b, int(math.prod(shape_in[2:])), ch, ch)
            )
            claimed.update(names.values())
            grad_rows += ch * (use_w + use_b)
            continue
        else:
            continue
        fwd += 2.0 * positions * din * dout
        if use_w:
            costs = layer_costs(kind, kk, positions, din, dout, n1, n2)
            mode = "factor" if (positions == 1 or costs["factor"] <= costs["grad"]) else "grad"
            if FORCE_MODE is not None and positions > 1:
                mode = FORCE_MODE
            cost += costs[mode]
        else:
            mode = "grad"
        if mode == "factor":
            per_ex += positions * (din + kk * dout)
            if positions > 1:
                per_pair += positions * positions * (1 + (c if kind == "full" else 1)) * 2
        else:
            grad_rows += din * dout if use_w else 0
        if use_b and not (mode == "factor" and positions == 1):
            grad_rows += dout
        layers.append(LayerPlan(module, op, mode, use_w, use_b, positions, din, dout))
        claimed.update(names.values())
    generic = [n for n in params if n not in claimed]
    generic_p = sum(params[n].numel() for n in generic)
    grad_rows += generic_p
    per_ex += kk * grad_rows
    cost += float(n1) * n2 * 2.0 * c * grad_rows
    if generic:
        # The torch.func fallback reruns the whole network per example.
        cost += (n1 + n2) * (1 + 2 * kk) * max(fwd, 1.0)
    cost += (n1 + n2) * (1 + 2 * kk) * fwd
    per_pair += (c if kind == "full" else 1) * 2
    return ModelPlan(
        layers, generic, cost, fwd, per_ex * item, per_pair * item + 8 * c, generic_params=generic_p
    )


class _Capture:
    """Forward hooks that record each planned layer's input and add a zero, grad-requiring
    tensor to its output (the gradient w.r.t. it is the output sensitivity δ)."""

    def __init__(self, layers: list[LayerPlan]):
        self.layers = layers
        self.inputs: dict[nn.Module, torch.Tensor] = {}
        self.zeros: dict[nn.Module, torch.Tensor] = {}
        # Hooks live on the module, which other threads may run meanwhile (the labelling page
        # featurises in a background thread while requests run the same network): only this
        # thread's forward passes are captured.
        self.thread = threading.get_ident()

    def hook(self, module, inp, out):
        if threading.get_ident() != self.thread:
            return None  # another thread's forward pass: leave it alone
        self.inputs[module] = inp[0].detach()
        z = torch.zeros_like(out, requires_grad=True)
        self.zeros[module] = z
        return out + z

    def __enter__(self):
        self.handles = [lay.module.register_forward_hook(self.hook) for lay in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


def _sensitivities(
    out: torch.Tensor, zs: list[torch.Tensor], weights: torch.Tensor
) -> list[torch.Tensor]:
    """δ for every captured layer: ``(b, k', *layer output shape)``.

    A loop of ``k'`` plain backward passes through one retained graph (a batched
    vector-Jacobian product, ``is_grads_batched``, measured no faster on CPU, and not every
    operator has a batching rule for its backward).
    """
    kk = weights.shape[0]
    b = out.shape[0]
    cot = weights[:, None, :].expand(kk, b, weights.shape[1])
    if kk == 1:
        grads = torch.autograd.grad(out, zs, grad_outputs=cot[0], allow_unused=True)
        return [
            (g if g is not None else torch.zeros_like(z)).unsqueeze(1) for g, z in zip(grads, zs)
        ]
    per_row = []
    for r in range(kk):
        g = torch.autograd.grad(
            out, zs, grad_outputs=cot[r], retain_graph=r < kk - 1, allow_unused=True
        )
        per_row.append([gi if gi is not None else torch.zeros_like(z) for gi, z in zip(g, zs)])
    return [torch.stack([row[i] for row in per_row], 1) for i in range(len(zs))]


def _patches(lay: LayerPlan, a: torch.Tensor) -> torch.Tensor:
    """Layer inputs as ``(b, L, din)``: unfolded patches for a conv, positions for a dense layer."""
    m = lay.module
    if lay.op == "conv":
        assert isinstance(m, nn.Conv2d)  # planned only for a plain Conv2d with zero padding
        padding = _conv_padding(m)
        assert padding is not None
        left, right, top, bottom = padding
        if left or right or top or bottom:
            a = F.pad(a, (left, right, top, bottom))
        cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=0, stride=m.stride)
        return cols.transpose(1, 2)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _deltas(lay: LayerPlan, d: torch.Tensor) -> torch.Tensor:
    """Sensitivities as ``(b, k', L, dout)``."""
    b, kk = d.shape[:2]
    if lay.op == "conv":
        return d.reshape(b, kk, lay.dout, -1).transpose(2, 3)
    return d.reshape(b, kk, -1, lay.dout)


def _bn_grads(lay: LayerPlan, a: torch.Tensor, d: torch.Tensor) -> list[torch.Tensor]:
    m = lay.module
    # Planned only for a batch norm that tracks running statistics.
    assert isinstance(m, _BN) and m.running_mean is not None and m.running_var is not None
    b, kk = d.shape[:2]
    view = (1, -1) + (1,) * (a.ndim - 2)
    xhat = (a - m.running_mean.view(view)) / torch.sqrt(m.running_var.view(view) + m.eps)
    d = d.reshape(b, kk, lay.dout, -1)
    out = []
    if lay.use_w:
        out.append((d * xhat.reshape(b, 1, lay.dout, -1)).sum(-1))
    if lay.use_b:
        out.append(d.sum(-1))
    return out


class _Features:
    """Per-block features: factor pieces per layer and one matrix of explicit gradient rows."""

    __slots__ = ("factors", "grads")

    def __init__(self, factors, grads):
        self.factors = factors
        self.grads = grads

    def cast(self, dtype: torch.dtype) -> _Features:
        """The same features in ``dtype`` (for reduced-precision Grams, see
        :func:`ntkal.kernels.blocking.gram_precision`)."""
        return _Features(
            [(lay, a.to(dtype), d.to(dtype)) for lay, a, d in self.factors],
            [g.to(dtype) for g in self.grads],
        )


def make_structured(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    constants: dict[str, torch.Tensor],
    plan: ModelPlan,
    kind: str,
    k: int,
    dtype: torch.dtype,
):
    """``(featurise, contract)`` pair for :func:`ntkal.kernels.blocking.run_blocked`."""
    p0 = next(iter(params.values()))
    weights = output_weights(kind, k, p0.dtype, p0.device)
    kk = weights.shape[0]
    layers = plan.layers

    def featurise(x: torch.Tensor):
        grads: list[torch.Tensor] = []
        factors = []
        if layers:
            with _Capture(layers) as cap, torch.enable_grad():
                out = model(x)
                deltas = _sensitivities(out, [cap.zeros[lay.module] for lay in layers], weights)
            logits = out.detach()
            b = x.shape[0]
            for lay, d in zip(layers, deltas):
                a = cap.inputs[lay.module]
                if lay.op == "bn":
                    grads.extend(_bn_grads(lay, a, d))
                    continue
                pat = _patches(lay, a)
                dl = _deltas(lay, d)
                if lay.mode == "factor" and lay.positions == 1:
                    factors.append((lay, pat[:, 0], dl[:, :, 0]))
                    continue
                if lay.mode == "factor":
                    factors.append((lay, pat, dl))
                elif lay.use_w:
                    # Σ_p δ_p patch_pᵀ for all k' rows in one bmm (no per-row copy of the patches).
                    dt = dl.permute(0, 1, 3, 2).reshape(b, kk * lay.dout, -1)
                    grads.append(torch.bmm(dt, pat).reshape(b, kk, -1))
                if lay.use_b:
                    grads.append(dl.sum(2))
            del cap
        if plan.generic:
            g, logits_g = per_example_gradients(model, plan.generic, params, constants, x, weights)
            grads.append(g)
            if not layers:
                logits = logits_g
        return _Features(factors, grads), logits

    def contract(r: _Features, c: _Features, dest: torch.Tensor) -> None:
        if r.grads:
            add_contracted_rows(dest, r.grads, c.grads, kind)
        for (lay, a1, d1), (_, a2, d2) in zip(r.factors, c.factors):
            _add_factor_block(dest, lay, a1, d1, a2, d2, kind)

    return featurise, contract


#: Sensitivities at most this wide per example are checked for being the same for every example
#: of a block (a pass over ``b × width`` values, against the ``b1 × b2`` Gram it can replace).
SHARED_SENSITIVITY_WIDTH = 256


def _shared_sensitivity_product(d1: torch.Tensor, d2: torch.Tensor) -> float | None:
    """``δ·δ'`` when every example of each block has the same sensitivities (for the pseudo-NTK
    the last layer's δ is the constant ``1/√k`` row, for ``trace`` the unit rows), else ``None``.
    Then the layer's δ-Gram is one number, and the ``b1 × b2`` GEMM with its short inner
    dimension (memory-bound: it writes a full matrix for ``2 k`` FLOPs an entry) is not needed."""
    r1, r2 = d1.reshape(d1.shape[0], -1), d2.reshape(d2.shape[0], -1)
    if r1.shape[1] > SHARED_SENSITIVITY_WIDTH or not r1.shape[0] or not r2.shape[0]:
        return None
    if not (bool((r1 == r1[:1]).all()) and bool((r2 == r2[:1]).all())):
        return None
    return float(r1[0] @ r2[0])


def _add_factor_block(dest: torch.Tensor, lay: LayerPlan, a1, d1, a2, d2, kind: str) -> None:
    """Add one layer's kernel block, from activations and sensitivities (no per-example
    gradients), into ``dest``; the final product is fused into the accumulation (``addcmul_``)
    because at k x k blocks memory traffic, not the Grams, dominates."""
    b1, kk = d1.shape[:2]
    b2 = d2.shape[0]
    if lay.positions == 1 and a1.ndim == 2:
        if lay.use_w:
            gram = a1 @ a2.T
            if lay.use_b:
                gram.add_(1.0)  # in place: a fresh (b1, b2) temporary costs its page faults
        else:  # pragma: no cover - bias-only layers go to the gradient group
            gram = torch.ones(b1, b2, dtype=a1.dtype, device=a1.device)
        if kind == "full":
            dg = (d1.reshape(b1 * kk, -1) @ d2.reshape(b2 * kk, -1).T).view(b1, kk, b2, kk)
            dest.addcmul_(dg.permute(0, 2, 1, 3), gram[:, :, None, None])
            return
        shared = _shared_sensitivity_product(d1, d2)
        if shared is not None:
            dest.add_(gram, alpha=shared)
        else:
            dest.addcmul_(d1.reshape(b1, -1) @ d2.reshape(b2, -1).T, gram)
        return
    # Positional: Σ_{p,p'} (patch_p · patch'_p') (δ_p · δ'_p').
    L1, L2 = a1.shape[1], a2.shape[1]
    pg = (a1.reshape(b1 * L1, -1) @ a2.reshape(b2 * L2, -1).T).reshape(b1, L1, b2, L2)
    if kind == "full":
        dg = d1.reshape(b1 * kk * L1, -1) @ d2.reshape(b2 * kk * L2, -1).T
        dg = dg.reshape(b1, kk, L1, b2, kk, L2)
        dest.add_(torch.einsum("iljm,icljdm->ijcd", pg, dg))
        return
    # trace: Σ_c δ_c·δ'_c summed into one Gram by stacking classes along features.
    e1 = d1.permute(0, 2, 1, 3).reshape(b1 * L1, -1)
    e2 = d2.permute(0, 2, 1, 3).reshape(b2 * L2, -1)
    dg = (e1 @ e2.T).reshape(b1, L1, b2, L2)
    dest.add_((pg * dg).sum((1, 3)))
