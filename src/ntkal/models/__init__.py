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

A user's own network comes from a factory, ``"package.module:function"`` (in a config:
``model: {factory: "mypkg.nets:make_net", kwargs: {hidden: 64}}``): :func:`build_from_factory`
imports it and calls ``function(in_shape=..., num_classes=..., **kwargs)`` (``in_shape`` and
``num_classes`` only when its signature takes them). It must return an ``nn.Module`` whose output
on a batch is logits ``(n, num_classes)``; that is checked on a zero batch of the input shape.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntkal.arguments import as_float, as_int
from ntkal.models.base import ClassifierNet
from ntkal.models.cnn import SmallCNN
from ntkal.models.mlp import MLP
from ntkal.models.resnet import ResNet18
from ntkal.models.wideresnet import WideResNet

__all__ = [
    "build_model",
    "build_from_factory",
    "load_factory",
    "ModelFactoryError",
    "available_models",
    "ClassifierNet",
    "MLP",
    "SmallCNN",
    "ResNet18",
    "WideResNet",
]

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


def build_model(
    name: str,
    in_shape: Sequence[int],
    num_classes: int,
    *,
    width: int | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
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
    num_classes = as_int(num_classes, "num_classes", minimum=1)
    if as_float(dropout, "dropout", minimum=0.0) >= 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    extra = _extra_params(cls)
    unknown = sorted(set(kwargs) - set(extra))
    if unknown:
        raise ValueError(
            f"model {key!r} does not take {', '.join(unknown)}; its options are: "
            f"width, dropout{''.join(', ' + p for p in extra)}"
        )
    if width is not None:
        kwargs["width"] = as_int(width, "width", minimum=1)
    return cls(in_shape, int(num_classes), dropout=float(dropout), **kwargs)


# ----------------------------------------------------------------------------- user factories
class ModelFactoryError(ValueError):
    """A model factory could not be imported, called, or returned something that is not a
    classifier of the right shape; the message names the factory."""


def _path_hint(module_name: str, err: Exception) -> str:
    """Why a user's own module is not found, when it is: ``ntkal`` run as a command does not put
    the working directory on the Python path (``python -m`` and ``python script.py`` do)."""
    if not isinstance(err, ModuleNotFoundError) or err.name is None:
        return ""
    top = module_name.split(".")[0]
    if err.name != top and not module_name.startswith(err.name + "."):
        return ""  # a module the user's code imports is missing: the message says which
    here = Path.cwd()
    found = [p for p in (here / f"{top}.py", here / top / "__init__.py", here / top) if p.exists()]
    if found:
        return (
            f"; {found[0]} is in the working directory {here}, which is not on the Python "
            f"path: run with PYTHONPATH={here} (e.g. `PYTHONPATH=. ntkal run ...`) or install "
            "your package (pip install -e .)"
        )
    return (
        "; the module must be importable from the Python path: put its folder on PYTHONPATH "
        "(e.g. `PYTHONPATH=path/to/folder ntkal run ...`) or install it"
    )


def load_factory(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` (dots after the colon walk attributes)."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ModelFactoryError(
            f"model factory must look like 'package.module:function', got {spec!r}"
        )
    module_name, attr = spec.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:
        raise ModelFactoryError(
            f"model factory {spec!r}: cannot import module {module_name!r} "
            f"({type(err).__name__}: {err}){_path_hint(module_name, err)}"
        ) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelFactoryError(
                f"model factory {spec!r}: {module_name!r} has no attribute {attr!r}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelFactoryError(f"model factory {spec!r} is not callable ({type(obj).__name__})")
    return obj


def build_from_factory(
    spec: str, in_shape: Sequence[int], num_classes: int, kwargs: dict | None = None
) -> nn.Module:
    """Build a user's network from a factory and check that it returns logits.

    Parameters
    ----------
    spec : str
        ``"package.module:function"``; the module must be importable (on ``sys.path`` /
        ``PYTHONPATH``).
    in_shape : sequence of int
        Shape of one input, e.g. ``Dataset.in_shape``; passed as ``in_shape`` if the factory takes it.
    num_classes : int
        Passed as ``num_classes`` if the factory takes it; the output must have this many columns.
    kwargs : dict, optional
        Further keyword arguments for the factory.

    Raises
    ------
    ModelFactoryError
        Import failure, a failing call, a return value that is not an ``nn.Module``, or a forward
        pass that fails or does not give ``(n, num_classes)``.
    """
    factory = load_factory(spec)
    kwargs = dict(kwargs or {})
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(factory).parameters
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, var_kw = {}, True
    for key, value in (
        ("in_shape", tuple(int(s) for s in in_shape)),
        ("num_classes", int(num_classes)),
    ):
        if key in kwargs:
            raise ModelFactoryError(
                f"model factory {spec!r}: {key} comes from the dataset; remove it from kwargs"
            )
        if key in params or var_kw:
            kwargs[key] = value
    try:
        model = factory(**kwargs)
    except Exception as err:
        raise ModelFactoryError(
            f"model factory {spec!r} failed: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(
            f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    probe = torch.zeros((2, *tuple(int(s) for s in in_shape)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as err:
        raise ModelFactoryError(
            f"the model from {spec!r} fails on a batch of shape "
            f"{tuple(probe.shape)}: {type(err).__name__}: {err}"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, int(num_classes)):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelFactoryError(
            f"the model from {spec!r} must return logits of shape "
            f"(n, num_classes) = (2, {num_classes}) for a batch of 2; got {got}"
        )
    return model
