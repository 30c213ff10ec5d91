"""The :class:`ActiveLearner` facade: ask (:meth:`~ActiveLearner.query`) / tell
(:meth:`~ActiveLearner.teach`) / :meth:`~ActiveLearner.fit` over a pool of inputs.

It holds the state an active-learning loop needs between rounds and delegates each concern:
candidate sampling to :mod:`ntkal.learner.candidates`, sequential sessions to
:mod:`ntkal.learner.sequential`, files to :mod:`ntkal.learner.persistence`, input and model checks
to :mod:`ntkal.learner.inputs`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkal.arguments import as_choice, as_int, as_optional_int, is_integer
from ntkal.data.labels import as_class_labels
from ntkal.data.pool import Pool, _as_index_array
from ntkal.learner import persistence
from ntkal.learner.candidates import pool_indices_of, query_seed, sample_candidates
from ntkal.learner.inputs import as_input_tensor, check_finite, check_model_outputs
from ntkal.learner.sequential import SequentialQueries
from ntkal.models.devices import resolve_device
from ntkal.models.forward import predict_logits
from ntkal.strategies.base import QueryContext, SequentialSession, Strategy, check_budget

__all__ = ["ActiveLearner", "MODES"]

#: How queries are made: a batch per call, or one at a time with closed-form conditioning. The
#: one list that configs, the CLI and the learner read.
MODES = ("batch", "sequential")
_PathLike = str | os.PathLike


class ActiveLearner:
    """Pool-based active learning with an ask (:meth:`query`) / tell (:meth:`teach`) interface.

    Parameters
    ----------
    model : nn.Module
        Network returning logits ``(n, num_classes)`` (raw outputs, not probabilities: a
        :class:`~ntkal.learner.inputs.ProbabilityOutputWarning` says so otherwise); trained in
        place by :meth:`fit`.
    strategy : Strategy or str
        An acquisition strategy, or a registry name (see :func:`ntkal.strategies.get_strategy`).
    x_pool : Tensor or ndarray
        All pool inputs, labelled or not, ``(N, ...)``; finite floats.
    y_pool : array of int, optional
        Oracle labels of the whole pool, for simulation; needed for ``query(b > 1)`` in
        sequential mode and as the default labels of ``labelled``.
    labelled : iterable of int
        Pool indices labelled from the start.
    labels : array of int, optional
        Their labels (default: ``y_pool[labelled]``).
    num_classes : int
    train_config : TrainConfig
        Passed to :meth:`Strategy.train`; its ``seed`` is offset by the cycle number so each fit
        shuffles differently yet reproducibly.
    mode : {"batch", "sequential"}
        ``"sequential"``: one-at-a-time queries with closed-form conditioning on each label
        (see :mod:`ntkal.learner.sequential`).
    subset : int, optional
        Score a seeded random subset of this many unlabelled points (``None``: the whole pool);
        unchosen points go back to the pool.
    seed : int
        Seeds the candidate subsets and the strategy's random choices.
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; an unusable one is a clear error.
    progress : bool
        Let training and long strategy computations show progress bars.
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy | str,
        x_pool: Any,
        *,
        y_pool: Any = None,
        labelled: Iterable[int] = (),
        labels: Any = None,
        num_classes: int,
        train_config: Any,
        mode: str = "batch",
        subset: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        """Check every argument here (each error names it), so a bad call fails before any work."""
        self.num_classes = as_int(num_classes, "num_classes", minimum=2)
        self.mode = as_choice(mode, "mode", MODES)
        self.subset = as_optional_int(subset, "subset", minimum=1)
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.progress = bool(progress)
        self.train_config = train_config

        x_pool = as_input_tensor("x_pool", x_pool)
        if x_pool.shape[0] == 0:
            raise ValueError("x_pool is empty: an active learner needs at least one pool point")
        check_finite("x_pool", x_pool)
        self.x_pool = x_pool
        self.y_pool = None
        if y_pool is not None:
            self.y_pool = as_class_labels(
                y_pool,
                self.num_classes,
                name="y_pool",
                expected=x_pool.shape[0],
                against="pool inputs",
            )

        if isinstance(strategy, str):
            from ntkal.strategies import get_strategy

            strategy = get_strategy(strategy)
        if not isinstance(strategy, Strategy):
            raise TypeError(
                f"strategy must be a Strategy or a registry name, got {type(strategy).__name__}"
            )
        self.strategy = strategy

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model.to(self.device)
        check_model_outputs(self.model, self.x_pool, self.num_classes, self.device)

        self.pool = Pool(x_pool.shape[0])
        self._labels = np.full(x_pool.shape[0], -1, dtype=np.int64)
        self.cycle = 0
        self.num_queries = 0
        self._sequential = SequentialQueries()
        idx = _as_index_array(labelled)
        if idx.size:
            if labels is None:
                if self.y_pool is None:
                    raise ValueError(
                        "labelled indices were given without labels and without y_pool"
                    )
                self._check_indices(idx)
                labels = self.y_pool[idx]
            self._record(idx, labels)
        elif labels is not None and len(labels):
            raise ValueError("labels were given without labelled indices")

    # ------------------------------------------------------------------ checks
    def _check_indices(self, idx: np.ndarray) -> None:
        bad = idx[(idx < 0) | (idx >= self.pool.size)]
        if bad.size:
            raise ValueError(
                f"index {int(bad[0])} is out of range for a pool of size {self.pool.size}"
            )

    def _as_labels(self, labels: Any, n: int) -> np.ndarray:
        return as_class_labels(
            labels, self.num_classes, name="labels", expected=n, against="indices"
        )

    def _record(self, indices: Any, labels: Any) -> np.ndarray:
        idx = _as_index_array(indices)
        lab = self._as_labels(labels, idx.shape[0])
        self.pool.label(idx)  # validates range, duplicates and already-labelled; atomic
        self._labels[idx] = lab
        return idx

    # ------------------------------------------------------------------ views
    @property
    def labelled_indices(self) -> np.ndarray:
        """Labelled pool indices, in labelling order."""
        return self.pool.labelled_indices

    @property
    def labels(self) -> np.ndarray:
        """Labels of :attr:`labelled_indices`, in the same order."""
        return self._labels[self.pool.labelled_indices].copy()

    @property
    def unlabelled_indices(self) -> np.ndarray:
        return self.pool.unlabelled_indices

    @property
    def session(self) -> SequentialSession | None:
        """The strategy's current sequential session (``None`` in batch mode or between sessions)."""
        return self._sequential.session

    @property
    def session_candidates(self) -> np.ndarray | None:
        """Sorted pool indices the current sequential session chooses from."""
        return self._sequential.candidates

    def labelled_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the labelled set, ``y`` as int64."""
        idx = self.pool.labelled_indices
        return self.x_pool[torch.from_numpy(idx)], torch.from_numpy(self._labels[idx].copy())

    def __repr__(self) -> str:
        return (
            f"ActiveLearner(strategy={getattr(self.strategy, 'name', '?')!r}, mode={self.mode!r}, "
            f"labelled={self.pool.num_labelled}/{self.pool.size}, cycle={self.cycle})"
        )

    # ------------------------------------------------------------------ ask
    def _context(self, candidates: np.ndarray, seed: int) -> QueryContext:
        x_l, y_l = self.labelled_data()
        batch = getattr(self.train_config, "batch_size", 512) or 512
        return QueryContext(
            model=self.model,
            x_candidates=self.x_pool[torch.from_numpy(candidates)],
            x_labelled=x_l,
            y_labelled=y_l,
            num_classes=self.num_classes,
            seed=seed,
            device=self.device,
            progress=self.progress,
            batch_size=max(int(batch), 512),
        )

    def query(self, budget: int) -> np.ndarray:
        """Pool indices of the next ``budget`` points to label (distinct, all unlabelled).

        Raises
        ------
        ValueError
            ``budget`` < 1 or larger than the unlabelled pool (or the scored subset), or, in
            sequential mode, ``budget > 1`` without oracle labels.
        """
        if not is_integer(budget):
            raise TypeError(f"budget must be an integer, got {type(budget).__name__}")
        budget = int(budget)
        if self.pool.num_unlabelled == 0:
            raise ValueError("every pool point is labelled: nothing left to query")
        check_budget(budget, self.pool.num_unlabelled)
        if self.pool.num_labelled == 0:
            raise ValueError("label at least one point (teach) and fit before querying")
        if self.mode == "sequential":
            if budget > 1 and self.y_pool is None:
                raise ValueError(
                    f"sequential mode chooses one point at a time and conditions on its label: "
                    f"without oracle labels (y_pool), query one at a time: call query(1), then "
                    f"teach its label, {budget} times"
                )
            return self._sequential.query(
                budget, self.pool, self.y_pool, self._start_session, self.strategy.name
            )
        seed = query_seed(self.seed, self.num_queries)
        candidates = sample_candidates(self.pool.unlabelled_indices, self.subset, seed)
        budget = check_budget(budget, candidates.size)
        result = self.strategy.query(self._context(candidates, seed), budget)
        indices = pool_indices_of(candidates, result.indices, budget, self.strategy.name)
        self.num_queries += 1
        self.last_result = result
        return indices

    def _start_session(self, pending: np.ndarray) -> tuple[SequentialSession, np.ndarray]:
        """A new sequential session over a fresh sample of the pool, plus the ``pending`` points."""
        seed = query_seed(self.seed, self.num_queries)
        available = np.setdiff1d(self.pool.unlabelled_indices, pending)
        candidates = np.union1d(sample_candidates(available, self.subset, seed), pending)
        session = self.strategy.begin_sequential(self._context(candidates, seed))
        self.num_queries += 1
        return session, candidates

    # ------------------------------------------------------------------ tell
    def teach(self, indices: Any, labels: Any) -> None:
        """Record ``labels`` for pool ``indices`` (unlabelled, in range, distinct).

        In sequential mode every taught candidate of the current session is conditioned on in
        closed form; a point outside the session's candidates ends the session, and the next
        query starts a new one over the enlarged labelled set (still without SGD).
        Nothing is recorded if any index or label is invalid.
        """
        idx = _as_index_array(indices)
        lab = self._as_labels(labels, idx.shape[0])
        self._check_indices(idx)
        self._record(idx, lab)
        self._sequential.taught(idx, lab)

    def relabel_last(self, index: Any, label: Any) -> None:
        """Change the label of the point taught last (e.g. a guessed label turned out wrong).

        A sequential session that can do so updates its linearised network in closed form
        (:meth:`ntkal.strategies.base.SequentialSession.relabel_last`); otherwise it ends and the
        next query starts a new one over the corrected labels.

        Raises
        ------
        ValueError
            If ``index`` is not the point taught last, or ``label`` is out of range.
        """
        idx = _as_index_array([index])
        lab = self._as_labels([label], 1)
        order = self.labelled_indices
        if order.size == 0 or int(order[-1]) != int(idx[0]):
            raise ValueError(f"pool index {int(idx[0])} is not the point taught last")
        self._labels[idx] = lab
        self._sequential.relabelled(int(idx[0]), int(lab[0]))

    # ------------------------------------------------------------------ train / predict
    def _fit_config(self) -> Any:
        cfg = self.train_config
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            names = {f.name for f in dataclasses.fields(cfg)}
            changes: dict[str, Any] = {}
            seed = getattr(cfg, "seed", None)
            if "seed" in names and seed is not None:
                changes["seed"] = int(seed) + self.cycle
            if "device" in names:
                changes["device"] = str(self.device)
            if changes:
                cfg = dataclasses.replace(cfg, **changes)
        return cfg

    def fit(self) -> Any:
        """Train the model on the labelled set with the strategy's training procedure (warm start),
        and start a new cycle (any sequential session ends). Returns the training result."""
        if self.pool.num_labelled == 0:
            raise ValueError("no labelled points: teach some labels before fit()")
        x, y = self.labelled_data()
        result = self.strategy.train(
            self.model, x, y, self._fit_config(), self.num_classes, progress=self.progress
        )
        self._sequential.reset()
        self.cycle += 1
        return result

    def _logits(self, name: str, x: Any) -> torch.Tensor:
        x = as_input_tensor(name, x)
        check_finite(name, x)
        logits = predict_logits(self.model, x, device=self.device)
        finite = (
            torch.isfinite(logits).all(dim=1) if logits.numel() else torch.ones(0, dtype=torch.bool)
        )
        if not bool(finite.all()):
            raise FloatingPointError(
                f"the model returned NaN or infinite outputs on {int((~finite).sum())} rows of "
                f"{name} (first at row {int(torch.nonzero(~finite)[0, 0])}): its weights have "
                "diverged; retrain with a lower learning rate"
            )
        return logits

    def predict_logits(self, x: Any) -> torch.Tensor:
        """Logits of the model on ``x`` in eval mode (batched, no gradients); every submodule's
        train/eval mode is restored afterwards."""
        return self._logits("x", x)

    def predict(self, x: Any) -> np.ndarray:
        """Most likely class per input."""
        return self._logits("x", x).argmax(dim=1).numpy()

    def score(self, x_test: Any, y_test: Any) -> float:
        """Accuracy on ``(x_test, y_test)``."""
        logits = self._logits("x_test", x_test)
        y = as_class_labels(
            y_test, self.num_classes, name="y_test", expected=logits.shape[0], against="x_test rows"
        )
        if y.size == 0:
            raise ValueError("x_test is empty: accuracy needs at least one test point")
        return float((logits.argmax(dim=1).numpy() == y).mean())

    # ------------------------------------------------------------------ persistence
    def state_dict(self, include_pool: bool = True) -> dict[str, Any]:
        """Everything needed to resume: plain types and tensors only.

        ``include_pool=False`` leaves the pool inputs out (large datasets); :meth:`load` then needs
        them passed back, and checks their shape.
        """
        return persistence.learner_state(self, include_pool=include_pool)

    def save(self, path: _PathLike, *, include_pool: bool = True) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (temporary file + rename).

        A sequential session's closed-form state is not saved: it is rebuilt by the next query
        from the labelled set, which holds every taught label (points returned by a sequential
        ``query(b > 1)`` but not taught yet are not remembered). State a strategy learns outside
        the model (e.g. LL4AL's loss module) is saved only if the strategy has ``state_dict()`` /
        ``load_state_dict()``; otherwise a loaded learner starts that part afresh.
        """
        persistence.save_learner(self, path, include_pool=include_pool)

    @classmethod
    def load(
        cls,
        path: _PathLike,
        *,
        model: nn.Module,
        strategy: Strategy | str | None = None,
        x_pool: Any = None,
        y_pool: Any = None,
        train_config: Any = None,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> ActiveLearner:
        """Rebuild a learner saved by :meth:`save`.

        Parameters
        ----------
        model : nn.Module
            A network of the saved architecture; its weights are replaced by the saved ones.
        strategy : Strategy or str, optional
            Default: rebuilt from the saved name and parameters.
        x_pool, y_pool : optional
            Needed when the file was saved with ``include_pool=False``.
        train_config : TrainConfig, optional
            Default: ``TrainConfig(**saved)``.
        device : optional
            Default: the saved device (an error naming the fix if it is not usable here).

        Raises
        ------
        ValueError
            The file is damaged, truncated, of another format or version, incomplete, or saved
            for another architecture than ``model``; the message names the file and the fix.
        """
        return persistence.restore_learner(
            cls,
            path,
            model=model,
            strategy=strategy,
            x_pool=x_pool,
            y_pool=y_pool,
            train_config=train_config,
            device=device,
            progress=progress,
        )
