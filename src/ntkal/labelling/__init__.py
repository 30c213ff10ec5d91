"""``ntkal label``: label your own pool in the browser, with the look-ahead updated per label.

:class:`LabellingSession` (in :mod:`ntkal.labelling.engine`) ties the durable
:class:`~ntkal.labelstore.LabelStore`, the chosen strategy (sequential closed-form look-ahead by
default) and background
retraining together; :func:`create_app` / :func:`serve` (in :mod:`ntkal.labelling.server`, needs
the ``label`` extra: FastAPI + uvicorn) put a JSON API and a plain HTML/JS page in front of it.
"""

from __future__ import annotations

from ntkal.labelling.engine import (
    DEFAULT_STRATEGY,
    LabelConflict,
    LabellingSession,
    default_train_config,
)

__all__ = [
    "LabellingSession",
    "LabelConflict",
    "default_train_config",
    "DEFAULT_STRATEGY",
    "create_app",
    "serve",
    "check_bind",
]


def __getattr__(name: str):
    if name in ("create_app", "serve", "check_bind"):
        from ntkal.labelling import server

        return getattr(server, name)
    raise AttributeError(f"module 'ntkal.labelling' has no attribute {name!r}")
