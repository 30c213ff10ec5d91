"""Crash-safe file writes: write beside the target, fsync, then rename over it.

A crash mid-write leaves the previous file intact rather than a truncated one, so results and
saved active-learning states are never lost to an interrupted run.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Union

import torch

__all__ = ["atomic_write", "atomic_write_text", "atomic_torch_save"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[IO], Any], *, binary: bool) -> None:
    """Call ``write(fh)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # what a plain open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(text), binary=False)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)
