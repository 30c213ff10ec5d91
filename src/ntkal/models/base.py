"""The shape every ntkal network shares: a feature extractor, dropout, one linear classifier.

Strategies look inside the network in two places: BADGE and Coreset read the penultimate features
(``embed``) and the last layer (``classifier``); MC-dropout BALD samples the one dropout layer that
sits between them. Fixing this layout in one base class keeps ``model(x)`` and
``model.classifier(model.embed(x))`` the same function (in eval mode, or with ``dropout=0``).
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ClassifierNet", "as_shape", "check_image_shape"]


class ClassifierNet(nn.Module, ABC):
    """Base class: ``forward(x) = classifier(dropout(embed(x)))``.

    Subclasses build their feature extractor, then call :meth:`_finish` with the feature size.

    Attributes
    ----------
    in_shape : tuple of int
        Shape of one input.
    num_classes : int
    embed_dim : int
        Size of the flat penultimate features.
    dropout : nn.Dropout
        Applied to the features before the classifier; ``p = 0`` (the default) makes it the
        identity, and it is then invisible to MC dropout.
    classifier : nn.Linear
        The final layer, ``embed_dim -> num_classes``.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.num_classes = int(num_classes)

    def _finish(self, embed_dim: int, dropout: float) -> None:
        self.embed_dim = int(embed_dim)
        self.dropout = nn.Dropout(float(dropout))
        self.classifier = nn.Linear(self.embed_dim, self.num_classes)

    @abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, flat: shape ``(n, embed_dim)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(n, num_classes)``."""
        return self.classifier(self.dropout(self.embed(x)))


def as_shape(name: str, in_shape: Sequence[int]) -> tuple[int, ...]:
    """``in_shape`` as a tuple of positive Python ints (accepts lists, ``torch.Size``, numpy ints).

    Raises
    ------
    ValueError
        If it is empty or holds anything but positive integers.
    """
    try:
        shape = tuple(operator.index(s) for s in in_shape)
    except TypeError:
        raise ValueError(
            f"{name}: in_shape must be a sequence of positive integers, got {in_shape!r}"
        ) from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(
            f"{name}: in_shape must be a non-empty sequence of positive integers, got {in_shape!r}"
        )
    return shape


def check_image_shape(
    name: str, in_shape: Sequence[int], min_size: int = 1
) -> tuple[int, int, int]:
    """Validate a ``(C, H, W)`` input shape for a convolutional model and return it.

    Raises
    ------
    ValueError
        If the shape is not three positive integers, or the image is smaller than ``min_size``.
    """
    shape = as_shape(name, in_shape)
    if len(shape) != 3:
        raise ValueError(f"{name} needs in_shape = (channels, height, width), got {in_shape!r}")
    if shape[1] < min_size or shape[2] < min_size:
        raise ValueError(
            f"{name} needs images of at least {min_size}x{min_size} pixels, "
            f"got {shape[1]}x{shape[2]}"
        )
    return shape
