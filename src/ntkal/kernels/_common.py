"""Helpers shared by the kernel engines: parameter split, kind arithmetic (eval mode and the
model's device come from :mod:`ntkal.models.modes` and :mod:`ntkal.models.devices`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ntkal.models.devices import model_device, model_dtype

KINDS = ("pseudo", "trace", "full", "last_layer")


def split_parameters(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(trainable, constants)``: trainable parameters by name; frozen parameters and buffers.

    Shared parameters appear once (``named_parameters`` de-duplicates), which is what makes the
    gradient of a tied weight the sum over its uses.
    """
    trainable: dict[str, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        (trainable if p.requires_grad else constants)[name] = p.detach()
    for name, b in model.named_buffers():
        constants[name] = b
    return trainable, constants


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    return model_device(model), model_dtype(model)


def num_outputs(kind: str, k: int) -> int:
    """Rows of the per-example Jacobian an engine needs: one for pseudo, k otherwise."""
    return 1 if kind == "pseudo" else k


def output_weights(kind: str, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Cotangents ``(k', k)`` whose vector-Jacobian products give the rows an engine needs.

    The pseudo-NTK differentiates ``s(x) = Σ_c f_c(x) / √k``: a single all-``1/√k`` row.
    """
    if kind == "pseudo":
        return torch.full((1, k), 1.0 / math.sqrt(k), dtype=dtype, device=device)
    return torch.eye(k, dtype=dtype, device=device)


def add_contracted_rows(dest: torch.Tensor, g1, g2, kind: str) -> None:
    """``dest += Σ_pieces g1_i · g2_iᵀ`` as a kernel block: ``(b1, b2, k, k)`` for ``full``
    (``J_c(x)·J_c'(x')``), ``(b1, b2)`` otherwise (``pseudo`` has ``k' = 1``; ``trace`` sums the
    class-diagonal through the flattened rows).

    ``g1``/``g2`` are per-example gradient rows ``(b, k', P)`` or lists of such pieces (one per
    layer). Pieces are accumulated with ``addmm_`` in the model's dtype, so no concatenated copy
    and a single add into ``dest`` (which may be float64 and, for full kernels, large). Pieces
    in a 16-bit dtype (reduced-precision Grams) are each added into ``dest`` instead, so that
    only the Gram products, not their sum, are rounded to 16 bits.
    """
    if isinstance(g1, torch.Tensor):
        g1, g2 = [g1], [g2]
    b1, kk = g1[0].shape[:2]
    b2 = g2[0].shape[0]
    rows1, rows2 = (b1 * kk, b2 * kk) if kind == "full" else (b1, b2)
    acc = None
    for u, v in zip(g1, g2):
        u = u.reshape(rows1, -1)
        v = v.reshape(rows2, -1)
        if u.element_size() <= 2:
            piece = u @ v.T
            dest.add_(piece.view(b1, kk, b2, kk).permute(0, 2, 1, 3) if kind == "full" else piece)
            continue
        if acc is None:
            acc = u @ v.T
        else:
            acc.addmm_(u, v.T)
    if acc is None:
        return
    if kind == "full":
        dest.add_(acc.view(b1, kk, b2, kk).permute(0, 2, 1, 3))
    else:
        dest.add_(acc)


def probe(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int, dict[nn.Module, list]]:
    """One forward pass on a single example: its logits, the activation numel it stores (sum of
    every module's output sizes, a proxy for autograd memory) and each module's call records
    ``[(input shape, output shape), ...]`` (a module called twice shares weights across uses)."""
    calls: dict[nn.Module, list] = {}
    total = [0]

    def hook(module, inp, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()
            shape_in = tuple(inp[0].shape) if inp and isinstance(inp[0], torch.Tensor) else None
            calls.setdefault(module, []).append((shape_in, tuple(out.shape)))
        else:
            calls.setdefault(module, []).append((None, None))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            out = model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return out, total[0], calls
