"""Look-ahead by real SGD retraining per candidate: the ground truth the eNTK criteria approximate.

Mohamadi, Bae & Sutherland, NeurIPS 2022: their EER/MLMOC baseline fine-tunes the network once per
candidate (and label); it is far slower than the closed form and is kept to measure how well the
linearised network ranks candidates.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkal.arguments import as_optional_int
from ntkal.progress import progress_allowed
from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget, top_k
from ntkal.strategies.forward_passes import evaluating
from ntkal.strategies.lookahead_scores import check_score_reference, flip_fraction, output_change

__all__ = ["SGDLookahead", "default_finetune_config"]

_F64 = torch.float64


def default_finetune_config():
    """A short warm-started fine-tune: 10 epochs of SGD with momentum on MSE at the loss's default
    rate, constant schedule, no weight decay (closest to the gradient flow the eNTK models)."""
    from ntkal.training import TrainConfig

    return TrainConfig(
        epochs=10,
        batch_size=64,
        lr=None,
        momentum=0.9,
        weight_decay=0.0,
        schedule="constant",
        loss="mse",
        seed=0,
    )


class SGDLookahead(Strategy):
    """Look-ahead by real SGD retraining per candidate (EER-style ground truth for MLMOC).

    For each candidate ``x_j``, a deep copy of the trained network is warm-start fine-tuned on
    ``L ∪ {(x_j, ŷ_j)}`` (``ŷ_j`` = argmax of the network's output; every label, weighted by its
    softmax probability, for ``score="expected"``), and scored with the same score functions as
    MLMOC: flips against the original network's outputs on ``S`` (``reference="f0"``) or against a
    control copy fine-tuned on ``L`` alone with the same configuration (``reference="base"``); the
    ``norm`` score is always measured against that control copy, the SGD analogue of ``f̄``.
    Every fine-tune uses the same seed, so the added point is the only difference between runs.

    Parameters
    ----------
    finetune : TrainConfig, optional
        Fine-tuning configuration (default :func:`default_finetune_config`).
    score, reference : str
        As in :class:`MLMOC`.
    max_candidates : int, optional
        Score only a seeded random subset of this many candidates (the rest score ``-inf``).

    References
    ----------
    Mohamadi, Bae & Sutherland, NeurIPS 2022 (EER/MLMOC with SGD retraining is their baseline);
    Roy & McCallum, ICML 2001 (expected error reduction).
    """

    name = "sgd_lookahead"

    def __init__(
        self,
        finetune: Any = None,
        score: str = "flip",
        reference: str = "f0",
        max_candidates: int | None = None,
    ) -> None:
        self.score, self.reference = check_score_reference(score, reference)
        self.finetune = finetune
        self.max_candidates = as_optional_int(max_candidates, "max_candidates", minimum=1)

    def _config(self):
        return self.finetune if self.finetune is not None else default_finetune_config()

    def _finetuned_outputs(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        x_eval: torch.Tensor,
        num_classes: int,
        batch_size: int,
    ) -> torch.Tensor:
        from ntkal.training import predict_logits, train

        config = self._config()
        clone = copy.deepcopy(model)
        # Same random stream for every fine-tune (dropout, shuffling): the added point is the only
        # difference between runs; the caller's global RNG state is left untouched.
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(int(getattr(config, "seed", 0) or 0))
            train(clone, x, y, config, num_classes=num_classes, progress=False)
        return predict_logits(clone, x_eval, batch_size=batch_size).detach().to(_F64).cpu()

    def sgd_predictions(self, context: QueryContext, position: int, label: int) -> torch.Tensor:
        """Outputs on S ``(m, k)`` of a copy fine-tuned on ``L ∪ {(x_position, label)}``."""
        x = torch.cat([context.x_labelled, context.x_candidates[position : position + 1]])
        y_l = context.y_labelled.long()
        y = torch.cat([y_l, torch.tensor([int(label)], dtype=torch.long, device=y_l.device)])
        return self._finetuned_outputs(
            context.model, x, y, context.x_candidates, context.num_classes, context.batch_size
        )

    def control_predictions(self, context: QueryContext) -> torch.Tensor:
        """Outputs on S of a copy fine-tuned on ``L`` alone (the SGD analogue of f̄)."""
        return self._finetuned_outputs(
            context.model,
            context.x_labelled,
            context.y_labelled.long(),
            context.x_candidates,
            context.num_classes,
            context.batch_size,
        )

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        from ntkal.training import predict_logits

        budget = check_budget(budget, context.num_candidates)
        m = context.num_candidates
        if self.max_candidates is not None and self.max_candidates < m:
            rng = np.random.default_rng(context.seed)
            positions = np.sort(rng.choice(m, size=int(self.max_candidates), replace=False))
        else:
            positions = np.arange(m)
        t0 = time.perf_counter()
        with evaluating(context.model, context.device) as model:
            f0 = (
                predict_logits(model, context.x_candidates, batch_size=context.batch_size)
                .detach()
                .to(_F64)
                .cpu()
            )
        control = self.control_predictions(context)
        ref = f0 if self.reference == "f0" else control
        ref_cls = ref.argmax(dim=1)
        probs = torch.softmax(ref, dim=1)
        primary = np.full(m, -np.inf)
        secondary = np.full(m, -np.inf)
        iterator: Iterable[Any] = positions
        if progress_allowed(context.progress):
            from rich.progress import track

            iterator = track(positions, description="SGD look-ahead")
        for j in iterator:
            labels: Sequence[int]
            if self.score == "expected":
                labels = range(context.num_classes)
                weights = probs[j].tolist()
            else:
                labels, weights = [int(ref_cls[j])], [1.0]
            flip = norm = 0.0
            for c, w in zip(labels, weights):
                preds = self.sgd_predictions(context, int(j), c).unsqueeze(0)
                flip += w * float(flip_fraction(preds, ref_cls)[0])
                norm += w * float(output_change(preds, control)[0])
            primary[j], secondary[j] = (norm, flip) if self.score == "norm" else (flip, norm)
        seconds = time.perf_counter() - t0
        chosen = top_k(primary, budget, np.random.default_rng(context.seed), secondary=secondary)
        info = {
            "score": self.score,
            "reference": self.reference,
            "seconds": seconds,
            "scored_positions": positions,
            "secondary_scores": secondary,
        }
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=primary, info=info)
