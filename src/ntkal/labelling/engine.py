"""The labelling session behind ``ntkal label``: the label store, the live look-ahead and retraining.

Every label goes first to the :class:`~ntkal.labelstore.LabelStore` (committed to disk before the
call returns), then conditions the linearised network in closed form through
:class:`~ntkal.learner.ActiveLearner` in ``mode="sequential"`` with MLMOC (Mohamadi, Bae &
Sutherland, NeurIPS 2022, arXiv:2206.12569), so the next item reflects it without any SGD. The
session scores a seeded random ``subset`` of the unlabelled pool (the reference protocol scores a
subset too); when every point of that subset is labelled, or the weights change, a new subset is
drawn.

Phases:

* **warm-up**: until ``warmup`` labels exist and the model has been trained once, items come in a
  seeded random order (a look-ahead of an untrained network says nothing); reaching ``warmup``
  labels starts a retrain automatically.
* **look-ahead**: the item is sequential MLMOC's proposal. Several annotators (browser tabs) at
  once: an item handed to one is leased to it for ``lease_seconds`` and not handed to another; when
  the look-ahead pick is leased, another annotator gets the unlabelled point with the smallest
  margin between the network's top two classes (cheap, and still informative).

Retraining runs SGD on a copy of the network in a background thread while labelling goes on; when
it ends, the new weights are saved next to the store, the held-out accuracy (if the dataset has a
labelled test set) goes into the store's learning curve, a new look-ahead session is built in the
background, taught every label given meanwhile, and swapped in.

Restart safety: the store is the only source of truth for labels. A restarted session rebuilds
the learner from it (and the weights from the saved file), so after ``kill -9`` every acknowledged
label is there and the queue continues; leases are in memory and simply vanish.
"""
from __future__ import annotations

import copy
import dataclasses
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ntkal.atomic_files import atomic_torch_save
from ntkal.data.dataset import UNLABELLED, Dataset
from ntkal.labelstore import LabelStore

__all__ = ["LabellingSession", "LabelConflict", "default_train_config"]


class LabelConflict(ValueError):
    """A label for a pool point that already has a different label."""


def default_train_config(epochs: int = 30):
    """What the retrain button runs: SGD with momentum on MSE at a constant rate of 0.1, the
    gradient norm clipped at 5 (without it, an MLP on 3x12x12 images diverged in the first epoch;
    at MSE's default rate 0.5 it still ended at chance on its training set, which ``train`` now
    reports as divergence),
    ``min_steps`` so that early retrains on a few labels still take enough steps. The epochs run
    in at most 20 calls so that progress can be shown."""
    from ntkal.training import TrainConfig

    return TrainConfig(epochs=int(epochs), batch_size=32, lr=0.1, momentum=0.9,
                       weight_decay=5e-4, schedule="constant", loss="mse", seed=0, min_steps=300,
                       grad_clip=5.0)


