"""The look-ahead engine interface (:class:`Lookahead`), its one factory (:meth:`Lookahead.fit`),
and the rule that picks an engine (:func:`choose_engine`).

Both engines, :class:`ntkal.lookahead.DenseLookahead` and
:class:`ntkal.lookahead.StreamingLookahead`, implement :class:`Lookahead`; a criterion or a session
only uses this interface, so it does not depend on how Σ is stored or streamed. The engines
register themselves here by name when their module is imported (``ntkal.lookahead`` imports both),
so this module imports neither of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from ntkal.data.labels import as_class_labels
from ntkal.lookahead.block import _DTYPE, LabelLike, LookaheadBlock, eval_positions_for
from ntkal.lookahead.settings import DEFAULT_BLOCK_MEMORY, ENGINES, LookaheadSettings
from ntkal.lookahead.span import LabelledSpan
from ntkal.models.devices import model_device, model_dtype
from ntkal.models.modes import evaluating

__all__ = [
    "Lookahead",
    "ENGINES",
    "DENSE_ADVANTAGE",
    "choose_engine",
    "dense_bytes",
    "fit_lookahead",
]

#: Largest copy of Σ[E, J] a block of the dense engine gathers (rows of the held Σ): a fresh
#: temporary above the allocator's reuse threshold is page-faulted anew for every block, which on
#: a sequential step costs more than the block's arithmetic (10 000 candidates: 0.62 s a step
#: with 130 MiB blocks against 0.15 s with 16 MiB ones).
BLOCK_COPY_BYTES = 16 * 2**20


def dense_bytes(n: int, m: int, p: int) -> int:
    """Peak bytes of the dense engine: the float64 ``(n + m)²`` kernel (``p = k`` for full
    blocks, whose flattened Σ is a second ``(m k)²`` copy) plus ``V = L⁻¹ Θ_LS``."""
    copies = 2 if p > 1 else 1
    return int(8 * p * p * ((n + m) ** 2 * copies + n * m))


#: How much cheaper a dense kernel entry is than a streamed one (the dense engine runs one
#: symmetric kernel call with large blocks; the streaming engine also pays ``V_Eᵀ V_J`` and a
#: second featurisation of the candidates). Measured with ``benchmarks/pool_scale.py``: MLP on
#: Fashion-MNIST, n = 1000, m = 10 000, e = 5000: dense 90 s, streaming 128 s (ratio 1.4).
DENSE_ADVANTAGE = 1.4


def choose_engine(n: int, m: int, e: int, p: int, max_memory: int, engine: str = "auto") -> str:
    """``"dense"`` or ``"streaming"``.

    ``"auto"`` takes the dense engine when :func:`dense_bytes` fits ``max_memory`` and its kernel
    entries, ``(n + m)² / 2`` (symmetric), are at most ``DENSE_ADVANTAGE`` times the streaming
    engine's ``(e + n) · m`` (Θ(E, C) for scoring, Θ(L, C) once); otherwise the streaming engine,
    which computes only Σ[E, J] per block. So E = C on a pool that fits is dense, and a pool much
    larger than E is streamed even when memory would allow the dense Σ.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine != "auto":
        return engine
    cheaper = (n + m) ** 2 / 2 <= DENSE_ADVANTAGE * (e + n) * m
    return "dense" if cheaper and dense_bytes(n, m, p) <= max_memory else "streaming"


def onehot_targets(y_labelled, k: int, device) -> torch.Tensor:
    """Class indices ``(n,)`` as one-hot float64 rows, or ``(n, k)`` targets as float64."""
    y = torch.as_tensor(y_labelled)
    if y.ndim == 1:
        classes = torch.from_numpy(as_class_labels(y, k, name="y_labelled")).to(device)
        return torch.nn.functional.one_hot(classes, k).to(_DTYPE)
    y = y.to(device)
    if y.shape != (y.shape[0], k):
        raise ValueError(
            f"y_labelled must be class indices (n,) or targets (n, {k}), got shape {tuple(y.shape)}"
        )
    return y.to(_DTYPE)


def _output_width(model: nn.Module, x_s: torch.Tensor, num_classes: int | None) -> int:
    """Width ``k`` of the model's logits on one candidate (checked against ``num_classes``)."""
    dev = model_device(model)
    probe = (
        x_s[:1].to(dev, dtype=model_dtype(model)) if x_s.is_floating_point() else x_s[:1].to(dev)
    )
    with torch.no_grad(), evaluating(model):
        try:
            out = model(probe)
        except Exception as err:  # the model rejected the input: say so in terms the caller knows
            raise ValueError(
                f"model cannot be applied to x_candidates of per-example shape "
                f"{tuple(x_s.shape[1:])}: {err}"
            ) from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError("model must return 2-D logits (n, k)")
    k_out = int(out.shape[1])
    if num_classes is not None and int(num_classes) != k_out:
        raise ValueError(f"num_classes={num_classes} but the model outputs {k_out} values")
    return k_out


