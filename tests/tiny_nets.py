"""The tiny classifier network the tests share: ``model(x) == model.classifier(model.embed(x))``,
the convention of :mod:`ntkal.models` (penultimate features from ``embed``, the final
``nn.Linear`` as ``classifier``), small enough for explicit Jacobians and brute force.

Importable from any test module as ``from tiny_nets import TinyNet`` (``tests/`` holds the root
``conftest.py``, so pytest puts it on the path).
"""

from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    """``depth`` blocks of Linear (-> BatchNorm1d) -> activation, then dropout and the classifier.

    Parameters
    ----------
    d, h, k : int
        Input features, hidden width, classes.
    depth : int
        Hidden blocks (>= 1).
    activation : type
        The nonlinearity's module class (``nn.Tanh``: smooth, so SGD and the linearisation agree).
    batchnorm : bool
        BatchNorm after every hidden Linear (to catch train-mode passes).
    dropout : float
        Dropout before the classifier (for MC dropout); 0 is none.
    """

    def __init__(
        self,
        d: int = 2,
        h: int = 16,
        k: int = 3,
        *,
        depth: int = 1,
        activation: type = nn.Tanh,
        batchnorm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = d
        for _ in range(depth):
            layers.append(nn.Linear(width, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation())
            width = h
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(h, k)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.dropout(self.embed(x)))
