"""The live look-ahead loop behind ``ntkal serve-backend``: Label Studio annotations in, scores out.

Each annotation event from Label Studio is written to the :class:`~ntkal.labelstore.LabelStore`
(on disk before the webhook is answered), then a worker thread teaches the labelling session's
sequential look-ahead learner every stored label it lacks (``LabelStore.sync``: closed-form
conditioning, no SGD, the path ``ntkal label`` takes), scores every unlabelled candidate with the
strategy's acquisition score (Mohamadi, Bae & Sutherland, NeurIPS 2022: the linearised network
retrained in closed form), and replaces ntkal's predictions in the project: the network's class as
the pre-annotation and the acquisition score as ``score``, so that sorting Label Studio's Data
Manager by prediction score puts ntkal's next pick first. SGD retraining runs in the background
through the same :class:`~ntkal.labelling.LabellingSession` code as ``ntkal label``.

Restart safety: the store is the truth for what ntkal learnt, the ``<store>.tasks.json`` file
for which task each item is; on start the backend rebuilds the learner from the store, then adds
any annotation Label Studio holds that the store lacks (made while the backend was down), so after
``kill -9`` no acknowledged annotation is lost.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkal.labelling.picks import DEFAULT_STRATEGY
from ntkal.labelstore import LabelStore
from ntkal.labelstudio.exchange import task_label
from ntkal.labelstudio.pool import ProjectPool, build_pool, load_task_ids, save_task_ids
from ntkal.labelstudio.protocol import (
    AnnotationEvent,
    LabelConfig,
    ProtocolError,
    parse_label_config,
    prediction,
    scaled_scores,
)

__all__ = [
    "Backend",
    "DEFAULT_STRATEGY",
    "lookahead_strategies",
    "make_session",
    "lookahead_scores",
    "annotator_tag",
    "annotation_of",
]


def lookahead_strategies() -> tuple[str, ...]:
    """Registered strategies of the look-ahead family
    (:class:`~ntkal.strategies.lookahead.LookaheadStrategy`: a sequential session and
    per-candidate scores the backend can write), read from the registry; the default is the
    labelling page's :data:`~ntkal.labelling.picks.DEFAULT_STRATEGY`, ``auto``."""
    from ntkal.strategies import available_strategies
    from ntkal.strategies.lookahead import LookaheadStrategy
    from ntkal.strategies.registry import strategy_class

    return tuple(
        name
        for name in available_strategies()
        if issubclass(strategy_class(name), LookaheadStrategy)
    )


_TAG = "labelstudio"


def annotator_tag(user: str | None, annotation_id: int) -> str:
    """The store's ``annotator`` for a Label Studio annotation: who, and which annotation (so a
    later update or deletion of that annotation finds its label)."""
    return f"{_TAG}:{user or '?'}:{int(annotation_id)}"


def annotation_of(annotator: str | None) -> int | None:
    """The Label Studio annotation id in a store ``annotator`` written by :func:`annotator_tag`."""
    if not annotator or not annotator.startswith(_TAG + ":"):
        return None
    tail = annotator.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def make_session(dataset, store, model, *, strategy: str = DEFAULT_STRATEGY, **kwargs):
    """A :class:`~ntkal.labelling.LabellingSession` whose sequential learner uses ``strategy``
    (one of :func:`lookahead_strategies`: the backend writes its per-candidate scores)."""
    from ntkal.labelling.engine import LabellingSession

    names = lookahead_strategies()
    if strategy not in names:
        raise ValueError(
            f"--strategy must be a look-ahead strategy ({', '.join(names)}), got {strategy!r}"
        )
    return LabellingSession(dataset, store, model, strategy=strategy, **kwargs)


def lookahead_scores(learner) -> tuple[np.ndarray, np.ndarray, int]:
    """``(pool indices, acquisition scores, pick)`` of the learner's sequential session.

    ``pick`` is the session's own proposal (``learner.query(1)``); the scores are the strategy's
    primary score of every unlabelled candidate of that session, from the same conditioned
    linearised network, so the top score is the pick (up to ties, which the proposal breaks by the
    secondary score).
    """
    pick = int(learner.query(1)[0])
    session, candidates = learner.session, learner.session_candidates
    labelled = np.zeros(learner.pool.size, dtype=bool)
    labelled[learner.labelled_indices] = True
    positions = np.flatnonzero(~labelled[candidates])
    primary, _ = session.strategy.score_candidates(session.lookahead, positions)
    primary = np.asarray(primary, dtype=np.float64)
    if not np.isfinite(primary).all():
        raise FloatingPointError("look-ahead scores are not finite")
    return np.asarray(candidates)[positions], primary, pick


