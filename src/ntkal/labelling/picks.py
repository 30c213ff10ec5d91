"""Which item comes next: the strategy's pick, a cheap fallback, or the warm-up order.

* **warm-up**: until the network has been trained once, a seeded random order (a look-ahead of an
  untrained network says nothing).
* **look-ahead strategies** (those with a sequential session, e.g. ``vr``, ``mlmoc``): the
  session's proposal, conditioned in closed form on every label given (Mohamadi, Bae & Sutherland,
  NeurIPS 2022, Sec. 4) through :class:`~ntkal.learner.ActiveLearner` in ``mode="sequential"``.
* **other strategies** (``margin``, ``coreset``, ...): re-queried after each label
  (``mode="batch"``, no SGD in between), taking the best item that is free.

When the pick is held by another annotator or was skipped, the unlabelled point with the smallest
margin between the network's top two classes stands in (cheap, and still informative).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkal.labelling.speculation import Speculator

__all__ = ["PickPolicy", "DEFAULT_STRATEGY", "is_lookahead"]

#: The strategy ``ntkal label`` uses unless told otherwise: ``auto``, ntkal's validated default
#: (:mod:`ntkal.strategies.auto`), in its sequential session; the one place to change it.
DEFAULT_STRATEGY = "auto"


def is_lookahead(strategy: Any) -> bool:
    """Whether ``strategy`` has a sequential (closed-form, per-label) session."""
    from ntkal.strategies.base import Strategy

    return type(strategy).begin_sequential is not Strategy.begin_sequential


class PickPolicy:
    """The learner behind the page and the order items are handed out in.

    Parameters
    ----------
    strategy : str
        A registered strategy name (``ntkal strategies`` lists them).
    params : dict
        Its options (checked now: a bad one fails at start, not at the first pick).
    """

    def __init__(
        self,
        strategy: str,
        params: dict | None,
        x_pool: torch.Tensor,
        num_classes: int,
        train_config: Any,
        subset: int,
        seed: int,
        speculate: bool = True,
    ) -> None:
        from ntkal.strategies import get_strategy

        self.strategy_name = str(strategy)
        self.params = dict(params or {})
        self.sequential = is_lookahead(get_strategy(self.strategy_name, **self.params))
        self.x_pool = x_pool
        self.pool_size = int(x_pool.shape[0])
        self.num_classes = int(num_classes)
        self.train_config = train_config
        self.subset = int(subset)
        self.seed = int(seed)
        self.random_order = np.random.default_rng([self.seed, 7]).permutation(self.pool_size)
        self.learner: Any = None
        self._version = 0
        self._proposal: int | None = None
        self._margin_order: np.ndarray | None = None
        self.speculator = Speculator(self._twin) if (speculate and self.sequential) else None

    @property
    def description(self) -> str:
        """How the page names the strategy, e.g. ``"vr (sequential, closed form)"``."""
        how = "sequential, closed form" if self.sequential else "re-queried after each label"
        return f"{self.strategy_name} ({how})"

    # ------------------------------------------------------------------ learners
    def build(self, model: nn.Module, idx: np.ndarray, lab: np.ndarray, seed: int | None = None):
        """An ActiveLearner over the pool with labels ``(idx, lab)``: a fresh session (a new
        seed unless ``seed`` is given)."""
        from ntkal.learner import ActiveLearner
        from ntkal.strategies import get_strategy

        if seed is None:
            self._version += 1
            seed = self.seed + 1000 * self._version
        return ActiveLearner(
            model,
            get_strategy(self.strategy_name, **self.params),
            self.x_pool,
            labelled=idx,
            labels=lab,
            num_classes=self.num_classes,
            train_config=self.train_config,
            mode="sequential" if self.sequential else "batch",
            subset=self.subset,
            seed=seed,
        )

    def _twin(self, idx: np.ndarray, lab: np.ndarray, num_queries: int):
        """A learner in the current one's lineage (its model, seed and query count) with labels
        ``(idx, lab)``: the :class:`Speculator`'s twin."""
        twin = self.build(self.learner.model, idx, lab, seed=self.learner.seed)
        twin.num_queries = num_queries
        return twin

    def twin_of(self, learner: Any) -> Any:
        """A copy of ``learner`` for the :class:`Speculator` (``None`` without speculation, or if
        it cannot be copied): copying its state costs a memory copy, where building a twin
        repeats the session's kernel work (seconds on a large pool). Call it before ``learner``
        is shared, e.g. in the retrain thread."""
        if self.speculator is None:
            return None
        try:
            return copy.deepcopy(learner, {id(self.x_pool): self.x_pool})
        except Exception:  # noqa: BLE001 - an optimisation: the Speculator builds one instead
            return None

    def install(self, learner: Any, model_changed: bool, twin: Any = None) -> None:
        """Use ``learner`` from now on (cached picks and speculation are dropped); ``twin``, a
        copy of it in the same state (:meth:`twin_of`), lets speculation start at once."""
        self.learner = learner
        self._proposal = None
        if model_changed:
            self._margin_order = None
        if self.speculator is not None:
            self.speculator.reset()
            if twin is not None:
                self.speculator.adopt(learner, twin)

    def teach(self, index: int, label: int) -> bool:
        """Teach the learner ``(index, label)``; True if the speculated twin had it already (and
        took over, its next pick ready)."""
        if self.speculator is not None:
            taken = self.speculator.take(self.learner, index, label)
            if taken is not None:
                self.learner, self._proposal = taken
                self.speculator.queried(self.learner, same_lineage=True)
                return True
        self.learner.teach([index], [label])
        self._proposal = None
        if self.speculator is not None:
            self.speculator.taught(index, label)
        return False

    def speculate(self, index: int, label: int) -> None:
        """``index`` (the strategy's pick) is on screen and the model expects ``label``."""
        if self.speculator is not None:
            self.speculator.speculate(index, label)

    def forget_pick(self) -> None:
        """Drop the cached pick (e.g. it was skipped: the next item must differ)."""
        self._proposal = None

    def scored(self) -> int:
        """How many candidates the strategy scores now (the real number, for the header)."""
        unlabelled = self.pool_size - int(self.learner.labelled_indices.size)
        cand = getattr(self.learner, "session_candidates", None) if self.sequential else None
        if cand is not None:
            return max(0, int(cand.size) - int(np.isin(cand, self.learner.labelled_indices).sum()))
        return min(self.subset, unlabelled)

    # ------------------------------------------------------------------ picks
    def _strategy_pick(self, is_free: Callable[[int], bool]) -> int | None:
        if self.sequential:
            if self._proposal is None:
                try:
                    self._proposal = int(self.learner.query(1)[0])
                except ValueError:  # this session's subset is all labelled: a new session
                    self.install(
                        self.build(
                            self.learner.model, self.learner.labelled_indices, self.learner.labels
                        ),
                        model_changed=False,
                    )
                    self._proposal = int(self.learner.query(1)[0])
                if self.speculator is not None:
                    self.speculator.queried(self.learner)
            return self._proposal if is_free(self._proposal) else None
        unlabelled = self.pool_size - int(self.learner.labelled_indices.size)
        budget = min(unlabelled, self.subset, 8)
        for index in self.learner.query(budget).tolist():
            if is_free(int(index)):
                return int(index)
        return None

    def _margin_pick(self, is_free: Callable[[int], bool]) -> int | None:
        if self._margin_order is None:
            logits = self.learner.predict_logits(self.x_pool)
            top2 = torch.softmax(logits.double(), dim=1).topk(2, dim=1).values
            self._margin_order = np.argsort((top2[:, 0] - top2[:, 1]).numpy(), kind="stable")
        return next((int(i) for i in self._margin_order if is_free(int(i))), None)

    def _random_pick(self, is_free: Callable[[int], bool]) -> int | None:
        return next((int(i) for i in self.random_order if is_free(int(i))), None)

    def choose(
        self, trained: bool, is_free: Callable[[int], bool]
    ) -> tuple[int | None, str, float]:
        """``(index, why, seconds)``: the next item for a client (``None`` when nothing is free)."""
        t0 = time.perf_counter()
        if trained and self.learner.labelled_indices.size:
            pick = self._strategy_pick(is_free)
            if pick is not None:
                why = (
                    f"look-ahead (sequential {self.strategy_name})"
                    if self.sequential
                    else f"{self.strategy_name} (re-queried)"
                )
                return pick, why, time.perf_counter() - t0
            pick = self._margin_pick(is_free)
            if pick is not None:
                return (
                    pick,
                    (
                        f"smallest margin (the {self.strategy_name} pick is with another "
                        "annotator or skipped)"
                    ),
                    time.perf_counter() - t0,
                )
        pick = self._random_pick(is_free)
        return pick, "random (warm-up)", time.perf_counter() - t0

    def upcoming(self, trained: bool, is_free: Callable[[int], bool], n: int) -> list[int]:
        """Up to ``n`` free items in triage order (smallest margin first once trained, else the
        warm-up order), without choosing through the strategy (that costs a scoring each)."""
        if trained and self.learner.labelled_indices.size:
            self._margin_pick(lambda i: False)  # builds the order
            order = self._margin_order
        else:
            order = self.random_order
        if order is None:  # no order yet: nothing to triage
            return []
        out: list[int] = []
        for i in order:
            if len(out) >= n:
                break
            if is_free(int(i)):
                out.append(int(i))
        return out
