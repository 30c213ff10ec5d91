"""Strict checks of what a client sends: pool indices, labels and client ids.

A label page is driven by people and by scripts; ``614.7``, ``True``, ``"٣"`` (an Arabic-Indic
digit, which ``int()`` accepts), ``Infinity`` or ``1e400`` must be refused with a message naming
the field, never truncated to an index nor let through to a traceback. Class names are matched
before indices, so with classes named ``1, 2, 3`` the label ``"1"`` is the class ``"1"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ntkal.arguments import is_integer

__all__ = ["as_index", "as_label", "as_client", "LabelConflict", "MAX_CLIENT_LENGTH"]

_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")
MAX_CLIENT_LENGTH = 100


class LabelConflict(ValueError):
    """A label for a pool point that already has a different label, or an item another
    annotator holds (answered 409)."""


def as_index(value: Any, pool_size: int, name: str = "index", *, text: bool = False) -> int:
    """A pool index in ``[0, pool_size)``: a JSON integer (``text=True``: also a string of ASCII
    digits, as a CSV cell holds it)."""
    if text and isinstance(value, str) and _ASCII_DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if not is_integer(value):
        raise ValueError(f"{name} must be a whole number (a pool index), got {value!r}")
    if not 0 <= value < pool_size:
        raise ValueError(f"{name} {value} is out of range for a pool of size {pool_size}")
    return int(value)


def as_label(value: Any, classes: Sequence[str], name: str = "label") -> int:
    """A class index from a class name (matched first) or an integer index (also as a string of
    ASCII digits)."""
    classes = tuple(classes)
    if isinstance(value, str):
        if value in classes:
            return classes.index(value)
        if not _ASCII_DIGITS.fullmatch(value):
            shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
            raise ValueError(f"unknown class {value!r} for {name}; classes: {shown}")
        value = int(value)
    if not is_integer(value):
        raise ValueError(f"{name} must be a class name or a class index, got {value!r}")
    if not 0 <= value < len(classes):
        raise ValueError(f"{name} {value} is out of range [0, {len(classes)})")
    return int(value)


def as_client(value: Any) -> str:
    """An annotator id: a short string (``None`` and ``""`` are ``"default"``)."""
    if value is None or value == "":
        return "default"
    if not isinstance(value, str):
        raise ValueError(f"client must be a string, got {value!r}")
    if len(value) > MAX_CLIENT_LENGTH:
        raise ValueError(f"client id is too long (at most {MAX_CLIENT_LENGTH} characters)")
    return value
