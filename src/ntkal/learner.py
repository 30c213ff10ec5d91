"""Ask/tell active learning over a pool of unlabelled inputs.

:class:`ActiveLearner` keeps the state an active-learning loop needs between rounds (which pool
points are labelled, with which labels, the trained network, the strategy and the cycle counter) so
that a user labelling their own data, and the experiment runner simulating an oracle, drive the
same object::

    learner = ActiveLearner(model, "mlmoc", x_pool, num_classes=10, train_config=cfg,
                            labelled=init, labels=init_labels)
    learner.fit()
    idx = learner.query(10)          # pool indices to label
    learner.teach(idx, oracle(idx))  # record the labels
    learner.fit()                    # SGD on the enlarged labelled set (warm start)

In ``mode="sequential"`` a look-ahead strategy proposes one point at a time and conditions on each
taught label in closed form (no SGD) until the next :meth:`ActiveLearner.fit`.
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch
from torch import nn

from ntkal.atomic_files import atomic_torch_save
from ntkal.data.pool import Pool, _as_index_array
from ntkal.strategies.base import QueryContext, SequentialSession, Strategy, check_budget

__all__ = ["ActiveLearner", "MODES"]

MODES = ("batch", "sequential")
_FORMAT = "ntkal.ActiveLearner"
_FORMAT_VERSION = 1
_PathLike = Union[str, os.PathLike]


def _as_tensor(name: str, x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a leading batch dimension, got a scalar")
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()
    elif not x.is_floating_point():
        raise TypeError(f"{name} must hold floating-point inputs, got dtype {x.dtype}")
    return x


def _check_finite(name: str, x: torch.Tensor) -> None:
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"{name} contains NaN or infinite values (first at row {bad}); "
                         "clean or impute the inputs before active learning")


def _as_labels(labels: Any, num_classes: int, n: int) -> np.ndarray:
    """Labels as int64 in ``[0, num_classes)``, refusing floats and bools."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, numbers.Integral) and not isinstance(labels, (bool, np.bool_)):
        labels = [labels]
    arr = np.asarray(labels)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"labels must be integer class indices, got dtype {arr.dtype}")
    if arr.shape[0] != n:
        raise ValueError(f"got {n} indices but {arr.shape[0]} labels; they must match one to one")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is out of range: labels must lie in "
                         f"[0, {num_classes}) for num_classes={num_classes}")
    return arr


