"""Small convolutional network for MNIST-sized (and smaller) images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ntkal.models.base import ClassifierNet, check_image_shape

__all__ = ["SmallCNN"]


class SmallCNN(ClassifierNet):
    """Two 3x3 conv + ReLU + 2x2 max-pool stages, one hidden dense layer, then the classifier.

    With the default ``width=16`` this is conv16-conv32-fc64 (about 106k parameters at 1x28x28,
    10 classes), the CNN the method's CPU cost figures refer to. The flat size after the convolutions
    is computed from ``in_shape``, so the same architecture runs on 1x8x8 digits (2x2 maps).

    Parameters
    ----------
    in_shape : (C, H, W)
        Shape of one image; H and W at least 4 (two halvings).
    num_classes : int
    width : int, default 16
        Channels of the first convolution; the second has ``2*width`` and the hidden dense layer
        ``4*width`` units.
    batchnorm : bool, default False
        Insert BatchNorm after each convolution (before the ReLU).
    dropout : float, default 0
        Dropout before the classifier.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        *,
        width: int = 16,
        batchnorm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        c, h, w = check_image_shape("cnn", in_shape, min_size=4)
        super().__init__((c, h, w), num_classes)
        if width < 1:
            raise ValueError(f"cnn width must be >= 1, got {width}")

        def stage(cin: int, cout: int) -> list[nn.Module]:
            conv = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
            norm = [nn.BatchNorm2d(cout)] if batchnorm else []
            return conv + norm + [nn.ReLU(), nn.MaxPool2d(2)]

        self.batchnorm = bool(batchnorm)
        self.conv = nn.Sequential(*stage(c, width), *stage(width, 2 * width))
        flat = 2 * width * (h // 4) * (w // 4)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, 4 * width), nn.ReLU())
        self._finish(4 * width, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))
