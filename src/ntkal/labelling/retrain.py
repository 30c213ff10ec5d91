"""Background retraining: SGD on a copy of the network while labelling goes on.

The epochs run in at most 20 calls of :func:`ntkal.training.train` so that progress can be shown;
each call restarts momentum and the schedule, hence :func:`default_train_config`'s constant rate.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkal.atomic_files import atomic_torch_save

__all__ = ["Retrainer", "RetrainStatus", "adopt", "default_train_config"]


def default_train_config(epochs: int = 30):
    """What the retrain button runs: SGD with momentum on MSE at a constant rate of 0.1, the
    gradient norm clipped at 5 (without it, an MLP on 3x12x12 images diverged in the first epoch;
    at MSE's default rate 0.5 it still ended at chance on its training set, which ``train`` now
    reports as divergence),
    ``min_steps`` so that early retrains on a few labels still take enough steps. The epochs run
    in at most 20 calls so that progress can be shown."""
    from ntkal.training import TrainConfig

    return TrainConfig(
        epochs=int(epochs),
        batch_size=32,
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="constant",
        loss="mse",
        seed=0,
        min_steps=300,
        grad_clip=5.0,
    )


@dataclasses.dataclass
class RetrainStatus:
    state: str = "idle"  # idle | training | preparing | done | failed
    epoch: int = 0
    epochs: int = 0
    labels: int = 0
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    accuracy: float | None = None
    error: str | None = None


class Retrainer:
    """One retrain at a time in a daemon thread.

    ``finish(model, idx, lab, status)`` runs in the thread after SGD (saving weights, building
    the new look-ahead session and swapping it in are the session's business).
    """

    def __init__(
        self, train_config: Any, num_classes: int, x_pool: torch.Tensor, dataset: Any
    ) -> None:
        self.train_config = train_config
        self.num_classes = int(num_classes)
        self.x_pool = x_pool
        self.dataset = dataset
        self.status = RetrainStatus()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(
        self,
        model: nn.Module,
        idx: np.ndarray,
        lab: np.ndarray,
        finish: Callable[[nn.Module, np.ndarray, np.ndarray, RetrainStatus], None],
    ) -> bool:
        """Train ``model`` (already a copy) on ``(idx, lab)``; False if a retrain is running."""
        if self.running:
            return False
        epochs = self.train_config.epochs_for(idx.size)
        self.status = RetrainStatus(
            state="training", epochs=epochs, labels=int(idx.size), started=time.time()
        )
        self._thread = threading.Thread(
            target=self._work, args=(model, idx, lab, finish), name="ntkal-retrain", daemon=True
        )
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a running retrain has finished; True if none is running now."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _work(self, model, idx, lab, finish) -> None:
        from ntkal.training import evaluate, train

        status = self.status
        try:
            x = self.x_pool[torch.from_numpy(idx)]
            y = torch.from_numpy(lab)
            per_call = max(1, -(-status.epochs // 20))
            done = 0
            while done < status.epochs:
                chunk = min(per_call, status.epochs - done)
                train(
                    model,
                    x,
                    y,
                    dataclasses.replace(
                        self.train_config,
                        epochs=chunk,
                        min_steps=None,
                        seed=self.train_config.seed + done,
                    ),
                    num_classes=self.num_classes,
                )
                done += chunk
                status.epoch = done
            if self.dataset.num_test:
                status.accuracy = float(evaluate(model, self.dataset.x_test, self.dataset.y_test))
            status.state = "preparing"
            finish(model, idx, lab, status)
            status.state = "done"
        except Exception as err:  # noqa: BLE001 - reported through stats, labelling goes on
            status.state = "failed"
            status.error = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        finally:
            status.finished = time.time()
            status.seconds = status.finished - (status.started or status.finished)


def adopt(
    session: Any, model: nn.Module, idx: np.ndarray, lab: np.ndarray, status: RetrainStatus
) -> None:
    """After SGD (in the retrain thread): record the accuracy, save the weights, build the
    new look-ahead session here rather than in a request, teach it every label given
    meanwhile, and swap it into ``session`` (a :class:`LabellingSession`)."""
    if status.accuracy is not None:
        session.store.add_evaluation(int(idx.size), status.accuracy)
    if session.weights_path is not None:
        atomic_torch_save(
            {
                "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "num_labels": int(idx.size),
            },
            session.weights_path,
        )
    learner = session.picks.build(model, idx, lab)
    twin = None
    if learner.unlabelled_indices.size:
        learner.query(1)
        twin = session.picks.twin_of(learner)  # the speculation's copy, made here, not later
    with session._lock:
        now_idx, now_lab = session.store.labelled()
        stored = dict(zip(now_idx.tolist(), now_lab.tolist()))
        if all(stored.get(i) == y for i, y in zip(idx.tolist(), lab.tolist())):
            session.store.sync(learner)  # labels given meanwhile, conditioned in closed form
            if twin is not None:
                session.store.sync(twin)  # the same labels in the same order
        else:  # a label was undone or changed meanwhile: rebuild from the store
            learner = session.picks.build(model, now_idx, now_lab)
            twin = None
        session.model = model
        session.picks.install(learner, model_changed=True, twin=twin)
        session.trained = True
