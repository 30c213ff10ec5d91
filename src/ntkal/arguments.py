"""Argument checks shared by every layer: one rule for "an integer", "a finite number", "one of".

Python's ``bool`` is an ``int`` and NumPy integers are not ``int``; each check accepts exactly the
values a user means (``True`` is never a count, ``np.int64(3)`` is one) and raises a
:class:`ValueError` (or the ``error`` class given, e.g. a config error) naming the argument, so a
bad value fails where it is passed, not deep inside torch. This module imports nothing from
ntkal: it sits at the bottom of the layer order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["is_integer", "as_int", "as_float", "as_choice", "as_optional_int"]


def is_integer(value: Any) -> bool:
    """True for Python and NumPy integers, False for ``bool`` and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[Exception] = ValueError,
    integral_floats: bool = False,
) -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]``, else ``error`` naming ``name``.

    ``integral_floats=True`` also accepts ``3.0`` (YAML and JSON writers produce them); ``3.5``,
    ``True`` and strings are always refused.
    """
    if not is_integer(value):
        if integral_floats and isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise error(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise error(f"{name} must be <= {maximum}, got {value}")
    return value


def as_optional_int(value: Any, name: str, **kwargs: Any) -> int | None:
    """:func:`as_int`, with ``None`` passed through (an unset option)."""
    return None if value is None else as_int(value, name, **kwargs)


def as_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    error: type[Exception] = ValueError,
    numeric_strings: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the bounds, else ``error`` naming ``name``.

    ``strict_minimum=True`` makes the lower bound exclusive (``> minimum``). ``numeric_strings``
    accepts ``"1e-4"``, which YAML 1.1 reads as a string.
    """
    if numeric_strings and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise error(f"{name} must be a number, got {value!r}") from None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
    ):
        raise error(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if minimum is not None:
        if strict_minimum and not value > minimum:
            raise error(f"{name} must be > {minimum}, got {value}")
        if not strict_minimum and value < minimum:
            raise error(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise error(f"{name} must be <= {maximum}, got {value}")
    return value


def as_choice(
    value: Any,
    name: str,
    choices: Sequence[Any] | Iterable[Any],
    *,
    error: type[Exception] = ValueError,
) -> Any:
    """``value`` if it is one of ``choices``, else ``error`` naming ``name`` and the choices."""
    options = tuple(choices)
    if isinstance(value, bool) or value not in options:
        raise error(f"{name} must be one of {options}, got {value!r}")
    return value
