"""Batched, side-effect-free forward passes that acquisition strategies score candidates with.

Every strategy runs the trained model in eval mode on ``QueryContext.device`` with
``QueryContext.batch_size`` and must leave the model exactly as it found it (train/eval flags of
every submodule, device, parameters, BatchNorm running statistics). The helpers here do that once,
so each strategy file only holds its acquisition rule. :func:`evaluating` is
:func:`ntkal.models.modes.evaluating`, re-exported here for the strategies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, overload

import numpy as np
import torch
from torch import nn

from ntkal.models.forward import predict_logits
from ntkal.models.modes import evaluating

__all__ = [
    "evaluating",
    "eval_probabilities",
    "eval_embeddings",
    "dropout_modules",
    "mc_dropout_probabilities",
]

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _batches(x: torch.Tensor, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, int(x.shape[0]), batch_size):
        yield start, x[start : start + batch_size]


def eval_probabilities(
    model: nn.Module, x: torch.Tensor, *, device: torch.device | str = "cpu", batch_size: int = 512
) -> np.ndarray:
    """Softmax of the eval-mode outputs, ``(n, k)`` float64.

    The softmax is applied whatever loss trained the network: for MSE-trained models (the
    look-ahead method's default) the outputs are not calibrated log-probabilities, but the softmax
    is the usual convention for the uncertainty baselines and keeps them comparable.
    """
    logits = predict_logits(model, x, device=device, batch_size=batch_size, out_dtype=torch.float64)
    if logits.shape[0] == 0:
        raise ValueError("no inputs to evaluate")
    return torch.softmax(logits, dim=1).numpy()


@torch.no_grad()
@overload
def eval_embeddings(
    model: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device | str = ...,
    batch_size: int = ...,
    with_logits: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def eval_embeddings(
    model: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device | str = ...,
    batch_size: int = ...,
    with_logits: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def eval_embeddings(
    model: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    with_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features ``model.embed(x)`` (float64, CPU), and optionally the logits
    ``model.classifier(embed)`` from the same pass (dropout is the identity in eval mode)."""
    if not hasattr(model, "embed"):
        raise TypeError(
            f"{type(model).__name__} has no embed(x) method; embedding-based strategies "
            "need a model built by ntkal.models.build_model or one exposing embed/classifier"
        )
    if with_logits and not isinstance(getattr(model, "classifier", None), nn.Module):
        raise TypeError(f"{type(model).__name__} has no `classifier` module")
    device = torch.device(device)
    feats, logits = [], []
    with evaluating(model, device):
        for _, xb in _batches(x, batch_size):
            # nn.Module.__getattr__ is typed Tensor | Module; embed is a method
            h = model.embed(xb.to(device))  # type: ignore[operator]
            h = h.reshape(h.shape[0], -1)
            feats.append(h.detach().to("cpu", torch.float64))
            if with_logits:
                out = model.classifier(h)  # type: ignore[operator]  # Module.__getattr__ again
                logits.append(out.detach().to("cpu", torch.float64))
    if not feats:
        raise ValueError("no inputs to evaluate")
    if with_logits:
        return torch.cat(feats), torch.cat(logits)
    return torch.cat(feats)


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The dropout layers of ``model`` with ``p > 0`` (those MC dropout can sample)."""
    return [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]


@torch.no_grad()
def mc_dropout_probabilities(
    model: nn.Module,
    x: torch.Tensor,
    *,
    num_samples: int,
    seed: int,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> np.ndarray:
    """Softmax outputs under ``num_samples`` MC-dropout masks, ``(T, n, k)`` float64.

    MC dropout (Gal & Ghahramani 2016) reads each dropout mask as one sample of the weights. The
    masks are *consistent*: sample ``t`` uses one mask per dropout layer for every input (as in
    Kirsch et al. 2019), so that ``p_t(y_i)`` and ``p_t(y_j)`` come from the same network — which
    BatchBALD's joint entropies need. Only dropout is stochastic: the model is in eval mode
    (BatchNorm uses its running statistics) and the masks are applied by forward hooks on the
    dropout layers, drawn from a generator seeded with ``seed``.

    Raises
    ------
    ValueError
        If the model has no dropout layer with ``p > 0``.
    """
    drops = dropout_modules(model)
    if not drops:
        raise ValueError(
            f"{type(model).__name__} has no dropout layer with p > 0, so MC dropout has nothing to "
            "sample: build the model with dropout > 0, e.g. build_model(..., dropout=0.2)"
        )
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(int(seed))
    masks: dict[nn.Module, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        inp = inputs[0]
        mask = masks.get(module)
        if mask is None:
            if isinstance(module, nn.Dropout):  # element-wise
                shape = tuple(inp.shape[1:])
            else:  # Dropout1d/2d/3d drop whole channels
                shape = (inp.shape[1],) + (1,) * (inp.dim() - 2)
            keep = 1.0 - float(module.p)  # type: ignore[arg-type]  # dropout's p, typed by __getattr__
            mask = torch.bernoulli(
                torch.full(shape, keep, dtype=torch.float64), generator=generator
            )
            mask = mask / keep if keep > 0 else mask
            mask = mask.to(device=inp.device, dtype=inp.dtype)
            masks[module] = mask
        return inp * mask

    n = int(x.shape[0])
    out: np.ndarray | None = None
    with evaluating(model, device):
        handles = [m.register_forward_hook(hook) for m in drops]
        try:
            for t in range(num_samples):
                masks.clear()
                for start, xb in _batches(x, batch_size):
                    p = torch.softmax(model(xb.to(device)).to(torch.float64), dim=1).cpu().numpy()
                    if out is None:
                        out = np.empty((num_samples, n, p.shape[1]))
                    out[t, start : start + p.shape[0]] = p
        finally:
            for handle in handles:
                handle.remove()
    if out is None:
        raise ValueError("no inputs to evaluate")
    return out
