"""The labelling session behind ``ntkal label``: the label store, the live look-ahead and retraining.

Every label goes first to the :class:`~ntkal.labelstore.LabelStore` (committed to disk before the
call returns), then conditions the linearised network in closed form through
:class:`~ntkal.learner.ActiveLearner` (``mode="sequential"`` for a look-ahead strategy such as the
default variance reduction or MLMOC; Mohamadi, Bae & Sutherland, NeurIPS 2022, arXiv:2206.12569),
so the next item reflects it without any SGD. The
session scores a seeded random ``subset`` of the unlabelled pool (the reference protocol scores a
subset too); when every point of that subset is labelled, or the weights change, a new subset is
drawn.

Phases:

* **warm-up**: until ``warmup`` labels exist and the model has been trained once, items come in a
  seeded random order (a look-ahead of an untrained network says nothing); reaching ``warmup``
  labels starts a retrain automatically.
* **look-ahead**: the item is the strategy's proposal (see :mod:`ntkal.labelling.picks`). Several
annotators (browser tabs) at
  once: an item handed to one is leased to it for ``lease_seconds`` and not handed to another; when
  the look-ahead pick is leased, another annotator gets the unlabelled point with the smallest
  margin between the network's top two classes (cheap, and still informative).

Retraining runs SGD on a copy of the network in a background thread while labelling goes on; when
it ends, the new weights are saved next to the store, the held-out accuracy (if the dataset has a
labelled test set) goes into the store's learning curve, a new look-ahead session is built in the
background, taught every label given meanwhile, and swapped in.

The concerns live in their own modules: leases and the skipped list
(:mod:`~ntkal.labelling.leases`), the pick order (:mod:`~ntkal.labelling.picks`), renderings and
provenance of items (:mod:`~ntkal.labelling.items`), the retrain thread
(:mod:`~ntkal.labelling.retrain`), strict checks of client input
(:mod:`~ntkal.labelling.validation`); this module ties them to the store.

Restart safety: the store is the only source of truth for labels. A restarted session rebuilds
the learner from it (and the weights from the saved file), so after ``kill -9`` every acknowledged
label is there and the queue continues; leases are in memory and simply vanish.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkal.data.dataset import UNLABELLED, Dataset
from ntkal.labelling.items import ItemView
from ntkal.labelling.leases import Leases
from ntkal.labelling.picks import DEFAULT_STRATEGY, PickPolicy
from ntkal.labelling.queue import ItemQueue, dashboard
from ntkal.labelling.retrain import Retrainer, RetrainStatus, adopt, default_train_config
from ntkal.labelling.validation import LabelConflict, as_client, as_index, as_label
from ntkal.labelstore import LabelStore

__all__ = ["LabellingSession", "LabelConflict", "default_train_config", "DEFAULT_STRATEGY"]


class LabellingSession:
    """One pool, one label store, one network: what the labelling app serves.

    Parameters
    ----------
    dataset : Dataset
        ``x_train`` is the pool. Its known labels are *not* used unless ``use_dataset_labels``
        (for a user's file whose labelled rows should count; for a built-in dataset the labels are
        hidden from the annotator). A labelled test split, if any, gives the learning curve.
    store : LabelStore or path
        Where labels live; created with the pool's size and class count if it does not exist.
    model : nn.Module
        Returns logits ``(n, num_classes)``.
    train_config : TrainConfig, optional
        Default :func:`default_train_config`.
    subset : int
        Unlabelled points the strategy scores.
    warmup : int, optional
        Labels before the first automatic retrain (default ``max(10, num_classes)``).
    lease_seconds : float
        How long an item handed to one annotator is kept from the others.
    weights_path : path, optional
        Where retrained weights are saved and loaded at start (default: beside the store).
    seed : int
    strategy : str
        A registered strategy (default :data:`~ntkal.labelling.picks.DEFAULT_STRATEGY`).
    strategy_params : dict, optional
        Its options (e.g. ``{"kernel": "pseudo"}``).
    source : FileSource, optional
        How the user's file was read (renderings, file names, data rows).
    speculate : bool
        Compute the next pick while the annotator looks, under the predicted label
        (:mod:`ntkal.labelling.speculation`; exact, costs a second copy of the session state).
    """

    def __init__(
        self,
        dataset: Dataset,
        store: LabelStore | str | Path,
        model: nn.Module,
        *,
        train_config: Any = None,
        subset: int = 500,
        warmup: int | None = None,
        lease_seconds: float = 300.0,
        weights_path: str | Path | None = None,
        seed: int = 0,
        use_dataset_labels: bool = False,
        strategy: str = DEFAULT_STRATEGY,
        strategy_params: dict | None = None,
        auto_retrain: bool = True,
        source: Any = None,
        speculate: bool = True,
    ) -> None:
        """Check every argument here (each error names it), so a bad call fails before any work."""
        from ntkal.arguments import as_float, as_int

        subset = as_int(subset, "subset", minimum=1)
        self.dataset = dataset
        self.source = source
        self.classes = tuple(dataset.classes)
        self.num_classes = len(self.classes)
        if self.num_classes < 2:
            raise ValueError("labelling needs at least two classes")
        self.items = ItemView(dataset, source)
        self.x_pool = dataset.x_train
        self.pool_size = self.items.pool_size
        self.store = self._open_store(store)
        self.train_config = train_config if train_config is not None else default_train_config()
        self.subset = subset
        self.warmup = (
            as_int(warmup, "warmup", minimum=1) if warmup is not None else max(10, self.num_classes)
        )
        self.seed = as_int(seed, "seed")
        self.auto_retrain = bool(auto_retrain)
        self.leases = Leases(as_float(lease_seconds, "lease_seconds", minimum=0))
        self.picks = PickPolicy(
            strategy,
            strategy_params,
            self.x_pool,
            self.num_classes,
            self.train_config,
            subset,
            self.seed,
            speculate=speculate,
        )
        self.weights_path = (
            Path(weights_path)
            if weights_path is not None
            else (Path(self.store.path + ".weights.pt") if self.store.path != ":memory:" else None)
        )
        self._lock = threading.RLock()
        self._latencies: deque = deque(maxlen=200)
        self._last_latency: dict | None = None
        self._retrainer = Retrainer(self.train_config, self.num_classes, self.x_pool, dataset)
        self.trained = False
        self.queue = ItemQueue(self)
        if use_dataset_labels:
            known = np.flatnonzero(dataset.y_train.numpy() != UNLABELLED)
            if known.size:
                self.store.import_labels(known, dataset.y_train.numpy()[known], annotator="file")
        if self.weights_path is not None and self.weights_path.is_file():
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model_state"])
            self.trained = True
        self.model = model
        self.picks.install(self.picks.build(model, *self.store.labelled()), model_changed=True)
        if self.auto_retrain and not self.trained and len(self.store) >= self.warmup:
            self.start_retrain()  # e.g. a file with enough labelled rows: no warm-up needed

    def _open_store(self, store: LabelStore | str | Path) -> LabelStore:
        if not isinstance(store, LabelStore):
            store = LabelStore(store, pool_size=self.pool_size, num_classes=self.num_classes)
        if store.pool_size != self.pool_size or store.num_classes != self.num_classes:
            raise ValueError(
                f"label store {store.path} is for a pool of {store.pool_size} points "
                f"and {store.num_classes} classes, this data has {self.pool_size} and "
                f"{self.num_classes}; use another --store"
            )
        return store

    # ------------------------------------------------------------------ views
    @property
    def learner(self):
        """The :class:`~ntkal.learner.ActiveLearner` behind the picks."""
        return self.picks.learner

    @property
    def strategy(self) -> str:
        return self.picks.strategy_name

    @property
    def phase(self) -> str:
        """``"warm-up"`` (random order) or ``"look-ahead"`` (the strategy chooses)."""
        return "look-ahead" if self.trained and self.learner.labelled_indices.size else "warm-up"

    @property
    def kind(self) -> str:
        return self.items.kind

    def row(self, index: int) -> dict:
        return self.items.row(index)

    def image_png(self, index: int, min_size: int = 224) -> bytes:
        return self.items.image_png(index, min_size)

    def original(self, index: int) -> tuple[bytes, str]:
        return self.items.original(index)

    def _reset_learner(self) -> None:
        """A new session over the store's labels (after an undo, a relabel or an import)."""
        self.picks.install(
            self.picks.build(self.model, *self.store.labelled()), model_changed=False
        )

    # ------------------------------------------------------------------ choosing items
    def release(self, index: Any, client: Any = None, *, skip: bool = False) -> bool:
        """See :meth:`ItemQueue.release`."""
        return self.queue.release(index, client, skip=skip)

    def next_item(self, client: Any = "default") -> dict:
        """See :meth:`ItemQueue.next_item`."""
        return self.queue.next_item(client)

    def open_item(self, index: Any, client: Any = "default") -> dict:
        """See :meth:`ItemQueue.open_item`."""
        return self.queue.open_item(index, client)

    def skipped(self) -> list[dict]:
        return self.queue.skipped()

    def grid(self, n: Any, client: Any = "default") -> list[dict]:
        """See :meth:`ItemQueue.grid`."""
        return self.queue.grid(n, client)

    def describe(self, index: int, source: str = "") -> dict:
        return self.queue.describe(index, source)

    # ------------------------------------------------------------------ labels
    def add_label(self, index: Any, label: Any, client: Any = "default") -> dict:
        """Store one label (durably), condition the look-ahead on it, and get ``client``'s next
        item. A repeated label for an already labelled point is acknowledged again (idempotent);
        a *different* label for it raises :class:`LabelConflict` (change it with
        :meth:`relabel`).

        Returns ``{"index", "label", "duplicate", "latency", "next"}``; ``latency`` holds the
        milliseconds spent storing, conditioning, choosing the next item, and in total.
        """
        index = as_index(index, self.pool_size)
        value = as_label(label, self.classes)
        client = as_client(client)
        with self._lock:
            t0 = time.perf_counter()
            stored = self.store.label_of(index)
            if stored is not None:
                if stored != value:
                    raise LabelConflict(
                        f"item {index} is already labelled {self.classes[stored]!r}"
                        "; change it from the history instead"
                    )
                self.leases.release(index, client)
                return {
                    "index": index,
                    "label": value,
                    "duplicate": True,
                    "latency": None,
                    "next": self.next_item(client),
                }
            self.store.add([index], [value], annotator=client)  # on disk from here on
            t1 = time.perf_counter()
            self.leases.drop(index)
            self.leases.unskip(index)
            speculated = self.picks.teach(index, value)  # closed-form conditioning
            t2 = time.perf_counter()
            nxt = self.next_item(client)  # the next query, reflecting it
            t3 = time.perf_counter()
            latency = {
                "store_ms": 1000 * (t1 - t0),
                "condition_ms": 1000 * (t2 - t1),
                "next_ms": 1000 * (t3 - t2),
                "total_ms": 1000 * (t3 - t0),
                "phase": self.phase,
                "speculated": speculated,
            }
            self._latencies.append(latency)
            self._last_latency = latency
            start = (
                self.auto_retrain
                and not self.trained
                and self._retrainer.status.state == "idle"
                and self.learner.labelled_indices.size >= self.warmup
            )
        if start:
            self.start_retrain()
        return {"index": index, "label": value, "duplicate": False, "latency": latency, "next": nxt}

    def relabel(self, index: Any, label: Any, client: Any = "default") -> dict:
        """Change the label of an already labelled item (a new event in the store); the
        look-ahead is conditioned anew on the corrected labels. Returns ``{"index", "label",
        "previous", "next"}`` (``next``: ``client``'s item after the change)."""
        index = as_index(index, self.pool_size)
        value = as_label(label, self.classes)
        client = as_client(client)
        with self._lock:
            previous = self.store.label_of(index)
            if previous is None:
                raise ValueError(f"item {index} has no label yet: label it instead")
            if previous != value:
                self.store.relabel(index, value, annotator=client)
                self._reset_learner()
                held = self.leases.held(client)
                if held is not None:  # its pick came from the labels as they were
                    self.leases.release(held, client)
            return {
                "index": index,
                "label": value,
                "previous": previous,
                "changed": previous != value,
                "next": self.next_item(client),
            }

    def history(self, limit: Any = 50) -> list[dict]:
        """The most recent labels, newest first, with class names and provenance."""
        from ntkal.arguments import as_int

        limit = as_int(limit, "limit", minimum=1, maximum=1000)
        rows = self.store.recent(limit)
        for row in rows:
            row["class"] = self.classes[row["label"]]
            row.update(self.items.origin(row["index"]))
        return rows

    def undo(self, client: Any = None) -> dict:
        """Remove the most recent label (``client``'s own if given) and rebuild the look-ahead
        session without it; the item goes back to ``client`` (to nobody when no client is
        named: it is simply unlabelled again)."""
        client = None if client in (None, "") else as_client(client)
        with self._lock:
            undone = self.store.undo_last(annotator=client)
            if undone is None:
                return {
                    "undone": None,
                    "next": self.next_item(client) if client is not None else None,
                }
            self._reset_learner()
            index, label = undone
            if client is not None:
                self.leases.lease(index, client)
            return {
                "undone": {"index": index, "label": label, "class": self.classes[label]},
                "next": self.describe(index, source="undone"),
            }

    def import_labels(self, indices: Sequence[Any], labels: Sequence[Any]) -> dict:
        """Add labels from elsewhere (all or nothing); the look-ahead session is rebuilt."""
        idx = [
            as_index(i, self.pool_size, f"import row {n} index", text=True)
            for n, i in enumerate(indices, start=1)
        ]
        values = [
            as_label(y, self.classes, f"import row {n} label")
            for n, y in enumerate(labels, start=1)
        ]
        with self._lock:
            result = self.store.import_labels(idx, values, annotator="import")
            if result["added"]:
                self._reset_learner()
            return result

    def export(self, format: str) -> str:
        """The labels as CSV or JSON text, each with the file or data row it came from."""
        from ntkal.arguments import as_choice

        format = as_choice(format, "format", ("csv", "json"))
        origin = self.items.origin if (self.items.files or self.items.rows) else None
        if format == "csv":
            return self.store.export_csv(self.classes, origin)
        return self.store.export_json(self.classes, origin)

    # ------------------------------------------------------------------ retraining
    @property
    def retraining(self) -> bool:
        return self._retrainer.running

    @property
    def _retrain(self) -> RetrainStatus:
        return self._retrainer.status

    def start_retrain(self) -> bool:
        """Start SGD on a copy of the network in a background thread; False if one is running or
        there are no labels."""
        with self._lock:
            if self.retraining or self.learner.labelled_indices.size == 0:
                return False
            idx, lab = self.store.labelled()
            return self._retrainer.start(copy.deepcopy(self.model), idx, lab, self._adopt)

    def wait_for_retrain(self, timeout: float | None = None) -> bool:
        """Block until a running retrain has finished; True if none is running now."""
        return self._retrainer.wait(timeout)

    def close(self, timeout: float | None = 60.0) -> bool:
        """Let the background work (speculation, retrain) finish, then close the store; True if
        nothing was still running. A server calls it on shutdown, so the process never exits
        with torch work in a thread (which aborts it)."""
        spec = self.picks.speculator
        idle = spec.wait(timeout) if spec is not None else True
        idle = self.wait_for_retrain(timeout) and idle
        self.store.close()
        return idle

    def _adopt(
        self, model: nn.Module, idx: np.ndarray, lab: np.ndarray, status: RetrainStatus
    ) -> None:
        """See :func:`ntkal.labelling.retrain.adopt`."""
        adopt(self, model, idx, lab, status)

    # ------------------------------------------------------------------ dashboard
    def stats(self) -> dict:
        """Counts, phase, strategy, latencies, retraining progress and the learning curve."""
        with self._lock:
            return dashboard(self)