class Lookahead(LabelledSpan, ABC):
    """The trained network linearised at its weights, with closed-form look-ahead retraining.

    The interface both look-ahead engines implement. Build one with :meth:`fit` (the empirical NTK
    of a model; the engine chosen by :func:`choose_engine`) or :meth:`from_kernels` (precomputed
    kernels, dense engine). All linear algebra is float64.

    ``C`` are the candidates (positions ``0 .. m-1``) and ``E ⊆ C`` the evaluation set
    (:attr:`eval_positions`). Every per-point result of the engine is given in one of two row
    conventions: *on the candidates* (``(m, ...)``: :meth:`base_predictions`,
    :meth:`posterior_variance`, ``f0_candidates``) or *on E* (``(e, ...)``:
    :meth:`retrained_predictions`, :attr:`f0_eval`, a block's ``cov``); :meth:`on_eval` maps the
    first to the second.

    Attributes
    ----------
    kernel : str
        eNTK variant.
    full_kernel : bool
        Whether Σ keeps ``k × k`` blocks.
    num_labelled, num_candidates, num_classes : int
    ridge, eps : float
        As in :class:`ntkal.lookahead.LookaheadSettings`.
    block_size : int or None
        Candidates per block (``None``: from a memory budget, :meth:`default_block_size`).
    jitter : float
        Always 0.0 (kept for old callers): a singular Θ(L, L) is factorised on a basis of its
        span (:class:`ntkal.lookahead.cholesky.LabelledFactor`), never jittered.
    rank : int
        Dimension of the labelled (and conditioned) features' span.
    conditioned : list of int
        Candidates conditioned on so far by :meth:`condition`, in order.

    References
    ----------
    Mohamadi, Bae & Sutherland, NeurIPS 2022, Sec. 3 (look-ahead via the linearised network).
    """

    #: Registered engines by name (filled by subclasses that set ``engine_name``).
    _engines: ClassVar[dict[str, type[Lookahead]]] = {}
    engine_name: ClassVar[str] = ""

    full_kernel: bool
    kernel: str
    num_candidates: int
    num_classes: int
    num_labelled: int
    device: torch.device
    eps: float
    ridge: float
    jitter: float
    block_size: int | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.engine_name:
            Lookahead._engines[cls.engine_name] = cls

    # ------------------------------------------------------------------ the one factory
    @classmethod
    def fit(
        cls,
        model: nn.Module,
        x_labelled,
        y_labelled,
        x_candidates,
        *,
        settings: LookaheadSettings | None = None,
        num_classes: int | None = None,
        progress: bool = False,
        eval_seed: int = 0,
        eval_positions=None,
        **settings_params: Any,
    ) -> Lookahead:
        """Linearise ``model`` at its current weights on ``L ∪ C`` and prepare look-ahead.

        Parameters
        ----------
        model : nn.Module
            Trained network returning logits ``(n, k)``; its kernel is taken in eval mode (on a
            float64 copy when the model is float32: all kernel arithmetic is float64).
        x_labelled, y_labelled : Tensor
            Labelled inputs and int64 class labels (or ``(n, k)`` float regression targets).
        x_candidates : Tensor
            Candidates ``C`` to look ahead on (every unlabelled pool point, typically).
        settings : LookaheadSettings, optional
            Kernel, ridge, eps, implementation, eval_size, max_memory, block size, engine;
            ``**settings_params`` (the same names, flat) override its fields.
        num_classes : int, optional
            Checked against the model's output width (inferred from it when omitted).
        progress : bool
            Progress bar for the kernel computation.
        eval_seed : int
            Seed of the evaluation-set sample; ``eval_positions`` (positions into the candidates)
            wins over ``eval_size``.

        Returns
        -------
        Lookahead
            A :class:`ntkal.lookahead.DenseLookahead` or :class:`ntkal.lookahead.StreamingLookahead`
            as :func:`choose_engine` decides.
        """
        from ntkal.kernels.blocking import default_max_memory

        settings = LookaheadSettings.build(settings, **settings_params)
        x_l, x_s = torch.as_tensor(x_labelled), torch.as_tensor(x_candidates)
        budget = (
            settings.max_memory
            if settings.max_memory is not None
            else default_max_memory(model_device(model))
        )
        n, m = int(x_l.shape[0]), int(x_s.shape[0])
        if m == 0:
            raise ValueError("x_candidates is empty: nothing to look ahead on")
        pos = eval_positions_for(m, settings.eval_size, eval_seed, eval_positions)
        k = _output_width(model, x_s, num_classes)
        choice = choose_engine(
            n, m, len(pos), k if settings.full_kernel else 1, budget, settings.engine
        )
        return Lookahead._engines[choice].from_model(
            model,
            x_l,
            y_labelled,
            x_s,
            settings,
            eval_positions=pos,
            max_memory=budget,
            progress=progress,
        )

    @classmethod
    def from_kernels(
        cls,
        theta_ll,
        theta_sl,
        theta_ss,
        f0_labelled,
        f0_candidates,
        y_labelled_onehot,
        *,
        ridge: float = 0.0,
        eps: float = 1e-6,
        block_size: int | None = None,
        eval_positions=None,
    ) -> Lookahead:
        """The dense engine from precomputed kernel blocks (shapes as in
        :class:`ntkal.lookahead.DenseLookahead`)."""
        # registered subclasses take their own constructor arguments (the base's are abstract)
        dense = cast(Callable[..., "Lookahead"], Lookahead._engines["dense"])
        return dense(
            theta_ll,
            theta_sl,
            theta_ss,
            f0_labelled,
            f0_candidates,
            y_labelled_onehot,
            ridge=ridge,
            eps=eps,
            block_size=block_size,
            eval_positions=eval_positions,
        )

    @classmethod
    @abstractmethod
    def from_model(
        cls,
        model: nn.Module,
        x_labelled: torch.Tensor,
        y_labelled,
        x_candidates: torch.Tensor,
        settings: LookaheadSettings,
        *,
        eval_positions: np.ndarray,
        max_memory: int,
        progress: bool = False,
    ) -> Lookahead:
        """This engine for ``model`` (called by :meth:`fit` once the engine is chosen)."""

    # ------------------------------------------------------------------ what engines provide
    @abstractmethod
    def iter_blocks(
        self, positions=None, block_size: int | None = None
    ) -> Iterator[LookaheadBlock]:
        """Yield :class:`LookaheadBlock` s over candidate ``positions`` (default: all),
        ``block_size`` at a time (default :meth:`default_block_size`)."""

    @abstractmethod
    def condition(self, j: int, y: LabelLike) -> None:
        """Add ``(x_j, y)`` to the training set of the linearised network, in closed form
        (sequential active learning with no SGD between queries, Mohamadi et al. 2022, Sec. 3.2)."""

    @abstractmethod
    def posterior_variance(self, positions=None) -> torch.Tensor:
        """Σ_jj (unclamped) of candidate ``positions`` (default: every candidate): ``(b,)`` for
        scalar kernels, ``(b, k, k)`` blocks for full ones. On E:
        ``posterior_variance(eval_positions)``. Conditioned candidates have 0."""

    @abstractmethod
    def _coords_eval(self) -> torch.Tensor:
        """Span coordinates ``V_E`` ``(r, e p)`` of the evaluation set."""

    def cache_covariance(self) -> bool:
        """Hold Σ[E, C] between sequential steps if the engine can; returns whether it is held
        (the dense engine always holds Σ)."""
        return True

    def default_block_size(
        self, block_memory: int = DEFAULT_BLOCK_MEMORY, score_bytes_per_pair: float | None = None
    ) -> int:
        """Candidates per block: :attr:`block_size` if set, else as many as fit ``block_memory``
        bytes of one block's scoring intermediates on E: ``score_bytes_per_pair`` per (candidate,
        point of E) as the criterion states it, by default its look-ahead predictions and their
        intermediates (``8 · k · (p + 2)``, ``p = k`` for full blocks, else 1), and at most
        :data:`BLOCK_COPY_BYTES` of the block's gathered Σ[E, J]."""
        if self.block_size is not None:
            return max(1, int(self.block_size))
        pair = (
            8 * self.num_classes * (self._p + 2)
            if score_bytes_per_pair is None
            else score_bytes_per_pair
        )
        per = max(1, self.num_eval) * pair
        copy = 8 * max(1, self.num_eval) * self._p * self._p  # the block's Σ[E, J] copy
        return max(1, int(min(int(block_memory) // per, BLOCK_COPY_BYTES // copy)))

    def default_chunk_size(self, memory_budget: int = DEFAULT_BLOCK_MEMORY) -> int:
        """Old name of :meth:`default_block_size`."""
        return self.default_block_size(memory_budget)

    # ------------------------------------------------------------------ shared state
    def _init_state(
        self,
        f0_candidates: torch.Tensor,
        eval_positions,
        block: bool,
        eps: float,
        block_size: int | None,
        device,
    ) -> None:
        m, k = f0_candidates.shape
        self.full_kernel = block
        self.num_candidates = int(m)
        self.num_classes = int(k)
        self._p = k if block else 1
        self.eps = float(eps)
        self.block_size = block_size
        self.device = device
        self.f0_candidates = f0_candidates
        pos = np.arange(m) if eval_positions is None else np.asarray(eval_positions)
        self._eval_all = pos.size == m
        self.eval_positions = torch.as_tensor(pos, dtype=torch.long, device=device)
        self.conditioned: list[int] = []
        self._conditioned_mask = torch.zeros(m, dtype=torch.bool, device=device)
        self._clamp_warned = False
        self._gram_chol: torch.Tensor | None = None
        self._w_eval: torch.Tensor | None = None

    # -- evaluation set
    @property
    def num_eval(self) -> int:
        return int(self.eval_positions.shape[0])

    def on_eval(self, values: torch.Tensor) -> torch.Tensor:
        """Rows on E of a per-candidate tensor ``(m, ...)`` (no copy when E is every candidate)."""
        return values if self._eval_all else values.index_select(0, self.eval_positions)

    _on_eval = on_eval  # old name, for callers outside the package

    @property
    def f0_eval(self) -> torch.Tensor:
        """The trained network's outputs on E ``(e, k)``."""
        return self.on_eval(self.f0_candidates)

    def base_predictions(self) -> torch.Tensor:
        """f̄ on the candidates ``(m, k)``: the linearised network retrained on L (and on every
        conditioned point)."""
        return self._f_bar.clone()

    # -- inputs
    def _targets(self, ys, b: int) -> torch.Tensor:
        k = self.num_classes
        y = torch.as_tensor(ys, device=self.device)
        if not torch.is_floating_point(y):
            y = y.reshape(b)
            if b and (int(y.min()) < 0 or int(y.max()) >= k):
                raise ValueError(f"class labels must lie in [0, {k})")
            return torch.nn.functional.one_hot(y.long(), k).to(_DTYPE)
        y = y.to(_DTYPE)
        if y.shape == (k,) and b == 1:
            y = y.unsqueeze(0)
        if y.shape != (b, k):
            raise ValueError(
                f"targets must be class indices or vectors of length {k}, "
                f"got shape {tuple(y.shape)}"
            )
        return y

    def _positions(self, js) -> torch.Tensor:
        j = torch.as_tensor(js, device=self.device).reshape(-1)
        if j.numel() and (
            torch.is_floating_point(j) or int(j.min()) < 0 or int(j.max()) >= self.num_candidates
        ):
            raise IndexError(f"candidate positions must be integers in [0, {self.num_candidates})")
        return j.long()

    def _single_target(self, j: int, y: LabelLike) -> tuple[int, torch.Tensor]:
        js = self._positions([j])
        if js.numel() != 1:
            raise ValueError("j must be a single candidate position")
        jj = int(js[0])
        if isinstance(y, (int, np.integer)):
            y = [int(y)]
        return jj, self._targets(y, 1)

    # -- retrained predictions (rows on E, both engines)
    def retrained_predictions(self, j: int, y: LabelLike) -> torch.Tensor:
        """f^{(j,y)}(E) ``(e, k)``: predictions on the evaluation set E after retraining with
        ``(x_j, y)`` added (``y``: a class index or a target vector of length k). Rows are on E
        for every engine; with ``eval_size="all"`` E is every candidate."""
        jj, target = self._single_target(j, y)
        return self.retrained_predictions_batch([jj], target)[0]

    def iter_retrained(
        self, js, ys, block_size: int | None = None
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(slice into js, f^{(j,y)}(E) for that block, shape (c, e, k))`` block by
        block; ``ys`` are class indices ``(b,)`` or target vectors ``(b, k)``."""
        js = self._positions(js)
        y = self._targets(ys, int(js.shape[0]))
        start = 0
        for block in self.iter_blocks(js, block_size):
            sl = slice(start, start + block.size)
            yield sl, block.retrained(y[sl])
            start = sl.stop

    def retrained_predictions_batch(self, js, ys, block_size: int | None = None) -> torch.Tensor:
        """Batched :meth:`retrained_predictions`: ``(b, e, k)`` for candidates ``js`` (b,) with
        targets ``ys`` (class indices (b,) or vectors (b, k))."""
        js = self._positions(js)
        out = torch.empty(
            js.shape[0], self.num_eval, self.num_classes, dtype=_DTYPE, device=self.device
        )
        for sl, preds in self.iter_retrained(js, ys, block_size):
            out[sl] = preds
        return out


def fit_lookahead(
    model: nn.Module, x_labelled, y_labelled, x_candidates, **kwargs: Any
) -> Lookahead:
    """Old name of :meth:`Lookahead.fit`."""
    return Lookahead.fit(model, x_labelled, y_labelled, x_candidates, **kwargs)
