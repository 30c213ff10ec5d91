"""Train/eval modes: record every submodule's flag and restore it exactly.

``model.train(was_training)`` is not a restore: it sets *every* submodule to the root's old flag, so
a layer the user deliberately kept in eval mode (a frozen BatchNorm, say) comes back training.
Everything in ntkal that changes a model's mode goes through :func:`modes_restored` or
:func:`evaluating`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ntkal.models.devices import on_device

__all__ = ["modes_restored", "evaluating"]


@contextmanager
def modes_restored(model: nn.Module) -> Iterator[nn.Module]:
    """Let the body change train/eval flags freely; restore each submodule's own flag on exit."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def evaluating(model: nn.Module, device: str | torch.device | None = None) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm uses running statistics, dropout off) for the body; every submodule's
    flag is restored afterwards. With ``device``, the model also runs there and is moved back."""
    with modes_restored(model), on_device(model, device):
        model.eval()
        yield model
