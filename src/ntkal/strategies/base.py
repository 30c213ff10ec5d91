"""The one query contract every acquisition strategy follows.

A strategy is a small object, separate from the model and from the loop that trains it
(BoTorch-style): it receives a :class:`QueryContext` (the trained model, the candidates to score
and the labelled set) and a budget, and returns a :class:`QueryResult` with positions *into the
candidate tensor* and, where it has them, one score per candidate (higher = more wanted).
The caller (``ntkal.ActiveLearner`` or the experiment runner) maps positions back to pool indices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


@dataclass
class QueryContext:
    """Everything a strategy may look at when it chooses points.

    Attributes
    ----------
    model : nn.Module
        The trained network; returns logits of shape ``(n, num_classes)``.
    x_candidates : Tensor
        The unlabelled points to choose from (the scored subset of the pool), shape ``(m, ...)``.
    x_labelled, y_labelled : Tensor
        The labelled set (``y`` are int64 class indices).
    num_classes : int
    seed : int
        Every random choice a strategy makes derives from this seed.
    device : torch.device
        Where to run the model.
    progress : bool
        Whether long computations may show a progress bar.
    batch_size : int
        Batch size for forward passes over candidates.
    """

    model: nn.Module
    x_candidates: torch.Tensor
    x_labelled: torch.Tensor
    y_labelled: torch.Tensor
    num_classes: int
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False
    batch_size: int = 512

    @property
    def num_candidates(self) -> int:
        return int(self.x_candidates.shape[0])


@dataclass
class QueryResult:
    """Positions into ``QueryContext.x_candidates`` (in choice order) and optional scores."""

    indices: np.ndarray
    scores: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def check_budget(budget: int, num_candidates: int) -> int:
    """Validate a query budget against the number of candidates, with a message a user can act on."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise TypeError(f"budget must be an integer, got {type(budget).__name__}")
    budget = int(budget)
    if num_candidates == 0:
        raise ValueError("the pool of candidates is empty: nothing left to query")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if budget > num_candidates:
        raise ValueError(
            f"budget ({budget}) is larger than the number of candidates ({num_candidates}); "
            "lower the budget or score a larger subset of the pool"
        )
    return budget


def top_k(
    scores: np.ndarray,
    k: int,
    rng: np.random.Generator | None = None,
    *,
    secondary: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the ``k`` largest scores, highest first. Ties go to the larger ``secondary``
    score if given, then at random if ``rng`` is given, else to the lowest index (stable).
    NaN scores are an error, never silently ranked."""
    scores = np.asarray(scores, dtype=np.float64)
    keys: list[np.ndarray] = [-scores]
    if secondary is not None:
        keys.insert(0, np.negative(np.asarray(secondary, dtype=np.float64)))
    if any(np.isnan(key).any() for key in keys):
        raise FloatingPointError("acquisition scores contain NaN")
    if rng is not None:
        keys.insert(0, rng.random((scores.shape[0],)))
    order = np.lexsort(tuple(keys)) if len(keys) > 1 else np.argsort(-scores, kind="stable")
    return order[:k]


class Strategy(ABC):
    """Base class of all acquisition strategies.

    Subclasses set ``name`` (the registry key) and implement :meth:`query`. A strategy that needs
    a special training procedure (e.g. LL4AL's loss-prediction module) overrides :meth:`train`;
    one that supports the sequential closed-form mode implements :meth:`begin_sequential`.
    """

    name: ClassVar[str] = ""
    #: True if the strategy uses MC dropout and needs a model built with dropout > 0.
    needs_dropout: ClassVar[bool] = False

    @abstractmethod
    def query(self, context: QueryContext, budget: int) -> QueryResult:
        """Choose ``budget`` distinct candidates."""

    def train(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        config: Any,
        num_classes: int,
        *,
        progress: bool = False,
    ) -> Any:
        """Train ``model`` on the labelled set (warm start). Default: plain SGD training."""
        from ntkal.training import train

        return train(model, x, y, config, num_classes=num_classes, progress=progress)

    def begin_sequential(self, context: QueryContext) -> SequentialSession:
        """Start a sequential session (one query at a time, closed-form update per label)."""
        raise NotImplementedError(
            f"strategy {self.name!r} has no sequential mode; use mode='batch' or a look-ahead strategy"
        )

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class SequentialSession(ABC):
    """Ask/tell state of a sequential query: ``propose`` one candidate, ``observe`` its true label,
    and the strategy updates its model of the world in closed form (no SGD) before the next one."""

    @abstractmethod
    def propose(self) -> tuple[int, float]:
        """Position (into the context's candidates) of the next point to label, and its score."""

    @abstractmethod
    def observe(self, position: int, label: int) -> None:
        """Condition on the true ``label`` of candidate ``position``."""

    #: Whether proposals depend on the labels observed (False: only on which points were
    #: observed, as for variance reduction; a proposal made under a guessed label then holds for
    #: the true one, which lets the labelling page compute it before the label comes).
    proposals_use_labels: bool = True

    def relabel_last(self, position: int, label: int) -> None:
        """Change the label of the candidate observed last, as if it had been observed with
        ``label``. Sessions that cannot do so in closed form raise ``NotImplementedError`` (the
        learner then starts a new session)."""
        raise NotImplementedError(f"{type(self).__name__} cannot relabel in closed form")
