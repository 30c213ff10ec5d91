"""The batched forward pass: logits of a model on many inputs, in eval mode, without gradients.

Every caller that needs a network's outputs on a set of inputs (the trainer's evaluation, the
learner's predictions, the uncertainty strategies, the kernel engines' ``f(x)``) uses
:func:`predict_logits`, so batching, eval mode and mode/device restoration live in one place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ntkal.arguments import is_integer
from ntkal.models.devices import model_device, model_dtype, resolve_device
from ntkal.models.modes import evaluating

__all__ = ["predict_logits", "as_input_batch"]


def as_input_batch(x: Any, *, floating: bool = False) -> torch.Tensor:
    """``x`` (a tensor or numpy array with a leading batch dimension) as a tensor; with
    ``floating``, integer inputs become float32 (what training and evaluation feed a network)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must have a leading batch dimension")
    if floating and not x.is_floating_point():
        x = x.float()
    return x


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: Any,
    *,
    batch_size: int = 1024,
    device: Any = None,
    out_dtype: torch.dtype | None = torch.float32,
    out_device: Any = "cpu",
) -> torch.Tensor:
    """Outputs of ``model`` on ``x``: eval mode, no gradients, ``batch_size`` inputs at a time.

    Parameters
    ----------
    model : nn.Module
    x : Tensor or ndarray
        Inputs ``(n, ...)``; cast to the model's dtype.
    batch_size : int, default 1024
    device : str or torch.device, optional
        Where to run; default the model's own device. The model is moved back afterwards and every
        submodule's train/eval flag is restored.
    out_dtype : torch.dtype or None, default float32
        Dtype of the result (``None``: the model's).
    out_device : str or torch.device or None, default "cpu"
        Where the result lives (``None``: where it was computed).

    Returns
    -------
    Tensor
        ``(n, num_outputs)``; ``(0, 0)`` for no inputs.
    """
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = as_input_batch(x)
    device = model_device(model) if device is None else resolve_device(device)
    dtype = model_dtype(model)
    out_device = device if out_device is None else torch.device(out_device)
    outs = []
    with evaluating(model, device):
        for start in range(0, int(x.shape[0]), int(batch_size)):
            xb = x[start : start + batch_size].to(device=device, dtype=dtype)
            outs.append(model(xb).detach().to(out_device, out_dtype or dtype))
    if not outs:
        return torch.empty((0, 0), dtype=out_dtype or dtype, device=out_device)
    return torch.cat(outs)
