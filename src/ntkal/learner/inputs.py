"""What the learner checks about its inputs and its model before any work is done on them."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkal.models.modes import evaluating

__all__ = ["ProbabilityOutputWarning", "as_input_tensor", "check_finite", "check_model_outputs"]

#: How many pool inputs the model is probed on when the learner is built.
PROBE_SIZE = 8


class ProbabilityOutputWarning(UserWarning):
    """The model seems to return probabilities (e.g. ends in a softmax) instead of logits."""


def as_input_tensor(name: str, x: Any) -> torch.Tensor:
    """``x`` as a float32 tensor with a leading batch dimension; ``name`` is used in messages."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a leading batch dimension, got a scalar")
    if not x.is_floating_point():
        raise TypeError(f"{name} must hold floating-point inputs, got dtype {x.dtype}")
    return x.float() if x.dtype != torch.float32 else x


def check_finite(name: str, x: torch.Tensor) -> None:
    """Refuse NaN or infinite values, naming ``name`` and the first bad row."""
    if x.shape[0] == 0:
        return
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = int(torch.nonzero(~finite)[0, 0])
        count = int((~finite).sum())
        raise ValueError(
            f"{name} contains NaN or infinite values ({count} of {x.shape[0]} rows, "
            f"first at row {bad}); clean or impute the inputs first"
        )


def looks_like_probabilities(out: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether every row of ``out`` lies in [0, 1] and sums to 1 (what a softmax returns)."""
    out = out.detach().to(torch.float64)
    if out.ndim != 2 or out.shape[0] == 0 or out.shape[1] < 2:
        return False
    in_unit = bool(((out >= 0) & (out <= 1)).all())
    return in_unit and bool(
        torch.allclose(out.sum(dim=1), torch.ones(out.shape[0], dtype=out.dtype), atol=atol)
    )


def check_model_outputs(
    model: nn.Module, x_pool: torch.Tensor, num_classes: int, device: torch.device
) -> None:
    """One forward pass on a few pool inputs, so a wrong head fails here and not deep inside a
    strategy.

    Raises
    ------
    ValueError
        The model fails on pool inputs, or does not return ``(n, num_classes)``.

    Warns
    -----
    ProbabilityOutputWarning
        The outputs look like probabilities. ntkal needs raw outputs (logits): the look-ahead
        method linearises them, MSE training regresses them on one-hot targets and the
        uncertainty strategies apply their own softmax. This is a warning, not an error, because
        an output layer whose rows happen to be normalised is legal; turn it into an error with
        ``warnings.simplefilter("error", ProbabilityOutputWarning)``.
    """
    probe = x_pool[:PROBE_SIZE]
    n = int(probe.shape[0])
    try:
        with evaluating(model), torch.no_grad():
            out = model(probe.to(device))
    except Exception as err:
        raise ValueError(
            f"the model failed on a batch of pool inputs of shape {tuple(probe.shape)}: {err}"
        ) from err
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the model must return logits of shape (n, num_classes) = "
            f"(n, {num_classes}); got {shape} for n={n}"
        )
    if looks_like_probabilities(out):
        warnings.warn(
            f"{type(model).__name__} seems to return probabilities (every output in [0, 1], rows "
            "summing to 1 on pool inputs), but ntkal expects raw logits: remove the final "
            "softmax (the strategies apply their own, and the look-ahead kernel linearises the "
            "raw outputs)",
            ProbabilityOutputWarning,
            stacklevel=3,
        )
