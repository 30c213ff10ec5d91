"""The kernel computed in this process: checks, the network in its computing dtype, one
featuriser (:func:`ntkal.kernels.featuriser.build_featuriser`) and the blocked assembly
(:func:`ntkal.kernels.blocking.run_blocked`). :func:`ntkal.kernels.empirical_ntk` calls it
directly, and each worker of :mod:`ntkal.kernels.distributed` calls it for its stripe."""

from __future__ import annotations

import torch
from torch import nn

from ntkal.kernels._common import model_device_dtype, split_parameters
from ntkal.kernels.blocking import default_max_memory, gram_precision, plan_blocks, run_blocked
from ntkal.kernels.featuriser import build_featuriser
from ntkal.kernels.inputs import check_inputs, check_output_fits, network_for
from ntkal.models.forward import predict_logits
from ntkal.models.modes import evaluating

__all__ = ["local_ntk"]


def local_ntk(
    model: nn.Module,
    x1,
    x2,
    *,
    kind: str,
    implementation: str,
    max_memory: int | None,
    dtype: torch.dtype,
    progress: bool,
    precision: str | None,
):
    """``(kernel, f1, f2)`` of :func:`ntkal.kernels.empirical_ntk` (arguments already checked
    against their closed sets), computed here."""
    device, mdtype = model_device_dtype(model)
    model, mdtype = network_for(model, mdtype, dtype, precision, device)
    with evaluating(model):
        x1, x2, probed = check_inputs(model, x1, x2, device, mdtype)
        n1 = int(x1.shape[0])
        n2 = n1 if x2 is None else int(x2.shape[0])
        if probed is None:
            return _empty(kind, n1, n2, x2 is None, dtype, mdtype, device)
        out0, act_numel, calls = probed
        k = int(out0.shape[1])
        check_output_fits(kind, n1, n2, k, dtype, device)
        params, constants = split_parameters(model)
        if kind != "last_layer" and not params:
            shape = (n1, n2, k, k) if kind == "full" else (n1, n2)
            f1 = _forward(model, x1)
            return (
                torch.zeros(shape, dtype=dtype, device=device),
                f1,
                f1 if x2 is None else _forward(model, x2),
            )
        feat = build_featuriser(
            model,
            params,
            constants,
            calls,
            kind=kind,
            k=k,
            act_numel=act_numel,
            implementation=implementation,
            dtype=dtype,
            device=device,
            input_dtype=mdtype,
            n1=n1,
            n2=n2,
        )
        plan = plan_blocks(
            n1,
            n2,
            feat.bytes_per_example,
            feat.bytes_per_pair,
            default_max_memory(device) if max_memory is None else max_memory,
            transient_per_example=feat.transient_per_example,
            symmetric=x2 is None,
        )
        label = (
            "last-layer NTK" if kind == "last_layer" else f"eNTK ({kind}, {feat.implementation})"
        )
        with gram_precision(precision):
            kern, f1, f2 = run_blocked(
                feat._featurise,
                feat._contract,
                x1,
                x2,
                block_shape=feat.block_shape,
                plan=plan,
                dtype=dtype,
                device=device,
                progress=progress,
                description=label,
            )
    f1 = f1.detach()
    return kern, f1, f1 if x2 is None else f2.detach()


def _empty(kind, n1, n2, symmetric, dtype, mdtype, device):
    shape = (n1, n2, 0, 0) if kind == "full" else (n1, n2)
    f = torch.zeros(n1, 0, dtype=mdtype, device=device)
    return (
        torch.zeros(shape, dtype=dtype, device=device),
        f,
        f if symmetric else torch.zeros(n2, 0, dtype=mdtype, device=device),
    )


def _forward(model, x, batch=1024):
    with torch.no_grad():
        return predict_logits(model, x, batch_size=batch, out_dtype=None, out_device=None)
