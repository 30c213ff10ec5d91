"""Wide residual network WRN-depth-k with pre-activation blocks (Zagoruyko & Komodakis 2016)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ntkal.models.base import ClassifierNet, check_image_shape

__all__ = ["PreActBlock", "WideResNet"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the input (1x1 conv projection when the shape changes).

    As in the WRN paper, a projecting block applies its first BN-ReLU to the input of both branches.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class WideResNet(ClassifierNet):
    """WRN-``depth``-``widen_factor``: a 3x3 stem with 16 channels, three groups of
    ``(depth - 4) / 6`` pre-activation blocks with ``16k``, ``32k``, ``64k`` channels (strides
    1, 2, 2), then BN-ReLU and global average pooling.

    The default WRN-28-2 (1.5M parameters) is the usual wide ResNet for small-budget CIFAR work;
    WRN-28-10 (36.5M) is the paper's large model but makes the eNTK expensive.

    Parameters
    ----------
    in_shape : (C, H, W)
        Shape of one image.
    num_classes : int
    width : int, optional
        The widen factor ``k`` (same as ``widen_factor``); default 2.
    depth : int, default 28
        Total depth; ``depth - 4`` must be a positive multiple of 6 (10, 16, 22, 28, 40, ...).
    widen_factor : int, optional
        Alias of ``width`` under the paper's name; give one of the two.
    dropout : float, default 0
        Dropout before the classifier (not inside the blocks).
    """

    # Registered with add_module in __init__.
    group1: nn.Sequential
    group2: nn.Sequential
    group3: nn.Sequential

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        *,
        width: int | None = None,
        depth: int = 28,
        widen_factor: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        c, h, w = check_image_shape("wideresnet", in_shape)
        super().__init__((c, h, w), num_classes)
        if width is not None and widen_factor is not None and width != widen_factor:
            raise ValueError(
                f"wideresnet: width ({width}) and widen_factor ({widen_factor}) both "
                "name the widen factor; give one of them"
            )
        k = width if width is not None else (widen_factor if widen_factor is not None else 2)
        if k < 1:
            raise ValueError(f"wideresnet widen factor must be >= 1, got {k}")
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(
                f"wideresnet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}"
            )
        self.depth = int(depth)
        self.widen_factor = int(k)
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(c, 16, 3, stride=1, padding=1, bias=False)
        cin = 16
        for i, (mult, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            cout = mult * k
            blocks = [
                PreActBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                for j in range(n)
            ]
            self.add_module(f"group{i}", nn.Sequential(*blocks))
            cin = cout
        self.head = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self._finish(cin, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = self.group3(self.group2(self.group1(out)))
        return self.head(out)
