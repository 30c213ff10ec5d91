"""The next pick computed while the annotator looks, under the label the model predicts.

Scoring a large pool after each label takes most of a second (``|pool| = 10 000``: the
sequential session's conditioning and re-scoring), which the annotator would wait for after every
key. But while the annotator looks at item ``i``, the most likely label is known: the network's
prediction ``ŷ``. A *twin* of the learner, in the very same state (same session, same candidates,
same labels in the same order, same seeds), is taught ``(i, ŷ)`` in a background thread and asked
for its next pick. When the label comes and equals ``ŷ``, the twin *is* the learner after that
label, bit for bit: it takes over, and the pick is already there. The former learner becomes the
twin (one label behind: it catches up in the next background round).

When the label differs and the strategy's proposals do not depend on labels (variance reduction,
``auto``: :attr:`~ntkal.strategies.base.SequentialSession.proposals_use_labels` is False), the
twin's pick holds all the same and only its label is wrong: it is relabelled in closed form
(:meth:`~ntkal.learner.ActiveLearner.relabel_last`, ``O(m k)``: Σ does not depend on labels) and
takes over too, so every label finds its next pick ready. For strategies whose proposals read the
labels (MLMOC), a different label conditions the learner the ordinary way and the twin is dropped.

Exactness: the twin repeats the learner's session from its start (the labels it was started on,
the same ``num_queries`` and therefore the same seeds) and then every label observed since, in
order, so its picks equal the learner's; the tests compare whole pick sequences with and without
speculation. Memory: the twin holds a second copy of the session's state (for the dense engine,
``Σ`` over the candidates).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Speculator"]


class Speculator:
    """Keeps a twin of a sequential learner one speculative label ahead.

    ``build(idx, lab, num_queries)`` makes a learner in the lineage of the current one (same
    model, strategy and seed) with labels ``(idx, lab)``, before any query.
    """

    def __init__(self, build: Callable[[np.ndarray, np.ndarray, int], Any]) -> None:
        self._build = build
        self.hits = 0
        self.misses = 0
        self.relabelled = 0  # hits whose guessed label was corrected in closed form
        self.disabled: str | None = None  # why speculation stopped for good, if it did
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()  # the twin's hand-over between the thread and the caller
        self._building = False  # the thread is building a twin from scratch
        self.reset()

    def reset(self) -> None:
        """A new learner (retrain, undo, relabel, import): the twin and its work are void."""
        with self._mutex:
            self._reset()

    def _reset(self) -> None:
        self._generation += 1
        self._base: tuple | None = None  # (session, idx, lab, num_queries) at session start
        self._twin: Any = None
        self._twin_count = 0  # how many of ``_log`` the twin has been taught
        self._log: list[tuple[int, int]] = []
        self._result: tuple | None = None  # (log length, index, label, pick, label-free)
        self._current: tuple | None = None  # (log length, index, label) being speculated

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running speculation (if any) ends; True if none runs now. Called
        before the process exits: torch work in a thread cut off at shutdown aborts it."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.busy

    # ------------------------------------------------------------------ the learner's side
    def queried(self, learner: Any, same_lineage: bool = False) -> None:
        """After the learner's ``query``: note when its sequential session (re)started
        (``same_lineage``: the twin has just taken over, same session history)."""
        session = learner.session
        if self._base is not None and (self._base[0] is session or same_lineage):
            self._base = (session,) + self._base[1:]
            return
        self.reset()
        self._base = (
            session,
            learner.labelled_indices.copy(),
            learner.labels.copy(),
            int(learner.num_queries) - 1,
        )

    def adopt(self, learner: Any, twin: Any) -> None:
        """``twin`` is a copy of ``learner`` in its current state (session started): it needs no
        building and speculation can start with the next item."""
        if learner.session is None:
            return
        with self._mutex:
            self._reset()
            self._base = (
                learner.session,
                learner.labelled_indices.copy(),
                learner.labels.copy(),
                int(learner.num_queries) - 1,
            )
            self._twin, self._twin_count = twin, 0

    def taught(self, index: int, label: int) -> None:
        """The learner was taught ``(index, label)`` the ordinary way."""
        self._log.append((int(index), int(label)))

    # ------------------------------------------------------------------ speculating
    def speculate(self, index: int, label: int) -> None:
        """Start computing the pick after ``(index, label)`` in the background (if idle)."""
        if self._base is None or self.busy or self.disabled:
            return
        self._generation += 1  # a new speculation voids any older one
        self._current = (len(self._log), int(index), int(label))
        self._result = None
        self._thread = threading.Thread(
            target=self._work,
            args=(
                self._generation,
                self._base,
                list(self._log),
                self._twin,
                self._twin_count,
                self._current,
            ),
            name="ntkal-speculate",
            daemon=True,
        )
        self._thread.start()

    def _work(
        self, generation: int, base: tuple, log: list, twin: Any, twin_count: int, current: tuple
    ) -> None:
        """In the thread: bring the twin up to ``log``, teach it the speculative label, pick."""
        count, index, label = current
        try:
            if twin is None:
                _, idx, lab, num_queries = base
                self._building = True
                try:
                    twin = self._build(idx, lab, num_queries)
                    twin.query(1)  # the session starts as the learner's did
                finally:
                    self._building = False
                twin_count = 0
                engines = [
                    type(getattr(x, "lookahead", None)).__name__ for x in (base[0], twin.session)
                ]
                if engines[0] != engines[1]:  # less memory left for the second copy
                    self.disabled = (
                        f"the twin got the {engines[1]} engine, the learner the "
                        f"{engines[0]}: picks could differ, so no speculation"
                    )
                    return
                with self._mutex:  # built: keep it even if this speculation was given up
                    if generation != self._generation:
                        return
                    self._twin, self._twin_count = twin, 0
                    if self._current is not current:
                        return
            for i, y in log[twin_count:count]:
                twin.teach([i], [y])
            session = twin.session
            twin.teach([index], [label])
            pick = int(twin.query(1)[0])
            # The pick holds for any label if the same session made it (a new one would be
            # fitted to the guessed label) and its proposals ignore labels.
            label_free = (
                session is not None
                and twin.session is session
                and not getattr(session, "proposals_use_labels", True)
            )
            with self._mutex:
                if generation == self._generation and self._current is current:
                    self._twin, self._result = twin, (count, index, label, pick, label_free)
                elif generation == self._generation:
                    self._twin = None  # taught a label that did not happen
        except Exception:  # noqa: BLE001 - speculation is an optimisation: fall back, say why
            traceback.print_exc()
            if generation == self._generation:
                self._twin, self._result = None, None

    def take(self, learner: Any, index: int, label: int) -> tuple[Any, int] | None:
        """``(twin, pick)`` if the twin speculated exactly ``(index, label)`` on the learner's
        current state, else None (the caller teaches the learner itself, and the twin, taught
        a label that did not happen, is dropped). On success the former ``learner`` becomes
        the twin, one label behind."""
        if self._base is None or self._thread is None or self._current is None:
            return None
        wanted = (len(self._log), int(index), int(label))
        if self._current[:2] != wanted[:2]:  # another item, or the log moved on
            self._void()
            return None
        with self._mutex:
            if self._building:  # a twin built from scratch takes seconds: do not wait for it,
                self._current = None  # but keep it for the next rounds (it catches up)
                self.misses += 1
                return None
        self._thread.join()  # it is ahead of us: wait for the rest
        result = self._result
        if result is None or result[:2] != wanted[:2]:
            self._void()
            return None
        twin, pick = self._twin, result[3]
        if result[2] != wanted[2]:  # the guess was wrong
            if not result[4]:
                self._void()
                return None
            try:
                twin.relabel_last(int(index), int(label))
            except (ValueError, NotImplementedError):
                self._void()
                return None
            self.relabelled += 1
        self._log.append((int(index), int(label)))
        self._twin, self._twin_count = learner, len(self._log) - 1
        self._result = self._current = None
        self.hits += 1
        return twin, pick

    def _void(self) -> None:
        with self._mutex:
            self.misses += 1
            self._generation += 1  # a running thread's result is dropped
            self._twin, self._result, self._current = None, None, None
