"""Sequential mode: one point at a time, each label conditioned on in closed form (no SGD).

A *session* is a strategy's :class:`~ntkal.strategies.base.SequentialSession` over one set of
candidates. :class:`SequentialQueries` keeps it in step with the learner's labels:

- every candidate that gets a label, taught by the user (:meth:`SequentialQueries.taught`) or
  observed with an oracle label inside ``query(b > 1)``, is used up;
- a point returned by ``query(b > 1)`` but not taught yet is *pending*: it is never proposed again,
  and a new session is conditioned on its oracle label;
- when a session's candidates are used up, the next proposal comes from a new session over the
  rest of the pool (conditioned on the pending points), so the user is never stranded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ntkal.data.pool import Pool
from ntkal.strategies.base import SequentialSession, check_budget

__all__ = ["SequentialQueries", "SessionStarter"]

#: ``start(pending) -> (session, candidates)``: begin a session whose sorted candidate pool
#: indices include every ``pending`` index.
SessionStarter = Callable[[np.ndarray], "tuple[SequentialSession, np.ndarray]"]


class SequentialQueries:
    """The current session, its candidates and the pending oracle labels of a learner."""

    def __init__(self) -> None:
        self.session: SequentialSession | None = None
        self.candidates: np.ndarray | None = None  # sorted pool indices
        self.pending: dict[int, int] = {}  # pool index -> oracle label, returned but not taught

    # ------------------------------------------------------------------ bookkeeping
    def position(self, index: int) -> int | None:
        """Position of pool ``index`` among the session's candidates (``None``: not one)."""
        cand = self.candidates
        if cand is None:
            return None
        pos = int(np.searchsorted(cand, index))
        return pos if pos < cand.size and cand[pos] == index else None

    def available(self, pool: Pool) -> int:
        """Unlabelled pool points that may still be proposed (not pending)."""
        return pool.num_unlabelled - len(self.pending)

    def remaining(self, pool: Pool) -> int:
        """Session candidates neither labelled nor pending."""
        if self.candidates is None:
            return 0
        labelled = np.zeros(pool.size, dtype=bool)
        labelled[pool.labelled_indices] = True
        used = labelled[self.candidates] | np.isin(self.candidates, list(self.pending))
        return int((~used).sum())

    def end(self) -> None:
        """Drop the session (the pending labels stay: a new session is conditioned on them)."""
        self.session = None
        self.candidates = None

    def reset(self) -> None:
        """Drop the session and the pending labels (after SGD, a new cycle starts afresh)."""
        self.end()
        self.pending = {}

    def _start(self, start: SessionStarter) -> tuple[SequentialSession, np.ndarray]:
        pending = np.asarray(sorted(self.pending), dtype=np.int64)
        session, candidates = start(pending)
        cand = np.asarray(candidates, dtype=np.int64)
        self.session, self.candidates = session, cand
        for index in pending.tolist():
            position = self.position(index)
            if position is None:
                raise RuntimeError(f"the new session's candidates lack pending pool index {index}")
            session.observe(position, self.pending[index])
        return session, cand

    # ------------------------------------------------------------------ ask / tell
    def query(
        self,
        budget: int,
        pool: Pool,
        oracle: np.ndarray | None,
        start: SessionStarter,
        strategy: str,
    ) -> np.ndarray:
        """Pool indices of the next ``budget`` points, one session proposal at a time.

        With ``budget > 1`` each proposal is observed with its ``oracle`` label before the next
        one. If anything fails part-way, nothing stays conditioned on a point that was not
        returned (the session is dropped and the next query starts a new one).
        """
        if pool.num_unlabelled == 0:
            raise ValueError("every pool point is labelled: nothing left to query")
        if self.available(pool) == 0:
            raise ValueError(
                f"every unlabelled pool point has been returned by a query and is "
                f"waiting for its label: teach the {len(self.pending)} pending "
                f"points {sorted(self.pending)} (or call fit())"
            )
        check_budget(budget, self.available(pool))
        chosen: list[int] = []
        try:
            for _ in range(budget):
                session, candidates = self.session, self.candidates
                if session is None or candidates is None or self.remaining(pool) == 0:
                    session, candidates = self._start(start)
                proposed, _ = session.propose()
                position = int(proposed)
                if not 0 <= position < candidates.size:
                    raise RuntimeError(
                        f"strategy {strategy!r} proposed position {position}, "
                        f"outside its {candidates.size} candidates"
                    )
                index = int(candidates[position])
                if index in self.pending or index in chosen or pool.is_labelled(index):
                    raise RuntimeError(
                        f"strategy {strategy!r} proposed pool index {index}, which "
                        "is already labelled or awaiting its label"
                    )
                if budget > 1:
                    if oracle is None:
                        raise ValueError("a query of more than one point needs oracle labels")
                    label = int(oracle[index])
                    session.observe(position, label)
                    self.pending[index] = label
                chosen.append(index)
        except BaseException:
            for index in chosen:
                self.pending.pop(index, None)
            self.end()
            raise
        return np.asarray(chosen, dtype=np.int64)

    def taught(self, indices: np.ndarray, labels: np.ndarray) -> None:
        """Condition the session on labels just recorded in the pool.

        A pending point taught its oracle label is already conditioned on; one taught another
        label, or a point outside the session's candidates, ends the session (the next query
        starts one over the enlarged labelled set, still without SGD).
        """
        fresh = []
        overruled = False
        for index, label in zip(indices.tolist(), labels.tolist()):
            if index in self.pending:
                overruled |= self.pending.pop(index) != label
            else:
                fresh.append((index, label))
        if self.session is None:
            return
        if overruled:
            self.end()
            return
        for index, label in fresh:
            position = self.position(index)
            if position is None:
                self.end()
                return
            self.session.observe(position, label)

    def relabelled(self, index: int, label: int) -> None:
        """The point taught last, pool ``index``, has ``label`` instead: the session relabels it
        in closed form if it can, else it ends."""
        if self.session is None:
            return
        position = self.position(index)
        if position is None:
            self.end()
            return
        try:
            self.session.relabel_last(position, label)
        except (NotImplementedError, ValueError):
            self.end()
