"""Supervised training of a network on the labelled set, and batched evaluation.

The method linearises the network at its *trained* weights, so training is part of the method, not
a detail: by default it follows the reference protocol — mean squared error on one-hot targets
(the loss whose gradient flow the linearised look-ahead models), SGD with momentum 0.9 and weight
decay, a OneCycle learning-rate schedule, and warm starts from the previous cycle's weights.

Results are always those of the last epoch; nothing here looks at a test set while training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkal.arguments import as_float, as_int
from ntkal.data.labels import as_class_labels
from ntkal.models.devices import model_dtype as _model_dtype
from ntkal.models.devices import resolve_device as _resolve_device
from ntkal.models.forward import as_input_batch, predict_logits
from ntkal.models.modes import modes_restored as _modes_restored
from ntkal.progress import progress_allowed

__all__ = [
    "TrainConfig",
    "TRAIN_CONFIG_KEYS",
    "TrainResult",
    "TrainStep",
    "ExtraObjective",
    "train",
    "evaluate",
    "predict_logits",
]

SCHEDULES = ("onecycle", "cosine", "constant")
LOSSES = ("mse", "ce")
#: Learning rate used when ``TrainConfig.lr`` is None, per loss.
DEFAULT_LR = {"mse": 0.5, "ce": 0.05}


def _as_int(name: str, value: Any, minimum: int) -> int:
    return as_int(value, f"TrainConfig.{name}", minimum=minimum, integral_floats=True)


def _as_float(name: str, value: Any) -> float:
    # YAML 1.1 reads "1e-4" as a string; accept numeric strings rather than fail far from the file.
    return as_float(value, f"TrainConfig.{name}", numeric_strings=True)


@dataclass
class TrainConfig:
    """How to train a network on the labelled set.

    The defaults train the small CNN on sklearn digits (about 1350 images) to > 95 % test accuracy
    in a few seconds on a CPU; :meth:`reference` gives the paper's CIFAR-10 ResNet-18 protocol.

    Attributes
    ----------
    epochs : int, default 30
        Passes over the labelled set (>= 1).
    batch_size : int, default 64
        Mini-batch size; the last batch of an epoch may be smaller (a trailing batch of a single
        example is merged into the one before it, since BatchNorm cannot train on one example).
    lr : float, optional
        Learning rate: the constant rate, the cosine schedule's starting rate, or OneCycle's peak
        rate when ``max_lr`` is None (OneCycle then starts at ``lr / 25``). None (the default)
        picks by loss: 0.5 for ``mse`` (whose mean over classes makes gradients ``k`` times
        smaller) and 0.05 for ``ce``, where 0.5 kills the small CNN. The choice is made once, at
        construction: ``dataclasses.replace(config, loss=...)`` keeps the old rate.
    momentum : float, default 0.9
        SGD (heavy-ball) momentum, in ``[0, 1)``.
    weight_decay : float, default 5e-4
        L2 penalty applied by SGD.
    schedule : {"onecycle", "cosine", "constant"}, default "onecycle"
        Per-step learning-rate schedule over all ``epochs``.
    loss : {"mse", "ce"}, default "mse"
        ``mse``: squared error between the logits and one-hot targets, averaged over examples and
        classes (``torch.nn.MSELoss``), the method's choice; ``ce``: cross-entropy.
    seed : int, default 0
        Seeds the shuffling and every random draw during training (e.g. dropout); the caller's
        global RNG state is left untouched.
    device : str, default "cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
    max_lr : float, optional
        OneCycle only: the peak rate, reached from a start at ``lr`` (so ``lr=0.3, max_lr=1.25``
        reads as the reference's setting). None: peak at ``lr``.
    grad_clip : float, optional
        Clip the global gradient norm to this value before each step.
    min_steps : int, optional
        Train for at least this many optimiser steps, raising the number of epochs when the set is
        small. Early active-learning cycles label few points, and a fixed epoch count then means
        very few steps (digits, CNN: 50 labels, 30 epochs reach ~52 % test accuracy, 100 epochs
        ~86 %). None: exactly ``epochs``.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    loss: str = "mse"
    seed: int = 0
    device: str = "cpu"
    max_lr: float | None = None
    grad_clip: float | None = None
    min_steps: int | None = None

    def __post_init__(self) -> None:
        self.epochs = _as_int("epochs", self.epochs, 1)
        self.batch_size = _as_int("batch_size", self.batch_size, 1)
        self.seed = _as_int("seed", self.seed, 0)
        self.loss = str(self.loss).lower()
        if self.loss not in LOSSES:
            raise ValueError(
                f"TrainConfig.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"
            )
        self.lr = DEFAULT_LR[self.loss] if self.lr is None else _as_float("lr", self.lr)
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        self.momentum = _as_float("momentum", self.momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"TrainConfig.momentum must lie in [0, 1), got {self.momentum}")
        self.weight_decay = _as_float("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        self.schedule = str(self.schedule).lower()
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        self.device = str(self.device)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(
                    f"TrainConfig.device must be 'cpu', 'cuda', 'cuda:N' or 'auto', "
                    f"got {self.device!r}"
                ) from None
        if self.max_lr is not None:
            if self.schedule != "onecycle":
                raise ValueError(
                    f"TrainConfig.max_lr only applies to schedule='onecycle', "
                    f"not {self.schedule!r}; remove it or change the schedule"
                )
            self.max_lr = _as_float("max_lr", self.max_lr)
            if self.max_lr < self.lr:
                raise ValueError(
                    f"TrainConfig.max_lr ({self.max_lr}) must be >= lr ({self.lr}): "
                    "OneCycle starts at lr and peaks at max_lr"
                )
        if self.grad_clip is not None:
            self.grad_clip = _as_float("grad_clip", self.grad_clip)
            if self.grad_clip <= 0:
                raise ValueError(f"TrainConfig.grad_clip must be > 0, got {self.grad_clip}")

        if self.min_steps is not None:
            self.min_steps = _as_int("min_steps", self.min_steps, 1)

    def epochs_for(self, n: int) -> int:
        """Epochs a run on ``n`` examples takes: ``epochs``, or more to reach ``min_steps``."""
        if self.min_steps is None:
            return self.epochs
        return max(self.epochs, math.ceil(self.min_steps / _steps_per_epoch(n, self.batch_size)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys are an error naming the valid ones."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a training config must be a mapping, got {type(d).__name__}")
        valid = TRAIN_CONFIG_KEYS
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown training option(s) {', '.join(map(str, unknown))}; "
                f"valid options: {', '.join(valid)}"
            )
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields; ``TrainConfig.from_dict(c.to_dict()) == c``."""
        return dataclasses.asdict(self)

    @classmethod
    def reference(cls, **changes: Any) -> TrainConfig:
        """The reference CIFAR-10 protocol (ResNet-18): 200 epochs, batch 128, MSE, SGD momentum
        0.9, weight decay 1e-4, OneCycle from lr 0.3 to max_lr 1.25. ``changes`` override fields."""
        base: dict[str, Any] = dict(
            epochs=200,
            batch_size=128,
            lr=0.3,
            max_lr=1.25,
            momentum=0.9,
            weight_decay=1e-4,
            schedule="onecycle",
            loss="mse",
        )
        base.update(changes)
        return cls(**base)


#: The keys of a trainer section (``TrainConfig``'s fields): the one list configs check against.
TRAIN_CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class TrainResult:
    """What one call of :func:`train` did.

    Attributes
    ----------
    losses : list of float
        Per-epoch training loss, the example-weighted mean over that epoch's mini-batches (measured
        in train mode while the weights move).
    train_accuracy : float
        Accuracy on the training set after the last epoch, in eval mode.
    seconds : float
        Wall-clock time of the whole call.
    steps : int
        Optimiser steps taken.
    extra_losses : list of float
        Per-epoch example-weighted mean of the :class:`ExtraObjective` term (empty without one).
    """

    losses: list[float] = field(default_factory=list)
    train_accuracy: float = float("nan")
    seconds: float = 0.0
    steps: int = 0
    extra_losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        """Loss of the last epoch (NaN if none ran)."""
        return self.losses[-1] if self.losses else float("nan")


# ----------------------------------------------------------------------------- helpers
def _as_labels(y: Any, n: int, num_classes: int) -> torch.Tensor:
    return torch.from_numpy(as_class_labels(y, num_classes, name="y", expected=n))


def _check_num_classes(num_classes: Any) -> int:
    return as_int(num_classes, "num_classes", minimum=1)


def _check_output(out: torch.Tensor, n: int, num_classes: int) -> None:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, num_classes):
        actual = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the model must return logits of shape (n, num_classes) = "
            f"{(n, num_classes)} for a batch of {n}, got {actual}"
        )


def _steps_per_epoch(n: int, batch_size: int) -> int:
    """Mini-batches per epoch, counting a trailing single example as part of the batch before it."""
    steps = max(1, math.ceil(n / batch_size))
    return steps - 1 if steps > 1 and batch_size > 1 and n % batch_size == 1 else steps


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    chunks = list(torch.split(order, batch_size))
    if len(chunks) > 1 and batch_size > 1 and chunks[-1].numel() == 1:
        chunks[-2] = torch.cat(chunks[-2:])
        chunks.pop()
    return chunks


def _learning_rate(config: TrainConfig) -> float:
    """``config.lr``, which construction sets (to the loss's default when not given)."""
    if config.lr is None:
        raise ValueError(
            "TrainConfig.lr is None; leave it out when building the config to get the "
            "loss's default rate"
        )
    return config.lr


def _scheduler(optimiser: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    if config.schedule == "onecycle":
        lr = _learning_rate(config)
        peak = config.max_lr if config.max_lr is not None else lr
        div = peak / lr if config.max_lr is not None else 25.0
        # A single-step run has no room for OneCycle's warm-up phase; torch needs >= 2 steps.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimiser,
            max_lr=peak,
            div_factor=div,
            total_steps=max(total_steps, 2),
            cycle_momentum=False,
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total_steps)
    return None


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    """A transient rich bar over epochs, or None. Older rich versions allow one live display at a
    time; inside another (e.g. an experiment runner's bar) training then runs without its own."""
    if not enabled:
        yield None
        return
    from rich.errors import LiveError
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        transient=True,
    )
    try:
        bar.start()
    except LiveError:
        yield None
        return
    try:
        yield bar
    finally:
        bar.stop()


@dataclass
class TrainStep:
    """What an :class:`ExtraObjective` sees at one optimiser step.

    Attributes
    ----------
    model : nn.Module
        The network being trained (train mode).
    x, y : Tensor
        The mini-batch, on the training device.
    outputs : Tensor
        The model's logits ``(b, num_classes)`` for ``x``, with their graph.
    per_example_loss : Tensor
        The task loss of each example ``(b,)`` (its mean is the task loss of the step).
    epoch, epochs : int
        The current epoch (from 0) and the number of epochs of the run.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    outputs: torch.Tensor
    per_example_loss: torch.Tensor
    epoch: int
    epochs: int


@dataclass
class ExtraObjective:
    """A term added to the task loss of every step, and what it trains besides the model.

    Strategies that train a side module jointly with the network (LL4AL's loss-prediction module)
    use this hook, so that they train through the one loop of :func:`train` (same schedule,
    optimiser, ``min_steps``, ``grad_clip`` and divergence check as every other strategy).

    Attributes
    ----------
    loss : callable
        ``loss(step: TrainStep) -> Tensor``: a scalar added to the mean task loss of the step.
    parameters : sequence of Parameter
        Extra parameters optimised together with the model's (same optimiser and schedule).
    modules : sequence of nn.Module
        Extra modules moved to the training device and put in train mode for the run (their
        submodules' modes are restored afterwards).
    """

    loss: Callable[[TrainStep], torch.Tensor]
    parameters: Sequence[nn.Parameter] = ()
    modules: Sequence[nn.Module] = ()


def _per_example_loss(
    out: torch.Tensor, y: torch.Tensor, kind: str, num_classes: int
) -> torch.Tensor:
    if kind == "mse":
        return (out - F.one_hot(y, num_classes).to(out.dtype)).square().mean(dim=1)
    return F.cross_entropy(out, y, reduction="none")


def _training_data(x: Any, y: Any, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_input_batch(x, floating=True)
    n = int(x.shape[0])
    y = _as_labels(y, n, num_classes)
    if n == 0:
        raise ValueError("cannot train on an empty set")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    return x, y


def _check_model_output(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    model.eval()
    with torch.no_grad():
        probe = x[: min(int(x.shape[0]), 2)]
        _check_output(model(probe), int(probe.shape[0]), num_classes)


def _check_finite(epoch: int, loss: float, extra: float | None, config: TrainConfig) -> None:
    for what, value in (("loss", loss), ("extra loss term", extra)):
        if value is not None and not math.isfinite(value):
            raise FloatingPointError(
                f"training diverged at epoch {epoch + 1}: the {what} is {value}; lower "
                f"lr/max_lr (now {config.lr}/{config.max_lr}) or set grad_clip"
            )


#: Weights whose norm grows this many times within one :func:`train` call have diverged: SGD
#: with a sound rate moves them by a small factor, a too-high rate by orders of magnitude (and a
#: diverged network can keep a finite loss once its ReLUs die, so the NaN check alone misses it).
DIVERGED_GROWTH = 1e4

#: A last-epoch loss this many times a constant zero prediction's (``1/k`` for MSE on one-hot
#: targets, ``log k`` for cross-entropy) has exploded.
DIVERGED_LOSS = 100.0


def _weight_norm(params: Sequence[nn.Parameter]) -> float:
    """Euclidean norm of all ``params`` together, in float64 (``inf``/``nan`` when they are)."""
    with torch.no_grad():
        total = sum(float(p.detach().double().square().sum()) for p in params)
    return math.sqrt(total) if math.isfinite(total) else total


def _check_weights_finite(epoch: int, params: Sequence[nn.Parameter], config: TrainConfig) -> None:
    if not math.isfinite(_weight_norm(params)):
        raise FloatingPointError(
            f"training diverged at epoch {epoch + 1}: the weights are NaN or infinite; lower "
            f"lr/max_lr (now {config.lr}/{config.max_lr}) or set grad_clip"
        )


def _check_outcome(
    result: TrainResult,
    start: float,
    params: Sequence[nn.Parameter],
    config: TrainConfig,
    num_classes: int,
) -> None:
    """FloatingPointError for a run that exploded and did not learn: its last-epoch loss is
    :data:`DIVERGED_LOSS` times a constant prediction's, or its weight norm grew
    :data:`DIVERGED_GROWTH` times, *and* its training accuracy is below halfway from chance to
    perfect. Judged at the end only, and with the accuracy: a clipped MSE run may spike mid-way,
    or end with huge logits of the right sign, and still classify its set perfectly."""
    chance = 1.0 / num_classes
    if result.train_accuracy >= 0.5 * (1.0 + chance):
        return
    base = chance if config.loss == "mse" else math.log(max(num_classes, 2))
    loss, now = result.final_loss, _weight_norm(params)
    if loss > DIVERGED_LOSS * base:
        what = (
            f"the {config.loss} loss is {loss:.3g}, {loss / base:.3g} times a constant "
            f"prediction's ({base:.3g})"
        )
    elif now > DIVERGED_GROWTH * max(start, 1.0):
        what = f"the weights grew from norm {start:.3g} to {now:.3g}"
    else:
        return
    raise FloatingPointError(
        f"training diverged: after {len(result.losses)} epochs {what} and the training accuracy "
        f"is {result.train_accuracy:.3g} (chance {chance:.3g}); lower lr/max_lr (now "
        f"{config.lr}/{config.max_lr}), e.g. by 10x, or set grad_clip"
    )


@dataclass
class _Run:
    """The moving parts of one :func:`train` call."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    config: TrainConfig
    num_classes: int
    epochs: int
    params: list[nn.Parameter]
    optimiser: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    extra: ExtraObjective | None

    def step(self, idx: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimiser step on the examples ``idx``: (task loss, extra term), detached."""
        xb, yb = self.x[idx], self.y[idx]
        out = self.model(xb)
        per_example = _per_example_loss(out, yb, self.config.loss, self.num_classes)
        loss = per_example.mean()
        extra = None
        if self.extra is not None:
            extra = self.extra.loss(
                TrainStep(self.model, xb, yb, out, per_example, epoch, self.epochs)
            )
        total = loss if extra is None else loss + extra
        self.optimiser.zero_grad(set_to_none=True)
        total.backward()
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimiser.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), (None if extra is None else extra.detach())

    def epoch(self, epoch: int) -> tuple[float, float | None, int]:
        """One pass over the data: example-weighted mean task loss, extra term, steps taken."""
        n = int(self.x.shape[0])
        total = torch.zeros((), dtype=torch.float64, device=self.x.device)
        extra_total = torch.zeros((), dtype=torch.float64, device=self.x.device)
        steps = 0
        for idx in _batches(n, self.config.batch_size, self.generator):
            idx = idx.to(self.x.device)
            loss, extra = self.step(idx, epoch)
            steps += 1
            total += loss.double() * idx.numel()
            if extra is not None:
                extra_total += extra.double() * idx.numel()
        return float(total) / n, (float(extra_total) / n if self.extra is not None else None), steps


def _start_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    num_classes: int,
    extra: ExtraObjective | None,
) -> _Run:
    """Optimiser, schedule and shuffling for a run; seeds the global RNG (inside a fork)."""
    n = int(x.shape[0])
    epochs = config.epochs_for(n)
    total_steps = epochs * _steps_per_epoch(n, config.batch_size)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    params = list(model.parameters())
    if extra is not None:
        known = {id(p) for p in params}
        params += [p for p in extra.parameters if id(p) not in known]
    optimiser = torch.optim.SGD(
        params,
        lr=_learning_rate(config),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    return _Run(
        model,
        x,
        y,
        config,
        num_classes,
        epochs,
        params,
        optimiser,
        _scheduler(optimiser, config, total_steps),
        generator,
        extra,
    )


# ----------------------------------------------------------------------------- public API
def train(
    model: nn.Module,
    x: Any,
    y: Any,
    config: TrainConfig,
    *,
    num_classes: int,
    progress: bool = False,
    extra: ExtraObjective | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)``, starting from its current weights.

    Warm starting is the point: active learning retrains after every cycle from the previous
    cycle's weights, as the reference does. The optimiser (momentum buffers) and the schedule
    start afresh on every call. With the same weights, data and ``config.seed`` the resulting
    weights are bit-identical on the CPU.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``(n, num_classes)``. It is left on ``config.device``, with every submodule's
        train/eval flag as it was before the call.
    x : Tensor or ndarray
        Inputs, ``(n, ...)``; cast to the model's parameter dtype.
    y : Tensor or ndarray
        Integer class indices in ``[0, num_classes)``, shape ``(n,)``.
    config : TrainConfig
    num_classes : int
    progress : bool, default False
        Show a rich progress bar (never under ``NTKAL_QUIET=1`` or ``CI``).
    extra : ExtraObjective, optional
        A term added to every step's loss, with the extra parameters and modules it trains
        (e.g. LL4AL's loss-prediction module). Its per-epoch mean is in ``TrainResult.extra_losses``.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        Mismatched lengths, labels out of range, non-finite inputs, an empty set, or a model whose
        output is not ``(n, num_classes)``.
    FloatingPointError
        If the loss (or the extra term) becomes NaN or infinite, or the weights do, or the run
        ends exploded (see :func:`_check_outcome`) without learning its set (lower
        ``lr``/``max_lr`` or set ``grad_clip``).
    """
    start = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise TypeError(
            f"config must be a TrainConfig, got {type(config).__name__}; "
            "TrainConfig.from_dict(...) builds one from a mapping"
        )
    if extra is not None and not isinstance(extra, ExtraObjective):
        raise TypeError(f"extra must be an ExtraObjective, got {type(extra).__name__}")
    num_classes = _check_num_classes(num_classes)
    x, y = _training_data(x, y, num_classes)
    device = _resolve_device(config.device)
    model.to(device)
    side_modules = list(extra.modules) if extra is not None else []
    for module in side_modules:
        module.to(device)
    x = x.to(device=device, dtype=_model_dtype(model))
    y = y.to(device)

    result = TrainResult()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with contextlib.ExitStack() as stack:
        for module in [model, *side_modules]:
            stack.enter_context(_modes_restored(module))
        stack.enter_context(torch.random.fork_rng(devices=cuda))
        _check_model_output(model, x, num_classes)
        run = _start_run(model, x, y, config, num_classes, extra)
        for module in [model, *side_modules]:
            module.train()
        start_norm = _weight_norm(run.params)
        with _progress_bar(progress_allowed(progress)) as bar:
            task = bar.add_task("train", total=run.epochs, loss="-") if bar is not None else None
            for epoch in range(run.epochs):
                epoch_loss, epoch_extra, steps = run.epoch(epoch)
                result.steps += steps
                _check_finite(epoch, epoch_loss, epoch_extra, config)
                _check_weights_finite(epoch, run.params, config)
                result.losses.append(epoch_loss)
                if epoch_extra is not None:
                    result.extra_losses.append(epoch_extra)
                if bar is not None:
                    bar.update(task, advance=1, loss=f"{epoch_loss:.4f}")
    result.train_accuracy = evaluate(model, x, y, device=device)
    _check_outcome(result, start_norm, run.params, config, num_classes)
    result.seconds = time.perf_counter() - start
    return result


def evaluate(
    model: nn.Module, x: Any, y: Any, *, batch_size: int = 1024, device: Any = None
) -> float:
    """Accuracy of ``model``'s argmax prediction on ``(x, y)``, in eval mode (mode restored after).

    Raises
    ------
    ValueError
        If ``x`` and ``y`` differ in length or the set is empty.
    """
    x = as_input_batch(x, floating=True)
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    logits = predict_logits(model, x, batch_size=batch_size, device=device)
    if logits.dim() != 2:
        raise ValueError(
            f"the model must return logits of shape (n, num_classes), got {tuple(logits.shape)}"
        )
    labels = _as_labels(y, n, int(logits.shape[1]))
    return float((logits.argmax(dim=1) == labels.cpu()).double().mean())
