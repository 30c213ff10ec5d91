"""Learning loss for active learning (LL4AL): query the points whose loss a side module predicts highest."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ntkal.strategies.base import QueryContext, QueryResult, Strategy, check_budget, top_k
from ntkal.strategies.forward_passes import evaluating
from ntkal.strategies.registry import register_strategy

__all__ = ["LearningLoss", "LossPredictionModule", "margin_ranking_loss"]


class LossPredictionModule(nn.Module):
    """Yoo & Kweon (2019, Fig. 2): per feature map, global average pooling -> linear -> ReLU;
    the concatenation -> linear -> one predicted loss per input.

    Parameters
    ----------
    in_dims : sequence of int
        Channel (or feature) count of each captured feature map.
    hidden : int
        Width of each per-feature branch (128 in the paper).
    """

    def __init__(self, in_dims: Sequence[int], hidden: int = 128) -> None:
        super().__init__()
        self.in_dims = tuple(int(d) for d in in_dims)
        self.branches = nn.ModuleList(nn.Linear(d, hidden) for d in self.in_dims)
        self.head = nn.Linear(hidden * len(self.in_dims), 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Predicted loss ``(n,)`` from the captured ``features``."""
        parts = [F.relu(branch(_pool(f))) for branch, f in zip(self.branches, features)]
        return self.head(torch.cat(parts, dim=1)).squeeze(1)


def _pool(f: torch.Tensor) -> torch.Tensor:
    # (n, C, ...) -> (n, C) by global average pooling; (n, d) is kept as is.
    return f.flatten(2).mean(dim=2) if f.dim() > 2 else f.reshape(f.shape[0], -1)