def _is_plain(value: Any) -> bool:
    """Whether ``value`` survives ``torch.load(weights_only=True)`` (and JSON) unchanged in kind."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def strategy_params(strategy: Strategy) -> dict[str, Any]:
    """The public constructor state of ``strategy`` (its attributes not starting with ``_``)."""
    return {k: v for k, v in vars(strategy).items() if not k.startswith("_")}


class ActiveLearner:
    """Pool-based active learning with an ask (:meth:`query`) / tell (:meth:`teach`) interface.

    Parameters
    ----------
    model : nn.Module
        Network returning logits ``(n, num_classes)``; trained in place by :meth:`fit`.
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
        ``"sequential"``: one-at-a-time queries with closed-form conditioning on each label.
    subset : int, optional
        Score a seeded random subset of this many unlabelled points (``None``: the whole pool);
        unchosen points go back to the pool.
    seed : int
        Seeds the candidate subsets and the strategy's random choices.
    device : str or torch.device
    progress : bool
        Let training and long strategy computations show progress bars.
    """

    def __init__(self, model: nn.Module, strategy: Union[Strategy, str], x_pool: Any, *,
                 y_pool: Any = None, labelled: Iterable[int] = (), labels: Any = None,
                 num_classes: int, train_config: Any, mode: str = "batch",
                 subset: Optional[int] = None, seed: int = 0,
                 device: Union[str, torch.device] = "cpu", progress: bool = False) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
                or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = int(num_classes)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        if subset is not None and (isinstance(subset, bool) or not isinstance(subset, numbers.Integral)
                                   or subset < 1):
            raise ValueError(f"subset must be a positive integer or None, got {subset!r}")
        self.subset = None if subset is None else int(subset)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.progress = bool(progress)
        self.train_config = train_config

        x_pool = _as_tensor("x_pool", x_pool)
        if x_pool.shape[0] == 0:
            raise ValueError("x_pool is empty: an active learner needs at least one pool point")
        _check_finite("x_pool", x_pool)
        self.x_pool = x_pool
        self.y_pool = None
        if y_pool is not None:
            self.y_pool = _as_labels(y_pool, self.num_classes, x_pool.shape[0])

        if isinstance(strategy, str):
            from ntkal.strategies import get_strategy

            strategy = get_strategy(strategy)
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a Strategy or a registry name, got {type(strategy).__name__}")
        self.strategy = strategy

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model.to(self.device)
        self._check_model()

        self.pool = Pool(x_pool.shape[0])
        self._labels = np.full(x_pool.shape[0], -1, dtype=np.int64)
        self.cycle = 0
        self.num_queries = 0
        self._session: Optional[SequentialSession] = None
        self._session_candidates: Optional[np.ndarray] = None
        self._observed: dict[int, int] = {}  # pool index -> label the session is conditioned on
        idx = _as_index_array(labelled)
        if idx.size:
            if labels is None:
                if self.y_pool is None:
                    raise ValueError("labelled indices were given without labels and without y_pool")
                self._check_indices(idx)
                labels = self.y_pool[idx]
            self._record(idx, labels)
        elif labels is not None and len(labels):
            raise ValueError("labels were given without labelled indices")

    # ------------------------------------------------------------------ checks
    def _check_model(self) -> None:
        """One tiny forward pass, so a wrong head fails here and not deep inside a strategy."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(self.x_pool[:2].to(self.device))
        except Exception as err:
            raise ValueError(f"the model failed on a batch of pool inputs of shape "
                             f"{tuple(self.x_pool[:2].shape)}: {err}") from err
        finally:
            self.model.train(was_training)
        n = min(2, self.x_pool.shape[0])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, self.num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model must return logits of shape (n, num_classes) = "
                             f"(n, {self.num_classes}); got {shape} for n={n}")

    def _check_indices(self, idx: np.ndarray) -> None:
        bad = idx[(idx < 0) | (idx >= self.pool.size)]
        if bad.size:
            raise ValueError(f"index {int(bad[0])} is out of range for a pool of size {self.pool.size}")

    def _record(self, indices: Any, labels: Any) -> np.ndarray:
        idx = _as_index_array(indices)
        lab = _as_labels(labels, self.num_classes, idx.shape[0])
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

    def labelled_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the labelled set, ``y`` as int64."""
        idx = self.pool.labelled_indices
        return self.x_pool[torch.from_numpy(idx)], torch.from_numpy(self._labels[idx].copy())

    def __repr__(self) -> str:
        return (f"ActiveLearner(strategy={getattr(self.strategy, 'name', '?')!r}, mode={self.mode!r}, "
                f"labelled={self.pool.num_labelled}/{self.pool.size}, cycle={self.cycle})")

    # ------------------------------------------------------------------ ask
    def _query_seed(self) -> int:
        """A fresh, reproducible seed per query: depends only on (seed, number of queries so far)."""
        return int(np.random.default_rng([self.seed, self.num_queries]).integers(2**31 - 1))

    def _candidates(self, seed: int) -> np.ndarray:
        unlabelled = self.pool.unlabelled_indices
        if unlabelled.size == 0:
            raise ValueError("every pool point is labelled: nothing left to query")
        if self.subset is not None and self.subset < unlabelled.size:
            rng = np.random.default_rng([seed, 1])
            unlabelled = np.sort(rng.choice(unlabelled, size=self.subset, replace=False))
        return unlabelled

    def _context(self, candidates: np.ndarray, seed: int) -> QueryContext:
        x_l, y_l = self.labelled_data()
        batch = getattr(self.train_config, "batch_size", 512) or 512
        return QueryContext(model=self.model, x_candidates=self.x_pool[torch.from_numpy(candidates)],
                            x_labelled=x_l, y_labelled=y_l, num_classes=self.num_classes,
                            seed=seed, device=self.device, progress=self.progress,
                            batch_size=max(int(batch), 512))

    def query(self, budget: int) -> np.ndarray:
        """Pool indices of the next ``budget`` points to label (distinct, all unlabelled).

        Raises
        ------
        ValueError
            ``budget`` < 1 or larger than the unlabelled pool (or the scored subset), or, in
            sequential mode, ``budget > 1`` without oracle labels.
        """
        if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
            raise TypeError(f"budget must be an integer, got {type(budget).__name__}")
        check_budget(int(budget), self.pool.num_unlabelled)
        if self.mode == "sequential":
            return self._query_sequential(int(budget))
        seed = self._query_seed()
        candidates = self._candidates(seed)
        budget = check_budget(int(budget), candidates.size)
        if self.pool.num_labelled == 0:
            raise ValueError("label at least one point (teach) and fit before querying")
        result = self.strategy.query(self._context(candidates, seed), budget)
        positions = np.asarray(result.indices, dtype=np.int64).reshape(-1)
        if positions.size != budget or np.unique(positions).size != budget \
                or positions.min() < 0 or positions.max() >= candidates.size:
            raise RuntimeError(f"strategy {self.strategy.name!r} broke the query contract: expected "
                               f"{budget} distinct positions in [0, {candidates.size}), got {positions}")
        self.num_queries += 1
        self.last_result = result
        return candidates[positions]

    def _begin_session(self) -> None:
        if self.pool.num_labelled == 0:
            raise ValueError("label at least one point (teach) and fit before querying")
        seed = self._query_seed()
        candidates = self._candidates(seed)
        self._session = self.strategy.begin_sequential(self._context(candidates, seed))
        self._session_candidates = candidates
        self._observed = {}
        self.num_queries += 1

    def _position(self, index: int) -> Optional[int]:
        cand = self._session_candidates
        if cand is None:
            return None
        pos = int(np.searchsorted(cand, index))
        return pos if pos < cand.size and cand[pos] == index else None

    def _query_sequential(self, budget: int) -> np.ndarray:
        if budget > 1 and self.y_pool is None:
            raise ValueError(
                f"sequential mode chooses one point at a time and conditions on its label: without "
                f"oracle labels (y_pool), query one at a time: call query(1), then teach its label, "
                f"{budget} times")
        if self._session is None:
            self._begin_session()
        remaining = self._session_candidates.size - len(self._observed)
        check_budget(budget, remaining)
        chosen = []
        for step in range(budget):
            position, _ = self._session.propose()
            index = int(self._session_candidates[position])
            if budget > 1:
                label = int(self.y_pool[index])
                self._session.observe(position, label)
                self._observed[index] = label
            chosen.append(index)
        return np.asarray(chosen, dtype=np.int64)

    # ------------------------------------------------------------------ tell
    def teach(self, indices: Any, labels: Any) -> None:
        """Record ``labels`` for pool ``indices`` (unlabelled, in range, distinct).

        In sequential mode every taught candidate of the current session is conditioned on in
        closed form; a point outside the session's candidates ends the session, and the next
        query starts a new one over the enlarged labelled set (still without SGD).
        Nothing is recorded if any index or label is invalid.
        """
        idx = _as_index_array(indices)
        lab = _as_labels(labels, self.num_classes, idx.shape[0])
        self._check_indices(idx)
        self._record(idx, lab)
        if self._session is None:
            return
        for i, y in zip(idx.tolist(), lab.tolist()):
            if i in self._observed:
                if self._observed.pop(i) != y:  # conditioned on an oracle label that was overruled
                    self._end_session()
                    return
                continue
            pos = self._position(i)
            if pos is None:
                self._end_session()
                return
            self._session.observe(pos, y)

    def _end_session(self) -> None:
        self._session = None
        self._session_candidates = None
        self._observed = {}

    # ------------------------------------------------------------------ train / predict
    def _fit_config(self) -> Any:
        cfg = self.train_config
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            names = {f.name for f in dataclasses.fields(cfg)}
            changes = {}
            if "seed" in names and getattr(cfg, "seed") is not None:
                changes["seed"] = int(cfg.seed) + self.cycle
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
        result = self.strategy.train(self.model, x, y, self._fit_config(), self.num_classes,
                                     progress=self.progress)
        self._end_session()
        self.cycle += 1
        return result

    def predict_logits(self, x: Any) -> torch.Tensor:
        """Logits of the model on ``x`` in eval mode (batched, no gradients); the model's mode is
        restored afterwards."""
        x = _as_tensor("x", x)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return torch.cat([self.model(x[i:i + 1024].to(self.device)).cpu()
                                  for i in range(0, x.shape[0], 1024)])
        finally:
            self.model.train(was_training)

    def predict(self, x: Any) -> np.ndarray:
        """Most likely class per input."""
        return self.predict_logits(x).argmax(dim=1).cpu().numpy()

    def score(self, x_test: Any, y_test: Any) -> float:
        """Accuracy on ``(x_test, y_test)``."""
        x_test = _as_tensor("x_test", x_test)
        y = _as_labels(y_test, self.num_classes, x_test.shape[0])
        return float((self.predict(x_test) == y).mean())

    # ------------------------------------------------------------------ persistence
    def state_dict(self, include_pool: bool = True) -> dict[str, Any]:
        """Everything needed to resume: plain types and tensors only.

        ``include_pool=False`` leaves the pool inputs out (large datasets); :meth:`load` then needs
        them passed back, and checks their shape.
        """
        cfg = self.train_config
        cfg_dict = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None
        params = strategy_params(self.strategy)
        return {
            "format": _FORMAT, "version": _FORMAT_VERSION,
            "pool": self.pool.state_dict(),
            "labels": self.labels.tolist(),
            "num_classes": self.num_classes, "mode": self.mode, "subset": self.subset,
            "seed": self.seed, "device": str(self.device),
            "cycle": self.cycle, "num_queries": self.num_queries,
            "train_config": cfg_dict if cfg_dict is not None and _is_plain(cfg_dict) else None,
            "strategy": {"name": self.strategy.name,
                         "params": params if _is_plain(params) else None},
            "strategy_state": (self.strategy.state_dict()
                               if callable(getattr(self.strategy, "state_dict", None)) else None),
            "model_state": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "pool_shape": list(self.x_pool.shape),
            "x_pool": self.x_pool.clone() if include_pool else None,
            "y_pool": self.y_pool.tolist() if include_pool and self.y_pool is not None else None,
        }

    def save(self, path: _PathLike, *, include_pool: bool = True) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (temporary file + rename).

        A sequential session's closed-form state is not saved: it is rebuilt by the next query
        from the labelled set, which holds every taught label. State a strategy learns outside the
        model (e.g. LL4AL's loss module) is saved only if the strategy has ``state_dict()`` /
        ``load_state_dict()``; otherwise a loaded learner starts that part afresh.
        """
        atomic_torch_save(self.state_dict(include_pool=include_pool), path)

    @classmethod
    def load(cls, path: _PathLike, *, model: nn.Module, strategy: Union[Strategy, str, None] = None,
             x_pool: Any = None, y_pool: Any = None, train_config: Any = None,
             device: Union[str, torch.device, None] = None, progress: bool = False
             ) -> "ActiveLearner":
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
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise ValueError(f"{path} is not a readable ActiveLearner file: {err}") from err
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an ActiveLearner file")
        if state.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path} has format version {state.get('version')!r}; "
                             f"this ntkal reads version {_FORMAT_VERSION}")
        if x_pool is None:
            x_pool = state["x_pool"]
            if x_pool is None:
                raise ValueError(f"{path} was saved without the pool inputs: pass x_pool=")
        x_pool = _as_tensor("x_pool", x_pool)
        if list(x_pool.shape) != list(state["pool_shape"]):
            raise ValueError(f"x_pool has shape {tuple(x_pool.shape)} but the saved learner's pool "
                             f"had shape {tuple(state['pool_shape'])}")
        if y_pool is None:
            y_pool = state["y_pool"]
        if strategy is None:
            spec = state["strategy"]
            if spec["params"] is None:
                raise ValueError(f"the saved strategy {spec['name']!r} has parameters that cannot be "
                                 "stored as plain values: pass strategy=")
            from ntkal.strategies import get_strategy

            strategy = get_strategy(spec["name"], **spec["params"])
        if train_config is None:
            if state["train_config"] is None:
                raise ValueError("the saved train config is not a plain dataclass: pass train_config=")
            from ntkal.training import TrainConfig

            train_config = TrainConfig(**state["train_config"])
        model.load_state_dict(state["model_state"])
        pool = Pool.from_state_dict(state["pool"])
        learner = cls(model, strategy, x_pool, y_pool=y_pool, labelled=pool.labelled_indices,
                      labels=np.asarray(state["labels"], dtype=np.int64),
                      num_classes=state["num_classes"], train_config=train_config,
                      mode=state["mode"], subset=state["subset"], seed=state["seed"],
                      device=device if device is not None else state["device"], progress=progress)
        if state.get("strategy_state") is not None and \
                callable(getattr(learner.strategy, "load_state_dict", None)):
            learner.strategy.load_state_dict(state["strategy_state"])
        learner.cycle = int(state["cycle"])
        learner.num_queries = int(state["num_queries"])
        return learner
