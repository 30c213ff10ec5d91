"""Reference engine: per-example Jacobians with ``torch.func`` contracted blockwise.

Simple and general (any module ``functional_call`` can run), but it materialises ``k' x P`` numbers
per example and costs ``2·n1·n2·k'^2·P`` FLOPs for the Gram, so it is the slow, trusted path and the
fallback for parameters the structured engine does not recognise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntkal.kernels._common import output_weights

__all__ = ["make_jacobian_featuriser", "per_example_gradients"]


def per_example_gradients(
    model: nn.Module,
    names: Sequence[str],
    params: dict[str, torch.Tensor],
    constants: dict[str, torch.Tensor],
    x: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``weights @ J(x)`` of each example's Jacobian w.r.t. the parameters ``names``.

    Parameters
    ----------
    model : nn.Module
        In eval mode; run functionally, so nothing in it is modified.
    names : sequence of str
        Parameters to differentiate (the others in ``params`` are held constant).
    params, constants : dict
        Trainable parameters and everything else (frozen parameters, buffers).
    x : Tensor
        Block of inputs ``(b, ...)``.
    weights : Tensor
        ``(k', k)`` cotangents: the identity for full/trace, one ``1/√k`` row for pseudo.

    Returns
    -------
    grads : Tensor
        ``(b, k', P_names)`` in the model's dtype.
    logits : Tensor
        ``(b, k)``.
    """
    diff = {n: params[n] for n in names}
    fixed = dict(constants)
    fixed.update({n: p for n, p in params.items() if n not in diff})

    def f(d: dict[str, torch.Tensor], xi: torch.Tensor):
        out = functional_call(model, (d, fixed), (xi.unsqueeze(0),)).squeeze(0)
        return out @ weights.T, out

    jac, logits = vmap(jacrev(f, has_aux=True), in_dims=(None, 0))(diff, x)
    b, kk = x.shape[0], weights.shape[0]
    rows = torch.cat([jac[n].reshape(b, kk, -1) for n in names], dim=2)
    return rows, logits.detach()


def make_jacobian_featuriser(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    constants: dict[str, torch.Tensor],
    kind: str,
    k: int,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``x_block -> (per-example Jacobian rows (b, k', P), logits)`` for all trainable parameters."""
    p0 = next(iter(params.values()))
    weights = output_weights(kind, k, p0.dtype, p0.device)
    names = list(params)

    def featurise(x: torch.Tensor):
        return per_example_gradients(model, names, params, constants, x, weights)

    return featurise
