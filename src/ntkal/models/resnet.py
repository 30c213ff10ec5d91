"""ResNet-18, CIFAR variant (He et al. 2016): the network of the method's reference experiments."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ntkal.models.base import ClassifierNet, check_image_shape

__all__ = ["BasicBlock", "ResNet18"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(ClassifierNet):
    """ResNet-18 for small images: 3x3 stride-1 stem, no max-pool, BasicBlocks ``[2, 2, 2, 2]``.

    The ImageNet stem (7x7 stride 2 + max-pool) would shrink a 32x32 image to 8x8 before the first
    block; the CIFAR stem keeps full resolution, as in the reference experiments (11.2M parameters
    at the default width, 10 classes). Stages are named ``layer1`` ... ``layer4`` so that feature
    taps (e.g. LL4AL's) can address them.

    Parameters
    ----------
    in_shape : (C, H, W)
        Shape of one image (any size; global average pooling before the classifier).
    num_classes : int
    width : int, default 64
        Channels of the stem and of ``layer1``; later stages have ``2x``, ``4x``, ``8x`` that, and
        the embedding has ``8*width`` features.
    dropout : float, default 0
        Dropout before the classifier.
    """

    # Registered with add_module in __init__.
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self, in_shape: Sequence[int], num_classes: int, *, width: int = 64, dropout: float = 0.0
    ) -> None:
        c, h, w = check_image_shape("resnet18", in_shape)
        super().__init__((c, h, w), num_classes)
        if width < 1:
            raise ValueError(f"resnet18 width must be >= 1, got {width}")
        self.stem = nn.Sequential(
            nn.Conv2d(c, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        cin = width
        for i, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
            cout = mult * width
            self.add_module(
                f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
            )
            cin = cout
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self._finish(cin, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.pool(out)