def margin_ranking_loss(
    pred: torch.Tensor, target: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Yoo & Kweon (2019, Eq. 2): split the batch into pairs and penalise a predicted loss order
    that disagrees with the true one by less than ``margin``.

    Ranking rather than regressing the loss is the paper's point: the loss scale shrinks as the
    model trains, while the order is what the query needs.
    """
    n = pred.shape[0] // 2 * 2
    if n < 2:
        return pred.sum() * 0.0
    pred, target = pred[:n], target[:n].detach()
    p_i, p_j = pred[: n // 2], pred[n // 2 :].flip(0)
    t_i, t_j = target[: n // 2], target[n // 2 :].flip(0)
    sign = torch.sign(t_i - t_j)
    return torch.clamp(margin - sign * (p_i - p_j), min=0.0).mean()


class _FeatureTap:
    """Forward hooks capturing the classifier's input (the penultimate embedding) and the outputs
    of the named submodules, in a fixed order."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        classifier = getattr(model, "classifier", None)
        if not isinstance(classifier, nn.Module):
            raise TypeError(
                f"{type(model).__name__} has no `classifier` module; LL4AL reads the "
                "penultimate embedding at the classifier's input"
            )
        self.features: dict[str, torch.Tensor] = {}
        self.order = list(layers) + ["__embedding__"]
        self._handles = []
        for name in layers:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(
                    f"feature_layers: {name!r} is not a submodule of {type(model).__name__}"
                ) from None
            self._handles.append(module.register_forward_hook(self._out_hook(name)))
        self._handles.append(classifier.register_forward_pre_hook(self._in_hook("__embedding__")))

    def _out_hook(self, name: str):
        def hook(module, inputs, output):
            self.features[name] = output

        return hook

    def _in_hook(self, name: str):
        def hook(module, inputs):
            self.features[name] = inputs[0]

        return hook

    def collect(self) -> list[torch.Tensor]:
        missing = [n for n in self.order if n not in self.features]
        if missing:
            raise RuntimeError(
                f"no features captured from {missing}; did the forward pass use them?"
            )
        out = [self.features[n] for n in self.order]
        self.features.clear()
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@register_strategy
class LearningLoss(Strategy):
    """Top predicted loss from a loss-prediction module trained jointly with the model (Yoo & Kweon 2019).

    The module sees the network's features and learns, via :func:`margin_ranking_loss`, to rank
    points by the target loss; unlabelled points it ranks highest are the ones the model would get
    most wrong. It is task-agnostic and needs one forward pass per candidate.

    Parameters
    ----------
    feature_layers : sequence of str, optional
        Names (``model.get_submodule``) of intermediate modules whose outputs also feed the loss
        module, captured by forward hooks; 4-D maps are global-average pooled. Default: only the
        penultimate embedding (the classifier's input), which works for every ntkal model — the
        paper taps each ResNet stage, which ``feature_layers=("layer1", ..., "layer4")`` mirrors.
    hidden : int
        Width of each per-feature branch.
    weight : float
        ``λ`` of the ranking loss in the joint objective (1 in the paper).
    margin : float
        ``ξ`` of the ranking loss (1 in the paper).
    detach_after : float
        Fraction of the epochs after which the features entering the loss module are detached, so
        it stops steering the model's representation (120 of 200 epochs in the paper).

    Notes
    -----
    :meth:`train` trains through :func:`ntkal.training.train` (the same optimiser, schedule,
    ``min_steps``, ``grad_clip`` and divergence check as every strategy) with the ranking loss as
    an extra objective; the loss module's parameters share the model's optimiser. The loss module
    is kept on the strategy between active-learning cycles (rebuilt only if the feature sizes
    change). In training mode the embedding is captured after dropout, if the model has any.
    """

    name = "ll4al"
    feature_layers: tuple[str, ...]
    hidden: int
    weight: float
    margin: float
    detach_after: float

    def __init__(
        self,
        feature_layers: Sequence[str] | None = None,
        hidden: int = 128,
        weight: float = 1.0,
        margin: float = 1.0,
        detach_after: float = 0.6,
    ) -> None:
        for key, value in (("weight", weight), ("margin", margin), ("detach_after", detach_after)):
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
            ):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
        if not 0.0 <= detach_after <= 1.0:
            raise ValueError(f"detach_after must lie in [0, 1], got {detach_after}")
        if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if isinstance(feature_layers, str):
            raise ValueError(
                f"feature_layers must be a list of module names, got the string {feature_layers!r}"
            )
        self.feature_layers = tuple(feature_layers or ())
        self.hidden = int(hidden)
        self.weight = float(weight)
        self.margin = float(margin)
        self.detach_after = float(detach_after)
        self._loss_module: LossPredictionModule | None = None

    @property
    def loss_module(self) -> LossPredictionModule | None:
        """The trained loss-prediction module (``None`` before the first :meth:`train`)."""
        return self._loss_module

    def state_dict(self) -> dict[str, Any] | None:
        """The loss module's dimensions and weights (``None`` before the first :meth:`train`),
        so that a saved :class:`~ntkal.ActiveLearner` resumes with the same loss predictor."""
        if self._loss_module is None:
            return None
        weights = {k: v.detach().cpu().clone() for k, v in self._loss_module.state_dict().items()}
        return {
            "in_dims": list(self._loss_module.in_dims),
            "hidden": self.hidden,
            "weights": weights,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state is None:
            self._loss_module = None
            return
        if int(state["hidden"]) != self.hidden:
            raise ValueError(
                f"saved loss module has hidden={state['hidden']}, this strategy "
                f"has hidden={self.hidden}"
            )
        module = LossPredictionModule(state["in_dims"], self.hidden)
        module.load_state_dict(state["weights"])
        self._loss_module = module

    def _module_for(self, dims: Sequence[int], seed: int) -> LossPredictionModule:
        if self._loss_module is None or self._loss_module.in_dims != tuple(dims):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._loss_module = LossPredictionModule(dims, self.hidden)
        return self._loss_module

    def train(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        config: Any,
        num_classes: int,
        *,
        progress: bool = False,
    ) -> Any:
        """Train ``model`` (warm start, in place) and the loss module jointly on ``(x, y)``.

        Objective per batch: ``mean target loss + λ · margin ranking loss`` (Yoo & Kweon 2019,
        Eq. 3), with the features detached after ``detach_after`` of the run's epochs. Training
        goes through :func:`ntkal.training.train` with the ranking term as its
        :class:`~ntkal.training.ExtraObjective`, so the schedule, ``min_steps``, ``grad_clip``
        and the divergence check are exactly those of every other strategy.

        Returns
        -------
        ntkal.training.TrainResult
            ``losses`` are the target loss per epoch, ``extra_losses`` the weighted ranking term.
        """
        from ntkal.training import ExtraObjective, train

        x = torch.as_tensor(x)
        tap = _FeatureTap(model, self.feature_layers)
        try:
            dims = self._feature_dims(model, x, tap)
            loss_module = self._module_for(dims, int(getattr(config, "seed", 0)))

            def ranking_term(step) -> torch.Tensor:
                feats = tap.collect()
                if step.epoch >= round(self.detach_after * step.epochs):
                    feats = [f.detach() for f in feats]
                rank = margin_ranking_loss(loss_module(feats), step.per_example_loss, self.margin)
                return self.weight * rank

            extra = ExtraObjective(
                loss=ranking_term, parameters=list(loss_module.parameters()), modules=[loss_module]
            )
            return train(
                model, x, y, config, num_classes=num_classes, progress=progress, extra=extra
            )
        finally:
            tap.remove()

    @staticmethod
    def _feature_dims(model: nn.Module, x: torch.Tensor, tap: _FeatureTap) -> list[int]:
        """Pooled size of every tapped feature, from one example on the model's own device."""
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        sample = x[:1].to(device)
        if param is not None and sample.is_floating_point():
            sample = sample.to(param.dtype)
        if sample.shape[0] == 0:
            raise ValueError("cannot train on an empty labelled set")
        with torch.no_grad(), evaluating(model, device):
            model(sample)
            return [_pool(f).shape[1] for f in tap.collect()]

    @torch.no_grad()
    def predicted_losses(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 512,
    ) -> np.ndarray:
        """Loss-module predictions for ``x`` in eval mode, ``(n,)`` float64."""
        if self._loss_module is None:
            raise RuntimeError(
                "the LL4AL loss module is untrained: train the model with "
                "LearningLoss.train (e.g. ActiveLearner(strategy='ll4al')) first"
            )
        device = torch.device(device)
        tap = _FeatureTap(model, self.feature_layers)
        out = []
        try:
            with evaluating(model, device), evaluating(self._loss_module, device) as module:
                for start in range(0, int(x.shape[0]), batch_size):
                    model(x[start : start + batch_size].to(device))
                    out.append(module(tap.collect()).to("cpu", torch.float64))
        finally:
            tap.remove()
        return torch.cat(out).numpy()

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        """Top-``budget`` candidates by predicted loss."""
        budget = check_budget(budget, context.num_candidates)
        scores = self.predicted_losses(
            context.model,
            context.x_candidates,
            device=context.device,
            batch_size=context.batch_size,
        )
        indices = top_k(scores, budget, rng=np.random.default_rng(context.seed))
        return QueryResult(indices=indices.astype(np.int64), scores=scores)
