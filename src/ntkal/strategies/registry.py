"""Name -> strategy class registry, so configs and the CLI can ask for strategies by name."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, TypeVar

from ntkal.strategies.base import Strategy

__all__ = [
    "register_strategy",
    "get_strategy",
    "available_strategies",
    "strategy_parameters",
    "strategy_class",
]

_REGISTRY: dict[str, type[Strategy]] = {}

#: Modules holding registered strategies; imported on first lookup.
_BUILTIN_MODULES = (
    "ntkal.strategies.random_sampling",
    "ntkal.strategies.uncertainty",
    "ntkal.strategies.bald",
    "ntkal.strategies.badge",
    "ntkal.strategies.coreset",
    "ntkal.strategies.learning_loss",
    "ntkal.strategies.lookahead",
    "ntkal.strategies.sgd_lookahead",
    "ntkal.strategies.expected_error",
    "ntkal.strategies.auto",
    "ntkal.strategies.output_change",
    "ntkal.strategies.variance_reduction",
    "ntkal.strategies.typicality",
    "ntkal.strategies.herding",
    "ntkal.strategies.epig",
    "ntkal.strategies.information",
)
_loaded = False

S = TypeVar("S", bound=type)


def register_strategy(cls: S) -> S:
    """Class decorator adding a :class:`Strategy` subclass to the registry under ``cls.name``.

    Re-registering the same class is a no-op; a different class under a taken name is an error, so
    two strategies can never silently shadow each other.
    """
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"only Strategy subclasses can be registered, got {cls!r}")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"{cls.__name__} needs a non-empty class attribute `name` to be registered"
        )
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        if existing.__module__ == cls.__module__ and existing.__qualname__ == cls.__qualname__:
            _REGISTRY[name] = cls  # the same class re-created (module reloaded)
            return cls
        raise ValueError(
            f"strategy name {name!r} is already taken by "
            f"{existing.__module__}.{existing.__qualname__}"
        )
    _REGISTRY[name] = cls
    return cls


def _register_module_strategies(module: Any) -> None:
    # Concrete Strategy subclasses defined in the module, registered even without the decorator.
    for obj in vars(module).values():
        if (
            isinstance(obj, type)
            and issubclass(obj, Strategy)
            and obj.__module__ == module.__name__
            and getattr(obj, "name", "")
            and not inspect.isabstract(obj)
            and obj.name not in _REGISTRY
        ):
            register_strategy(obj)


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for module_name in _BUILTIN_MODULES:
        _register_module_strategies(importlib.import_module(module_name))
    _loaded = True


def _init_parameters(cls: type[Strategy]) -> tuple[list[str], bool]:
    if cls.__init__ is object.__init__:  # no constructor of its own: it takes no parameters
        return [], False
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    return names, takes_any


def get_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate the strategy registered under ``name`` with keyword ``params``.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the available names).
    TypeError
        A parameter the strategy does not take (the message lists the ones it does).
    """
    _ensure_loaded()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    valid, takes_any = _init_parameters(cls)
    unknown = sorted(set(params) - set(valid))
    if unknown and not takes_any:
        raise TypeError(
            f"strategy {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"valid parameters: {', '.join(valid) if valid else '(none)'}"
        )
    return cls(**params)


def available_strategies() -> dict[str, str]:
    """Registered names mapped to a one-line description (the first line of the class docstring)."""
    _ensure_loaded()
    out = {}
    for name in sorted(_REGISTRY):
        doc = inspect.getdoc(_REGISTRY[name]) or ""
        out[name] = doc.strip().splitlines()[0] if doc.strip() else _REGISTRY[name].__name__
    return out


def strategy_parameters(name: str) -> tuple[str, ...]:
    """Keyword parameters the strategy registered under ``name`` takes (a config checks or fills
    them before building it). Unknown ``name``: ValueError listing the available names."""
    _ensure_loaded()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return tuple(_init_parameters(cls)[0])


def strategy_class(name: str) -> type[Strategy]:
    """The class registered under ``name`` (to ask what kind of strategy it is without building
    one). Unknown ``name``: ValueError listing the available names."""
    _ensure_loaded()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return cls
