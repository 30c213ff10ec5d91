"""Devices: resolve a user's device setting with a clear error, and find or move a model's device.

The one place that turns ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` into a
:class:`torch.device`, so every entry point (the API, the trainer, the CLI) refuses an unusable
device in the same words instead of failing deep inside torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["resolve_device", "model_device", "model_dtype", "on_device"]


def resolve_device(device: Any = "auto", *, name: str = "device") -> torch.device:
    """A usable :class:`torch.device` for ``device``.

    ``None`` and ``"auto"`` mean CUDA when available, else the CPU.

    Raises
    ------
    ValueError
        An unknown device string, CUDA asked for without CUDA, or a CUDA index that does not exist;
        the message names ``name`` and says what to use instead.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"{name} must be a string such as 'cpu', 'cuda', 'cuda:0' or 'auto', or a "
            f"torch.device; got {type(device).__name__}"
        )
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"{name}={device!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'auto'"
        ) from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={str(device)!r} was asked for but CUDA is not available "
                "(no GPU is visible, or this torch was built without CUDA); use "
                "device='cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"{name}={str(device)!r} does not exist: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}"
            )
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Dtype of the model's first floating-point parameter (or buffer); else torch's default."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    for buffer in model.buffers():
        if buffer.is_floating_point():
            return buffer.dtype
    return torch.get_default_dtype()


@contextmanager
def on_device(model: nn.Module, device: Any | None) -> Iterator[nn.Module]:
    """Run the body with ``model`` on ``device`` (``None``: where it is), moving it back after."""
    if device is None:
        yield model
        return
    device = torch.device(device)
    original = model_device(model)
    moved = original != device
    if moved:
        model.to(device)
    try:
        yield model
    finally:
        if moved:
            model.to(original)
