"""Networks for the experiments, built by name.

Every model returns logits ``(n, num_classes)``, exposes ``embed(x)`` (flat penultimate features)
and ``classifier`` (the final ``nn.Linear``), and computes ``classifier(dropout(embed(x)))``;
dropout is off unless asked for (MC-dropout BALD needs it).

=============  ===================================  ============================================
name           ``width`` means (default)            extra keyword arguments
=============  ===================================  ============================================
``mlp``        hidden units per layer (512)         ``depth`` (2)
``cnn``        first conv channels (16)             ``batchnorm`` (False)
``resnet18``   stem / first stage channels (64)     none
``wideresnet`` widen factor k (2)                   ``depth`` (28), ``widen_factor`` (= width)
=============  ===================================  ============================================

Construction draws from torch's global RNG, so ``torch.manual_seed(s)`` before
:func:`build_model` gives the same weights every time.
"""
from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, Sequence

from torch import nn

from ntkal.models.base import ClassifierNet
from ntkal.models.cnn import SmallCNN
from ntkal.models.mlp import MLP
from ntkal.models.resnet import ResNet18
from ntkal.models.wideresnet import WideResNet

__all__ = ["build_model", "available_models", "ClassifierNet", "MLP", "SmallCNN", "ResNet18",
           "WideResNet"]

_MODELS: dict[str, Callable[..., ClassifierNet]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet18": ResNet18,
    "wideresnet": WideResNet,
}


def available_models() -> list[str]:
    """Names :func:`build_model` accepts, sorted."""
    return sorted(_MODELS)


def _extra_params(cls: Callable[..., ClassifierNet]) -> list[str]:
    params = inspect.signature(cls).parameters
    return [p for p in params if p not in ("in_shape", "num_classes", "width", "dropout")]


def build_model(name: str, in_shape: Sequence[int], num_classes: int, *, width: int | None = None,
                dropout: float = 0.0, **kwargs: Any) -> nn.Module:
    """Build a classification network by name.

    Parameters
    ----------
    name : str
        One of :func:`available_models`: ``mlp``, ``cnn``, ``resnet18``, ``wideresnet``.
    in_shape : sequence of int
        Shape of one input, e.g. ``Dataset.in_shape`` (``(1, 28, 28)``); convolutional models need
        ``(C, H, W)``.
    num_classes : int
        Number of logits.
    width : int, optional
        Scales the network; its meaning and default depend on the model (see the module docstring).
    dropout : float, default 0
        Dropout probability before the classifier, in ``[0, 1)``.
    **kwargs
        Model-specific options, e.g. ``depth`` for ``mlp``/``wideresnet``, ``batchnorm`` for ``cnn``.

    Returns
    -------
    nn.Module
        A :class:`ClassifierNet` in training mode, on the CPU, float32.

    Raises
    ------
    ValueError
        Unknown name or option, bad shape, class count, width or dropout.
    """
    key = str(name).lower()
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    cls = _MODELS[key]
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    extra = _extra_params(cls)
    unknown = sorted(set(kwargs) - set(extra))
    if unknown:
        raise ValueError(f"model {key!r} does not take {', '.join(unknown)}; its options are: "
                         f"width, dropout{''.join(', ' + p for p in extra)}")
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        kwargs["width"] = int(width)
    return cls(in_shape, int(num_classes), dropout=float(dropout), **kwargs)
