"""Fully connected network: flatten, ``depth`` hidden ReLU layers of ``width`` units."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ntkal.models.base import ClassifierNet, as_shape

__all__ = ["MLP"]


class MLP(ClassifierNet):
    """Multi-layer perceptron on flattened inputs.

    The dense layers are the cheapest case for the empirical NTK (its per-layer factorisation is
    exact), which makes this the model of choice for fast look-ahead experiments.

    Parameters
    ----------
    in_shape : sequence of int
        Shape of one input, any rank (flattened).
    num_classes : int
    width : int, default 512
        Hidden units per layer (784-512-512-10 on MNIST-sized inputs).
    depth : int, default 2
        Number of hidden layers; ``0`` gives a linear model on the raw inputs.
    dropout : float, default 0
        Dropout before the classifier.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        *,
        width: int = 512,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(as_shape("mlp", in_shape), num_classes)
        if depth < 0:
            raise ValueError(f"mlp depth must be >= 0, got {depth}")
        layers: list[nn.Module] = [nn.Flatten()]
        size = math.prod(self.in_shape)
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.features = nn.Sequential(*layers)
        self._finish(size, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