@dataclasses.dataclass
class _Scores:
    labels: int = -1  # stored labels these scores reflect
    changes: int = -1  # store changes (events) these scores reflect
    pick: int | None = None  # pool index of the session's proposal
    task_pick: int | None = None  # its task id
    predicted: np.ndarray | None = None  # (pool,) predicted class
    score: dict | None = None  # pool index -> acquisition score scaled onto [0, 1]
    raw: dict | None = None  # pool index -> acquisition score
    pushed: int = 0  # predictions written in the last push
    seconds: float | None = None  # event received -> predictions written
    finished: float | None = None
    error: str | None = None
    model: Any = None  # the learner the scores came from


class Backend:
    """One Label Studio project, one label store, one labelling session.

    Parameters
    ----------
    client : LabelStudioClient or None
        Where predictions are written (``None``: scores are only served by ``/predict``).
    project : int
        The Label Studio project.
    pool : ProjectPool
    session : LabellingSession
        Built by :func:`make_session` over ``pool.dataset``.
    strategy : str
    retrain_every : int
        Start a background retrain after this many labels since the last one (0: only the first,
        after ``session.warmup`` labels, and on Label Studio's "start training").
    """

    def __init__(
        self,
        client,
        project: int,
        pool: ProjectPool,
        session,
        *,
        strategy: str = DEFAULT_STRATEGY,
        retrain_every: int = 50,
        start_worker: bool = True,
    ) -> None:
        self.client = client
        self.project = int(project)
        self.pool = pool
        self.config: LabelConfig = pool.config
        self.session = session
        self.store: LabelStore = session.store
        self.strategy = strategy
        self.model_version = f"ntkal-{strategy}"
        self.retrain_every = int(retrain_every)
        self._lock = threading.RLock()  # scoring: one refresh at a time
        self._events = threading.RLock()  # store changes; never waits for scoring
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rebuild = False
        self._received: deque = deque()  # perf_counter() of events not yet scored
        self.changes = 0  # events that changed the store
        self.scores = _Scores()
        self.latencies: deque = deque(maxlen=500)
        self.events = {"created": 0, "updated": 0, "deleted": 0, "ignored": 0}
        self._thread: threading.Thread | None = None
        if start_worker:
            self.start()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_project(
        cls,
        client,
        project: int,
        store: str,
        *,
        model: str = "mlp",
        width: int | None = None,
        factory: str | None = None,
        strategy: str = DEFAULT_STRATEGY,
        subset: int = 2000,
        warmup: int | None = None,
        epochs: int = 30,
        image_size: Sequence[int] | None = None,
        features: Sequence[str] | None = None,
        data_root: Path | None = None,
        from_name: str | None = None,
        seed: int = 0,
        retrain_every: int = 50,
        tasks: list | None = None,
        start_worker: bool = True,
    ) -> Backend:
        """Read the project from Label Studio, build (or restore) the pool, model and session,
        and catch up with annotations made while the backend was not running."""
        from ntkal.labelling.engine import default_train_config
        from ntkal.models import build_from_factory, build_model

        info = client.project(project)
        config = parse_label_config(info.get("label_config", ""), from_name=from_name)
        tasks = client.export_tasks(project) if tasks is None else tasks
        ids_path = Path(str(store) + ".tasks.json")
        saved = load_task_ids(ids_path, project) if str(store) != ":memory:" else None
        pool = build_pool(
            tasks,
            config,
            fetch=client.file,
            task_ids=saved,
            data_root=data_root,
            image_size=image_size,
            features=features,
        )
        if saved is None and str(store) != ":memory:":
            if Path(store).exists():
                raise ProtocolError(
                    f"{store} exists but {ids_path} does not: the store's items "
                    "cannot be matched to tasks; use a new --store"
                )
            save_task_ids(ids_path, project, pool.task_ids)
        ds = pool.dataset
        torch.manual_seed(seed)
        net = (
            build_from_factory(factory, ds.in_shape, ds.num_classes)
            if factory
            else build_model(model, ds.in_shape, ds.num_classes, width=width)
        )
        session = make_session(
            ds,
            str(store),
            net,
            strategy=strategy,
            subset=subset,
            warmup=warmup,
            train_config=default_train_config(epochs),
            seed=seed,
        )
        backend = cls(
            client,
            project,
            pool,
            session,
            strategy=strategy,
            retrain_every=retrain_every,
            start_worker=False,
        )
        backend.reconcile(tasks)
        if start_worker:
            backend.start()
        return backend

    # ------------------------------------------------------------------ events
    def _records_by_index(self) -> dict[int, dict]:
        return {r["index"]: r for r in self.store.records()}

    def _rewrite(self, index: int, label: int | None, annotator: str | None) -> None:
        """Replace (``label``) or remove (``None``) the stored label of ``index``.

        The store only removes its most recent labels, so the later ones are taken off and put
        back in their order (each on disk again before this returns).
        """
        popped = []
        while True:
            last = self.store.records()[-1:]  # the record undo_last is about to remove
            undone = self.store.undo_last()
            if undone is None:
                break
            popped.append(last[0])
            if undone[0] == index:
                break
        for rec in reversed(popped[:-1]):
            self.store.add([rec["index"]], [rec["label"]], annotator=rec["annotator"])
        if label is not None:
            self.store.add([index], [label], annotator=annotator)
        self._rebuild = True

    def apply(self, events: Sequence[AnnotationEvent], received: float | None = None) -> dict:
        """Store the label changes ``events`` make (durably, before returning) and wake the
        scorer. Returns counts of what happened."""
        received = time.perf_counter() if received is None else received
        done = {"stored": 0, "changed": 0, "removed": 0, "ignored": 0}
        with self._events:
            records = self._records_by_index()
            for ev in events:
                index = None if ev.task_id is None else self.pool.index_of(ev.task_id)
                if ev.action == "deleted" and index is None:
                    index = next(
                        (
                            i
                            for i, r in records.items()
                            if annotation_of(r["annotator"]) == ev.annotation_id
                        ),
                        None,
                    )
                if index is None:
                    done["ignored"] += 1
                    self.events["ignored"] += 1
                    continue
                self.events[ev.action] += 1
                current = records.get(index)
                mine = (
                    current is not None and annotation_of(current["annotator"]) == ev.annotation_id
                )
                tag = annotator_tag(ev.user, ev.annotation_id)
                if ev.label is None:
                    # deleted, cancelled or emptied: the label goes if this annotation gave it
                    if mine:
                        self._rewrite(index, None, None)
                        done["removed"] += 1
                    else:
                        done["ignored"] += 1
                elif current is None:
                    self.store.add([index], [ev.label], annotator=tag)
                    done["stored"] += 1
                elif current["label"] != ev.label:
                    self._rewrite(index, ev.label, tag)  # the latest annotation wins
                    done["changed"] += 1
                else:
                    done["ignored"] += 1
                records = self._records_by_index() if self._rebuild else records
                if ev.label is not None and current is None:
                    records[index] = {"index": index, "label": ev.label, "annotator": tag}
            if any(done[k] for k in ("stored", "changed", "removed")):
                self._received.append(received)
                self.changes += 1
        self._wake.set()
        return done

    def reconcile(self, tasks: list[dict]) -> dict:
        """Make the store agree with the annotations Label Studio holds for the pool's tasks
        (those made while the backend was down); labels from elsewhere (imports) are kept."""
        events = []
        records = self._records_by_index()
        for task in tasks:
            tid = task.get("id")
            index = None if tid is None else self.pool.index_of(int(tid))
            if index is None:
                continue
            try:
                label = task_label(task, self.config)
            except ProtocolError as err:
                print(f"ntkal: task {task.get('id')} skipped: {err}", flush=True)
                continue
            anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
            current = records.get(index)
            made_here = None if current is None else annotation_of(current["annotator"])
            if label is not None and (current is None or current["label"] != label):
                ann = max(anns, key=lambda a: str(a.get("updated_at") or a.get("created_at")))
                who = ann.get("completed_by")
                events.append(
                    AnnotationEvent(
                        "created",
                        int(ann["id"]),
                        int(task["id"]),
                        label,
                        None if who is None else str(who),
                    )
                )
            elif label is None and made_here is not None:
                events.append(AnnotationEvent("deleted", made_here, int(task["id"]), None))
        return (
            self.apply(events)
            if events
            else {"stored": 0, "changed": 0, "removed": 0, "ignored": 0}
        )

    # ------------------------------------------------------------------ scoring
    def _session_lock(self):
        return getattr(self.session, "_lock", self._lock)

    def _maybe_retrain(self) -> None:
        stats = self.session.stats()
        n = stats["labelled"]
        if self.session.retraining or n == 0:
            return
        if not self.session.trained:
            if n >= self.session.warmup and stats["retrain"]["state"] in ("idle", "failed"):
                self.session.start_retrain()
        elif self.retrain_every > 0 and n - stats["retrain"]["labels"] >= self.retrain_every:
            self.session.start_retrain()

    def refresh(self) -> None:
        """Teach the learner the store's labels, score, and write the predictions."""
        with self._lock:
            with self._events:
                received = list(self._received)
                self._received.clear()
                changes = self.changes
                rebuild, self._rebuild = self._rebuild, False
            with self._session_lock():
                if rebuild:
                    self.session._reset_learner()  # a label was changed or removed
                learner = self.session.learner
                try:
                    self.store.sync(learner)  # closed-form conditioning on new labels
                except ValueError:  # relabelled while this ran: start afresh
                    self.session._reset_learner()
                    learner = self.session.learner
                    self.store.sync(learner)
                n = int(learner.labelled_indices.size)
                unlabelled = learner.unlabelled_indices
                if unlabelled.size and n:  # no look-ahead before the first label
                    indices, scores, pick = lookahead_scores(learner)
                else:
                    indices, scores, pick = np.zeros(0, np.int64), np.zeros(0), None
                predicted = learner.predict_logits(self.pool.dataset.x_train).argmax(1).numpy()
            self._maybe_retrain()
            raw = dict(zip(indices.tolist(), scores.tolist()))
            score = dict(zip(indices.tolist(), scaled_scores(scores.tolist())))
            preds = [
                prediction(
                    self.config,
                    int(predicted[i]),
                    score.get(int(i)),
                    self.model_version,
                    task=self.pool.task_ids[int(i)],
                )
                for i in unlabelled.tolist()
            ]
            pushed = 0
            if self.client is not None:
                self.client.delete_predictions(self.project, self.model_version)
                if preds:
                    self.client.import_predictions(self.project, preds)
                pushed = len(preds)
            now = time.perf_counter()
            seconds = [now - t for t in received]
            self.latencies.extend(seconds)
            self.scores = _Scores(
                labels=n,
                changes=changes,
                pick=pick,
                task_pick=None if pick is None else self.pool.task_ids[pick],
                predicted=predicted,
                score=score,
                raw=raw,
                pushed=pushed,
                seconds=max(seconds) if seconds else None,
                finished=time.time(),
                model=learner,
            )

    def _worker(self) -> None:
        while not self._stop.is_set():
            woke = self._wake.wait(0.5)
            self._wake.clear()
            if self._stop.is_set():
                return
            stale = self.session.learner is not self.scores.model  # e.g. a retrain swapped in
            if not (woke or stale):
                continue
            try:
                self.refresh()
            except Exception as err:  # noqa: BLE001 - reported by /ntkal/stats; events go on
                self.scores.error = f"{type(err).__name__}: {err}"
                self.scores.model = self.session.learner  # do not retry a failing state forever
                traceback.print_exc()

    def start(self) -> None:
        """Start the scoring worker (scores the current labels at once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._worker, name="ntkal-labelstudio", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    def wait_scored(self, timeout: float = 60.0) -> bool:
        """Block until the written scores reflect every store change made so far."""
        target = self.changes
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.scores.changes >= target:
                return True
            time.sleep(0.02)
        return False

    def secure_webhooks(self, public_url: str, token: str) -> int:
        """Give the webhook Label Studio created for this backend (``public_url/webhook``) the
        backend's token as a header, so a token-protected backend accepts its events. Returns
        the number of webhooks updated."""
        want = {"Authorization": f"Bearer {token}"}
        done = 0
        for hook in self.client.webhooks(self.project):
            url = str(hook.get("url", "")).rstrip("/")
            if url == public_url.rstrip("/") + "/webhook" and hook.get("headers") != want:
                self.client.set_webhook_headers(int(hook["id"]), want)
                done += 1
        return done

    # ------------------------------------------------------------------ serving
    def predict(self, tasks: Sequence[Any]) -> list[dict]:
        """Label Studio ``/predict``: for each task, the current pre-annotation and score."""
        out: list[dict] = []
        s = self.scores
        for task in tasks:
            tid = task.get("id") if isinstance(task, dict) else None
            index = None if tid is None else self.pool.index_of(tid)
            if index is None or s.predicted is None:
                out.append({"result": [], "score": None, "model_version": self.model_version})
                continue
            out.append(
                prediction(
                    self.config,
                    int(s.predicted[index]),
                    (s.score or {}).get(index),
                    self.model_version,
                )
            )
        return out

    def stats(self) -> dict:
        """Counts, the last scores' state and latency, and the session's retraining."""
        lat = list(self.latencies)
        session = self.session.stats()
        s = self.scores
        return {
            "project": self.project,
            "tasks": len(self.pool.task_ids),
            "labelled": session["labelled"],
            "strategy": self.strategy,
            "model_version": self.model_version,
            "classes": list(self.config.classes),
            "events": dict(self.events),
            "changes": self.changes,
            "scores": {
                "labels": s.labels,
                "changes": s.changes,
                "pick_task": s.task_pick,
                "pick_index": s.pick,
                "written": s.pushed,
                "finished": s.finished,
                "error": s.error,
                "pending_events": len(self._received),
            },
            "latency": {
                "last_s": s.seconds,
                "median_s": float(np.median(lat)) if lat else None,
                "max_s": float(np.max(lat)) if lat else None,
                "count": len(lat),
            },
            "trained": session["trained"],
            "retrain": session["retrain"],
        }
