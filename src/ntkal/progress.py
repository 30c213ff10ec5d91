"""When progress bars may be shown: the one rule every long computation in ntkal follows."""

from __future__ import annotations

import os

__all__ = ["environment_is_quiet", "progress_allowed"]


def environment_is_quiet() -> bool:
    """True under ``NTKAL_QUIET=1`` or on CI (``CI`` set to anything but empty/0/false)."""
    if os.environ.get("NTKAL_QUIET", "").strip() not in ("", "0"):
        return True
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def progress_allowed(requested: bool) -> bool:
    """A progress bar is shown only when the caller asks for one and the environment allows it."""
    return bool(requested) and not environment_is_quiet()
