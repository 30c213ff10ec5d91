"""Crash-safe file writes: write beside the target, fsync, then rename over it.

A crash mid-write leaves the previous file intact rather than a truncated one, so results and
saved active-learning states are never lost to an interrupted run.

Temporary files are named ``.<target>.<pid>-<random>.tmp``. Any exception in the writer
(``KeyboardInterrupt`` included) removes the temporary file before it propagates. A process killed
outright cannot clean up, so every write first removes the *stale* temporaries of earlier writes
to the same target: those whose writer process no longer exists on this machine, and any older
than :data:`STALE_AFTER_SECONDS` (a writer on another machine sharing the directory, a reused
pid, or a name from an older ntkal without a pid).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_torch_save",
    "remove_stale_temporaries",
    "STALE_AFTER_SECONDS",
]

PathLike = str | os.PathLike
#: Age after which a temporary file of any writer is taken to be left over from a crash.
STALE_AFTER_SECONDS = 6 * 3600


def _temporary_pattern(target: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(target.name)}\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_\-]+\.tmp$")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def remove_stale_temporaries(path: PathLike, *, max_age: float = STALE_AFTER_SECONDS) -> list[Path]:
    """Remove temporaries left by crashed writes to ``path``; returns the files removed.

    A temporary is stale when its writer's pid (from its name) is not a running process, or when
    it is older than ``max_age`` seconds. This process's own temporaries are never touched.
    """
    path = Path(path)
    pattern = _temporary_pattern(path)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match["pid"]) if match["pid"] else None
        if pid == os.getpid():
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if (pid is not None and not _process_exists(pid)) or age > max_age:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def atomic_write(path: PathLike, write: Callable[[IO], Any], *, binary: bool) -> None:
    """Call ``write(fh)`` on a temporary file next to ``path``, then rename it over ``path``.

    On any exception (``KeyboardInterrupt`` too) the temporary file is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o666)  # the umask applies, as for a plain open()
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(text), binary=False)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)