@dataclasses.dataclass
class _RetrainStatus:
    state: str = "idle"            # idle | training | preparing | done | failed
    epoch: int = 0
    epochs: int = 0
    labels: int = 0
    started: Optional[float] = None
    finished: Optional[float] = None
    seconds: Optional[float] = None
    accuracy: Optional[float] = None
    error: Optional[str] = None


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
        Unlabelled points the look-ahead session scores.
    warmup : int, optional
        Labels before the first automatic retrain (default ``max(10, num_classes)``).
    lease_seconds : float
        How long an item handed to one annotator is kept from the others.
    weights_path : path, optional
        Where retrained weights are saved and loaded at start (default: beside the store).
    seed : int
    strategy_params : dict, optional
        Options for :class:`ntkal.strategies.lookahead.MLMOC` (e.g. ``{"kernel": "pseudo"}``).
    """

    def __init__(self, dataset: Dataset, store: Union[LabelStore, str, Path], model: nn.Module, *,
                 train_config: Any = None, subset: int = 500, warmup: Optional[int] = None,
                 lease_seconds: float = 300.0, weights_path: Union[str, Path, None] = None,
                 seed: int = 0, use_dataset_labels: bool = False,
                 strategy_params: Optional[dict] = None, auto_retrain: bool = True,
                 source: Any = None) -> None:
        if isinstance(subset, bool) or int(subset) < 1:
            raise ValueError(f"subset must be a positive integer, got {subset!r}")
        self.dataset = dataset
        self.source = source
        self.classes = tuple(dataset.classes)
        self.num_classes = len(self.classes)
        if self.num_classes < 2:
            raise ValueError("labelling needs at least two classes")
        self.x_pool = dataset.x_train
        self.pool_size = int(self.x_pool.shape[0])
        if not isinstance(store, LabelStore):
            store = LabelStore(store, pool_size=self.pool_size, num_classes=self.num_classes)
        if store.pool_size != self.pool_size or store.num_classes != self.num_classes:
            raise ValueError(f"label store {store.path} is for a pool of {store.pool_size} points "
                             f"and {store.num_classes} classes, this data has {self.pool_size} and "
                             f"{self.num_classes}; use another --store")
        self.store = store
        self.train_config = train_config if train_config is not None else default_train_config()
        self.subset = int(subset)
        self.warmup = int(warmup) if warmup is not None else max(10, self.num_classes)
        self.lease_seconds = float(lease_seconds)
        self.seed = int(seed)
        self.auto_retrain = bool(auto_retrain)
        from ntkal.strategies.lookahead import MLMOC

        self._strategy_params = dict(strategy_params or {})
        MLMOC(**self._strategy_params)  # bad options fail now
        self.weights_path = Path(weights_path) if weights_path is not None else \
            (Path(store.path + ".weights.pt") if store.path != ":memory:" else None)
        self._lock = threading.RLock()
        self._leases: dict[int, tuple[str, float]] = {}
        self._held: dict[str, int] = {}
        self._proposal: Optional[tuple[int, float]] = None
        self._margin_order: Optional[np.ndarray] = None
        self._random_order = np.random.default_rng([self.seed, 7]).permutation(self.pool_size)
        self._latencies: deque = deque(maxlen=200)
        self._last_latency: Optional[dict] = None
        self._retrain = _RetrainStatus()
        self._thread: Optional[threading.Thread] = None
        self._version = 0
        self.trained = False
        if use_dataset_labels:
            known = np.flatnonzero(dataset.y_train.numpy() != UNLABELLED)
            if known.size:
                store.import_labels(known, dataset.y_train.numpy()[known], annotator="file")
        if self.weights_path is not None and self.weights_path.is_file():
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model_state"])
            self.trained = True
        self.model = model
        self.learner = self._new_learner(model)
        if self.auto_retrain and not self.trained and len(store) >= self.warmup:
            self.start_retrain()  # e.g. a file with enough labelled rows: no warm-up needed

    # ------------------------------------------------------------------ learner
    def _new_learner(self, model: nn.Module, labels: Optional[tuple] = None):
        """An ActiveLearner over the pool with the store's labels (a fresh look-ahead session)."""
        from ntkal.learner import ActiveLearner
        from ntkal.strategies.lookahead import MLMOC

        idx, lab = labels if labels is not None else self.store.labelled()
        self._version += 1
        return ActiveLearner(model, MLMOC(**self._strategy_params), self.x_pool, labelled=idx,
                             labels=lab, num_classes=self.num_classes,
                             train_config=self.train_config, mode="sequential",
                             subset=self.subset, seed=self.seed + 1000 * self._version)

    def _reset_learner(self) -> None:
        self.learner = self._new_learner(self.model)
        self._proposal = None

    @property
    def phase(self) -> str:
        """``"warm-up"`` (random order) or ``"look-ahead"`` (sequential MLMOC)."""
        return "look-ahead" if self.trained and self.learner.labelled_indices.size else "warm-up"

    # ------------------------------------------------------------------ choosing items
    def _expire(self) -> None:
        now = time.monotonic()
        for i, (client, until) in list(self._leases.items()):
            if until < now:
                del self._leases[i]
                if self._held.get(client) == i:
                    del self._held[client]

    def _lease(self, index: int, client: str) -> None:
        old = self._held.get(client)
        if old is not None and old != index:
            self._leases.pop(old, None)
        self._leases[index] = (client, time.monotonic() + self.lease_seconds)
        self._held[client] = index

    def release(self, index: int, client: str) -> bool:
        """Give back an item handed to ``client`` (e.g. "skip"); True if it was leased to it."""
        with self._lock:
            lease = self._leases.get(int(index))
            if lease is None or lease[0] != client:
                return False
            del self._leases[int(index)]
            self._held.pop(client, None)
            return True

    def _is_free(self, index: int, labelled: np.ndarray) -> bool:
        return not labelled[index] and index not in self._leases

    def _lookahead_pick(self) -> tuple[int, float]:
        if self._proposal is None:
            try:
                index = int(self.learner.query(1)[0])
            except ValueError:  # every point of this session's subset is labelled: a new subset
                self._reset_learner()
                index = int(self.learner.query(1)[0])
            self._proposal = (index, float("nan"))
        return self._proposal

    def _margin_pick(self, labelled: np.ndarray) -> Optional[int]:
        if self._margin_order is None:
            logits = self.learner.predict_logits(self.x_pool)
            top2 = torch.softmax(logits.double(), dim=1).topk(2, dim=1).values
            self._margin_order = np.argsort((top2[:, 0] - top2[:, 1]).numpy(), kind="stable")
        for i in self._margin_order:
            if self._is_free(int(i), labelled):
                return int(i)
        return None

    def _random_pick(self, labelled: np.ndarray) -> Optional[int]:
        for i in self._random_order:
            if self._is_free(int(i), labelled):
                return int(i)
        return None

    def _choose(self) -> tuple[Optional[int], str, float]:
        labelled = np.zeros(self.pool_size, dtype=bool)
        labelled[self.learner.labelled_indices] = True
        if labelled.all():
            return None, "done", 0.0
        t0 = time.perf_counter()
        if self.phase == "look-ahead":
            index, _ = self._lookahead_pick()
            if self._is_free(index, labelled):
                return index, "look-ahead (sequential MLMOC)", time.perf_counter() - t0
            pick = self._margin_pick(labelled)
            if pick is not None:
                return pick, "smallest margin (the look-ahead pick is with another annotator)", \
                    time.perf_counter() - t0
        pick = self._random_pick(labelled)
        if pick is None:  # everything unlabelled is leased to someone else
            return None, "all remaining items are with other annotators", 0.0
        return pick, "random (warm-up)", time.perf_counter() - t0

    def next_item(self, client: str = "default") -> dict:
        """The item for ``client``: the one it holds, else a new one leased to it."""
        with self._lock:
            self._expire()
            held = self._held.get(client)
            if held is not None and self.store.label_of(held) is None:
                self._leases[held] = (client, time.monotonic() + self.lease_seconds)
                return self.describe(held, source="held")
            index, source, seconds = self._choose()
            if index is None:
                return {"index": None, "done": source == "done", "reason": source}
            self._lease(index, client)
            item = self.describe(index, source=source)
            item["query_ms"] = 1000 * seconds
            return item

    def describe(self, index: int, source: str = "") -> dict:
        """What the page shows about pool point ``index``: how to render it and the model's
        predicted class (the pre-annotation)."""
        index = int(index)
        logits = self.learner.predict_logits(self.x_pool[index:index + 1])[0].double()
        probs = torch.softmax(logits, dim=0)
        pred = int(probs.argmax())
        item = {"index": index, "done": False, "source": source, "kind": self.kind,
                "prediction": {"label": pred, "class": self.classes[pred],
                               "probability": float(probs[pred]), "trained": self.trained},
                "image_url": f"/api/items/{index}/image.png" if self.kind == "image" else None,
                "row": self.row(index) if self.kind != "image" else None}
        return item

    # ------------------------------------------------------------------ showing items
    @property
    def kind(self) -> str:
        kind = getattr(self.source, "kind", None)
        if kind is not None:
            return "table" if kind == "table" else ("image" if kind == "image" else "array")
        x = self.x_pool
        return "image" if x.ndim == 4 and x.shape[1] in (1, 3) else "array"

    def row(self, index: int) -> dict:
        """A table row (or flat array) as ``{column: value}``, values as read from the file."""
        raw = getattr(self.source, "raw_train", None)
        values = (np.asarray(raw[index]) if raw is not None else self.x_pool[index].numpy()).ravel()
        names = tuple(getattr(self.source, "feature_names", ())) or \
            tuple(f"x{j}" for j in range(values.size))
        return {n: float(v) for n, v in zip(names, values.tolist())}

    def image_png(self, index: int, min_size: int = 224) -> bytes:
        """Pool image ``index`` as PNG bytes, scaled up (nearest neighbour) to at least
        ``min_size`` pixels on its shorter side."""
        import io

        from PIL import Image

        index = int(index)
        if not 0 <= index < self.pool_size:
            raise ValueError(f"index {index} is out of range for a pool of size {self.pool_size}")
        if self.kind != "image":
            raise ValueError(f"this pool holds {self.kind} items: table rows have no image")
        raw = getattr(self.source, "raw_train", None)
        img = np.asarray(raw[index] if raw is not None else self.x_pool[index].numpy(), np.float64)
        if raw is None or img.min() < 0 or img.max() > 1:
            lo, hi = float(img.min()), float(img.max())
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        pixels = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
        pil = Image.fromarray(pixels[0]) if pixels.shape[0] == 1 else \
            Image.fromarray(np.transpose(pixels, (1, 2, 0)))
        scale = max(1, int(np.ceil(min_size / min(pil.size))))
        pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.NEAREST)
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        return buf.getvalue()

    # ------------------------------------------------------------------ labels
    def _label_value(self, label: Any) -> int:
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in self.classes:
                raise ValueError(f"unknown class {label!r}; classes: {', '.join(self.classes)}")
            return self.classes.index(label)
        if isinstance(label, bool):
            raise ValueError(f"label must be a class index or name, got {label!r}")
        try:
            value = int(label)
        except (TypeError, ValueError):
            raise ValueError(f"label must be a class index or name, got {label!r}") from None
        if not 0 <= value < self.num_classes:
            raise ValueError(f"label {value} is out of range [0, {self.num_classes})")
        return value

    def add_label(self, index: Any, label: Any, client: str = "default") -> dict:
        """Store one label (durably), condition the look-ahead on it, and get ``client``'s next
        item. A repeated label for an already labelled point is acknowledged again (idempotent);
        a *different* label for it raises :class:`LabelConflict` (undo first).

        Returns ``{"index", "label", "duplicate", "latency", "next"}``; ``latency`` holds the
        milliseconds spent storing, conditioning, choosing the next item, and in total.
        """
        if isinstance(index, bool):
            raise ValueError(f"index must be an integer, got {index!r}")
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise ValueError(f"index must be an integer, got {index!r}") from None
        if not 0 <= index < self.pool_size:
            raise ValueError(f"index {index} is out of range for a pool of size {self.pool_size}")
        value = self._label_value(label)
        with self._lock:
            t0 = time.perf_counter()
            stored = self.store.label_of(index)
            if stored is not None:
                if stored != value:
                    raise LabelConflict(f"item {index} is already labelled {self.classes[stored]!r}"
                                        f"; undo it before giving another label")
                self.release(index, client)
                return {"index": index, "label": value, "duplicate": True, "latency": None,
                        "next": self.next_item(client)}
            self.store.add([index], [value], annotator=client)   # on disk from here on
            t1 = time.perf_counter()
            self._leases.pop(index, None)
            if self._held.get(client) == index:
                del self._held[client]
            self.learner.teach([index], [value])                 # closed-form conditioning
            self._proposal = None
            t2 = time.perf_counter()
            nxt = self.next_item(client)                         # the next query, reflecting it
            t3 = time.perf_counter()
            latency = {"store_ms": 1000 * (t1 - t0), "condition_ms": 1000 * (t2 - t1),
                       "next_ms": 1000 * (t3 - t2), "total_ms": 1000 * (t3 - t0),
                       "phase": self.phase}
            self._latencies.append(latency)
            self._last_latency = latency
            start = (self.auto_retrain and not self.trained and self._retrain.state == "idle"
                     and self.learner.labelled_indices.size >= self.warmup)
        if start:
            self.start_retrain()
        return {"index": index, "label": value, "duplicate": False, "latency": latency,
                "next": nxt}

    def undo(self, client: Optional[str] = None) -> dict:
        """Remove the most recent label (``client``'s own if given), hand that item back to the
        client, and rebuild the look-ahead session without it."""
        with self._lock:
            undone = self.store.undo_last(annotator=client)
            if undone is None:
                return {"undone": None, "next": self.next_item(client or "default")}
            self._reset_learner()
            index, label = undone
            self._lease(index, client or "default")
            return {"undone": {"index": index, "label": label, "class": self.classes[label]},
                    "next": self.describe(index, source="undone")}

    def import_labels(self, indices: Sequence[int], labels: Sequence[Any]) -> dict:
        """Add labels from elsewhere (all or nothing); the look-ahead session is rebuilt."""
        values = [self._label_value(y) for y in labels]
        with self._lock:
            result = self.store.import_labels(list(indices), values, annotator="import")
            if result["added"]:
                self._reset_learner()
            return result

    # ------------------------------------------------------------------ retraining
    @property
    def retraining(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start_retrain(self) -> bool:
        """Start SGD on a copy of the network in a background thread; False if one is running or
        there are no labels."""
        with self._lock:
            if self.retraining or self.learner.labelled_indices.size == 0:
                return False
            idx, lab = self.store.labelled()
            model = copy.deepcopy(self.model)
            epochs = self.train_config.epochs_for(idx.size)
            self._retrain = _RetrainStatus(state="training", epochs=epochs, labels=int(idx.size),
                                           started=time.time())
            self._thread = threading.Thread(target=self._retrain_worker, args=(model, idx, lab),
                                            name="ntkal-retrain", daemon=True)
            self._thread.start()
            return True

    def wait_for_retrain(self, timeout: Optional[float] = None) -> bool:
        """Block until a running retrain has finished; True if none is running now."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.retraining

    def _retrain_worker(self, model: nn.Module, idx: np.ndarray, lab: np.ndarray) -> None:
        from ntkal.training import evaluate, train

        status = self._retrain
        try:
            x = self.x_pool[torch.from_numpy(idx)]
            y = torch.from_numpy(lab)
            # At most 20 calls (each restarts momentum and the schedule: hence a constant rate),
            # so that progress can be shown without paying train()'s set-up every epoch.
            per_call = max(1, -(-status.epochs // 20))
            done = 0
            while done < status.epochs:
                chunk = min(per_call, status.epochs - done)
                train(model, x, y, dataclasses.replace(self.train_config, epochs=chunk,
                                                       min_steps=None,
                                                       seed=self.train_config.seed + done),
                      num_classes=self.num_classes)
                done += chunk
                status.epoch = done
            if self.dataset.num_test:
                status.accuracy = float(evaluate(model, self.dataset.x_test, self.dataset.y_test))
                self.store.add_evaluation(int(idx.size), status.accuracy)
            if self.weights_path is not None:
                atomic_torch_save({"model_state": {k: v.detach().cpu() for k, v in
                                                   model.state_dict().items()},
                                   "num_labels": int(idx.size)}, self.weights_path)
            status.state = "preparing"
            learner = self._new_learner(model, labels=(idx, lab))
            if learner.unlabelled_indices.size:
                learner.query(1)  # build the new look-ahead session here, not in a request
            with self._lock:
                stored = set(self.store.labelled()[0].tolist())
                if set(learner.labelled_indices.tolist()) <= stored:
                    self.store.sync(learner)  # labels given meanwhile, conditioned in closed form
                else:  # a label was undone meanwhile: rebuild from the store
                    learner = self._new_learner(model)
                self.model, self.learner = model, learner
                self._proposal = None
                self._margin_order = None
                self.trained = True
                status.state = "done"
        except Exception as err:  # noqa: BLE001 - reported through stats, labelling goes on
            status.state = "failed"
            status.error = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        finally:
            status.finished = time.time()
            status.seconds = status.finished - (status.started or status.finished)

    # ------------------------------------------------------------------ dashboard
    def stats(self) -> dict:
        """Counts, phase, latencies, retraining progress and the learning curve."""
        with self._lock:
            counts = self.store.counts().tolist()
            lat = list(self._latencies)
            total = [entry["total_ms"] for entry in lat]
            retrain = dataclasses.asdict(self._retrain)
            return {
                "pool_size": self.pool_size, "labelled": int(sum(counts)),
                "unlabelled": self.pool_size - int(sum(counts)),
                "classes": list(self.classes),
                "per_class": dict(zip(self.classes, counts)),
                "phase": self.phase, "trained": self.trained, "warmup": self.warmup,
                "subset": self.subset, "kind": self.kind,
                "latency": {"last": self._last_latency,
                            "median_total_ms": float(np.median(total)) if total else None,
                            "max_total_ms": float(np.max(total)) if total else None,
                            "count": len(total)},
                "retrain": retrain,
                "curve": [{"labels": n, "accuracy": a} for n, a in self.store.evaluations()],
                "test_size": self.dataset.num_test,
                "leased": len(self._leases),
            }
