"""Acquisition strategies: one file per family, all following :mod:`ntkal.strategies.base`.

Look them up by name with :func:`get_strategy`; :func:`available_strategies` lists the names.
The look-ahead strategies (``MLMOC``, ``SGDLookahead``) live in :mod:`ntkal.strategies.lookahead`
and are imported on first use.
"""

from __future__ import annotations

from ntkal.strategies.badge import BADGE
from ntkal.strategies.bald import BALD, BatchBALD
from ntkal.strategies.base import (
    QueryContext,
    QueryResult,
    SequentialSession,
    Strategy,
    check_budget,
    top_k,
)
from ntkal.strategies.coreset import Coreset
from ntkal.strategies.epig import EPIG
from ntkal.strategies.herding import MaxHerding, UncertaintyHerding
from ntkal.strategies.learning_loss import LearningLoss
from ntkal.strategies.random_sampling import RandomSampling
from ntkal.strategies.registry import available_strategies, get_strategy, register_strategy
from ntkal.strategies.uncertainty import Entropy, LeastConfidence, Margin

__all__ = [
    "Strategy",
    "QueryContext",
    "QueryResult",
    "SequentialSession",
    "check_budget",
    "top_k",
    "register_strategy",
    "get_strategy",
    "available_strategies",
    "RandomSampling",
    "Entropy",
    "Margin",
    "LeastConfidence",
    "BALD",
    "BatchBALD",
    "BADGE",
    "Coreset",
    "LearningLoss",
    "MLMOC",
    "SGDLookahead",
    "EPIG",
    "MaxHerding",
    "UncertaintyHerding",
    "NTKEPIG",
    "NTKBALD",
]

_LOOKAHEAD_NAMES = ("MLMOC", "SGDLookahead")


def __getattr__(name: str):
    # The look-ahead module is imported lazily: it pulls in the kernel machinery.
    if name in _LOOKAHEAD_NAMES:
        from ntkal.strategies import lookahead

        return getattr(lookahead, name)
    if name in ("NTKEPIG", "NTKBALD"):
        from ntkal.strategies import information

        return getattr(information, name)
    raise AttributeError(f"module 'ntkal.strategies' has no attribute {name!r}")
