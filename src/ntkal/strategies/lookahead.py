"""Look-ahead acquisition on the linearised network: the family's base, its session, and MLMOC.

Mohamadi, Bae & Sutherland, "Making Look-Ahead Active Learning Strategies Feasible with Neural
Tangent Kernels", NeurIPS 2022 (arXiv:2206.12569).

MLMOC ("most likely model output change") asks, for every candidate ``x_j``: if the network were
retrained with ``x_j`` labelled by its most likely class ``ŷ_j``, how much would its predictions on
the evaluation set ``E`` (a seeded sample of the candidates, or all of them) change? :class:`MLMOC`
answers in closed form with the linearised network
(:class:`ntkal.lookahead.Lookahead`); :class:`SGDLookahead` (:mod:`ntkal.strategies.sgd_lookahead`)
answers by actually fine-tuning a copy of the network per candidate, which is what the closed form
approximates (and is far slower).

A look-ahead strategy is three separate things: the linearised network
(:class:`ntkal.lookahead.LookaheadSettings`), the criterion (``score_block`` of a subclass), and the
batch selection (:mod:`ntkal.strategies.selection`).

Score functions (higher = more wanted), for a retrained prediction ``f'`` on ``S``:

* ``"flip"`` (the reference default, "pseudo_contrastive"): the fraction of ``S`` whose argmax
  under ``f'`` differs from the reference predictions (``reference="f0"``: the trained network's
  outputs, as in the reference; ``reference="base"``: ``f̄``, the linearised network retrained on
  ``L`` alone). The reference choice counts, for every candidate alike, the flips caused by
  re-fitting ``L`` itself (``f̄`` vs ``f0``); ``"base"`` isolates the effect of the new point.
* ``"norm"``: ``Σ_i ‖f'(x_i) − f̄(x_i)‖``, the output change caused by the new point (EMOC-like).
* ``"expected"``: the flip score averaged over labels ``y`` with weights ``softmax(ref(x_j))``.

With scalar kernels the flip test runs on margins: a point of ``E`` whose gap between the
reference class and the runner-up under ``f̄`` exceeds the largest change the candidate can make to
it (``|Σ_ij| · range(coef_j)``) cannot flip, one below minus that bound has flipped; only the rest
get the exact ``k``-way argmax, so the counts equal the argmax over ``f̄ + delta`` exactly. The
norm score is ``‖coef_j‖ · Σ_i |Σ_ij|``. Full block kernels use the explicit predictions.

Ties in the primary score are broken by the secondary score (``norm`` for ``flip``/``expected``,
``flip`` for ``norm``), which depends on the candidate's content only, so the choice does not depend
on the order of the candidates; exact ties left after that are broken at random under the seed.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from ntkal.arguments import as_choice
from ntkal.lookahead import Lookahead, LookaheadBlock, LookaheadSettings
from ntkal.lookahead.sharded import ShardedPool
from ntkal.strategies.base import (
    QueryContext,
    QueryResult,
    SequentialSession,
    Strategy,
    check_budget,
)
from ntkal.strategies.certified import CertifiedStats
from ntkal.strategies.forward_passes import evaluating
from ntkal.strategies.lookahead_scores import (
    REFERENCES,
    SCORES,
    EvalMargins,
    check_score_reference,
    flip_fraction,
    flips_and_norms,
    onehot,
    output_change,
)
from ntkal.strategies.selection import (
    GREEDY_TARGETS,
    SELECTIONS,
    pick_best,
    pseudo_target,
    select_greedy,
    select_on_pool,
    select_topk,
)
from ntkal.strategies.sgd_lookahead import SGDLookahead, default_finetune_config

__all__ = [
    "LookaheadStrategy",
    "LookaheadSession",
    "MLMOC",
    "SGDLookahead",
    "flip_fraction",
    "output_change",
    "default_finetune_config",
    "SCORES",
    "REFERENCES",
    "SELECTIONS",
    "GREEDY_TARGETS",
]

_F64 = torch.float64


#: A candidate subset is scored through the contiguous range that covers it when the range holds
#: at most this many times as many candidates: contiguous blocks of a held Σ are views, while a
#: scattered subset (the unlabelled ones of a sequential session) costs a gathered copy per block.
CONTIGUOUS_COVER_SLACK = 1.25


def contiguous_cover(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(scan, keep)``: the positions to score and where ``positions`` lie in them (``None``: the
    same). For sorted distinct ``positions`` whose range ``[lo, hi]`` is at most
    :data:`CONTIGUOUS_COVER_SLACK` times their number, ``scan`` is that whole range."""
    n = int(positions.size)
    if n < 2:
        return positions, None
    lo, hi = int(positions[0]), int(positions[-1])
    span = hi - lo + 1
    if span == n or span > CONTIGUOUS_COVER_SLACK * n or not bool((np.diff(positions) > 0).all()):
        return positions, None
    return np.arange(lo, hi + 1, dtype=np.int64), positions - lo


# ----------------------------------------------------------------------------- the family's base
class LookaheadStrategy(Strategy):
    """Base of the look-ahead family: criteria scored on the linearised network.

    A subclass only says how to score one :class:`ntkal.lookahead.LookaheadBlock` of candidates
    (:meth:`score_block`); building the linearised network, streaming the candidates through it in
    blocks, ranking, and the sequential closed-form session are shared, so every look-ahead
    criterion gets them alike (BoTorch-style: the criterion is separate from the model and from the
    selection step).

    Parameters
    ----------
    settings : LookaheadSettings, optional
        The linearised network: kernel, ridge, eps, implementation, eval_size, max_memory,
        block_size, block_memory, engine. Its fields may also be given flat
        (``MLMOC(kernel="trace", eval_size=100)``, as configs pass them); they override
        ``settings``. Checked here, when the strategy is built.
    selection : {"topk", "greedy"}
        How a batch is chosen: ``"topk"`` scores every candidate independently against ``L`` and
        takes the best ``budget`` (the reference's batch mode); ``"greedy"`` takes the best
        candidate, conditions the linearised network on it with a pseudo-target (see
        ``greedy_target``) in closed form, rescores, and repeats: the batch analogue of the
        sequential mode, which stops a batch from spending its budget on near-copies of one point.
    greedy_target : {"most_likely", "expected"}
        The pseudo-target a greedy pick is conditioned on: the one-hot most likely class under the
        reference predictions, or the softmax of the reference outputs (the expected target).
    executor : BlockExecutor, optional
        Score the pool's candidate blocks on these workers
        (:class:`ntkal.kernels.distributed.RayBlockExecutor`, or ``SerialBlockExecutor``) instead
        of in this process: each worker builds the linearised network on L and E and scores its
        share of the candidates (:class:`ntkal.lookahead.sharded.ShardedPool`), with the same
        scores and picks. Batch queries only; a sequential session runs in this process.
    """

    #: Whether a criterion's scores read the labels (through f̄ or pseudo-labels); variance-type
    #: criteria whose scores depend on Σ and the trained network alone set it False, so a
    #: sequential proposal does not depend on the labels observed (see
    #: :attr:`ntkal.strategies.base.SequentialSession.proposals_use_labels`).
    proposals_use_labels: bool = True
    #: Whether :meth:`query` can run on an executor: the criterion is a function of one block,
    #: the references and what :meth:`prepare` computed (criteria that keep per-pass state in
    #: ``score_candidates`` say False).
    supports_executor = True

    def __init__(
        self,
        *,
        settings: LookaheadSettings | None = None,
        selection: str = "topk",
        greedy_target: str = "most_likely",
        executor: Any = None,
        **settings_params: Any,
    ) -> None:
        self.settings = LookaheadSettings.build(settings, **settings_params)
        self.selection = as_choice(selection, "selection", SELECTIONS)
        self.greedy_target = as_choice(greedy_target, "greedy_target", GREEDY_TARGETS)
        if executor is not None:
            if not callable(getattr(executor, "map", None)):
                raise TypeError(
                    "executor must be a block executor with map(job, parts) (SerialBlockExecutor "
                    f"or RayBlockExecutor from ntkal.kernels.distributed), got "
                    f"{type(executor).__name__}"
                )
            if not self.supports_executor:
                raise ValueError(f"{type(self).__name__} cannot score on an executor")
        self.executor = executor

    # The settings' fields read as attributes (``strategy.kernel``), as before the split.
    kernel = property(lambda self: self.settings.kernel)
    ridge = property(lambda self: self.settings.ridge)
    eps = property(lambda self: self.settings.eps)
    implementation = property(lambda self: self.settings.implementation)
    eval_size = property(lambda self: self.settings.eval_size)
    max_memory = property(lambda self: self.settings.max_memory)
    engine = property(lambda self: self.settings.engine)

    @property
    def certifies_fp32(self) -> bool:
        """Whether :meth:`score_block` is one :mod:`ntkal.strategies.certified` can bound (then
        ``score_precision="fp32"`` applies; otherwise scoring is float64)."""
        return False

    # -- what a subclass provides
    def score_block(
        self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """(primary, secondary) scores ``(b,)`` of the candidates of ``block`` (higher = more
        wanted; the secondary score breaks ties). ``ref_eval`` ``(e, k)`` and ``ref_cand``
        ``(b, k)`` are the reference predictions on the evaluation set and on the block."""
        raise NotImplementedError

    def references(
        self, la: Lookahead, f_bar0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference predictions ``(on E, on the candidates)``: the trained network's outputs
        ``f0``; within a greedy batch (``f_bar0``: f̄ when the batch started) moved by what the
        batch's pseudo-labels taught the linearised network, ``f0 + (f̄_t − f̄_0)``. A sequential
        session passes no ``f_bar0``: its reference is a function of the weights alone, so a
        session rebuilt with the observed points in L proposes what the continuing one does."""
        ref = self.reference_rows(la.f0_candidates, la.base_predictions(), f_bar0)
        return la.on_eval(ref), ref

    def reference_rows(
        self, f0: torch.Tensor, f_bar: torch.Tensor, f_bar0: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`references` on any rows (candidates, E, or inputs scored on a worker) from the
        trained network's outputs ``f0``, the current f̄ and f̄ when the greedy batch began."""
        return f0 if f_bar0 is None else f0 + (f_bar - f_bar0)

    def prepare(self, context: QueryContext) -> None:
        """Criterion state computed from the labelled set before scoring (none here; ``auto``
        computes its reliability): called by :meth:`lookahead`, and before a query on an
        executor, whose workers receive the prepared strategy."""

    # -- shared machinery
    #: Bytes of :meth:`score_block` intermediates per (candidate, point of E) with scalar
    #: kernels, for criteria that need no k-wide predictions (``None``: they do).
    scalar_score_bytes_per_pair: float | None = None

    def score_bytes_per_pair(self, la: Lookahead) -> float | None:
        """Bytes of :meth:`score_block` intermediates per (candidate, point of E), which sizes
        the blocks (``None``: the engine's default, a block of k-wide retrained predictions and
        their intermediates): :attr:`scalar_score_bytes_per_pair` with scalar kernels. Criteria
        that need less say so: larger blocks run their GEMMs nearer the machine's rate."""
        return None if la.full_kernel else self.scalar_score_bytes_per_pair

    def _block_size(self, la: Lookahead) -> int:
        if self.settings.block_size is not None:
            return self.settings.block_size
        return la.default_block_size(self.settings.block_memory, self.score_bytes_per_pair(la))

    def lookahead(self, context: QueryContext) -> Lookahead:
        """The linearised network of ``context.model`` on ``L ∪ S`` (the model's modes, device and
        weights are left as they were)."""
        with evaluating(context.model, context.device) as model:
            la = Lookahead.fit(
                model,
                context.x_labelled,
                context.y_labelled,
                context.x_candidates,
                settings=self.settings,
                num_classes=context.num_classes,
                progress=context.progress,
                eval_seed=context.seed,
            )
        self.prepare(context)
        return la

    def score_candidates(
        self,
        la: Lookahead,
        positions: np.ndarray | None = None,
        f_bar0: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(primary, secondary) scores of ``positions`` (default: all candidates), in that order."""
        if positions is None:
            positions = np.arange(la.num_candidates)
        positions = np.asarray(positions, dtype=np.int64)
        scan, keep = contiguous_cover(positions)
        ref_eval, ref_cand = self.references(la, f_bar0)
        ref_eval = ref_eval.to(device=la.device, dtype=_F64)
        ref_cand = ref_cand.to(device=la.device, dtype=_F64)
        primary = np.zeros(scan.size)
        secondary = np.zeros(scan.size)
        start = 0
        for block in la.iter_blocks(scan, self._block_size(la)):
            stop = start + block.size
            p, s = self.score_block(block, ref_eval, ref_cand[block.positions])
            primary[start:stop], secondary[start:stop] = p, s
            start = stop
        if keep is not None:
            primary, secondary = primary[keep], secondary[keep]
        if not (np.isfinite(primary).all() and np.isfinite(secondary).all()):
            raise FloatingPointError(f"{self.name}: look-ahead scores are not finite")
        return primary, secondary

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        budget = check_budget(budget, context.num_candidates)
        if self.executor is not None:
            return self._query_on_executor(context, budget)
        t0 = time.perf_counter()
        la = self.lookahead(context)
        t1 = time.perf_counter()
        rng = np.random.default_rng(context.seed)
        stats = CertifiedStats()
        if self.selection == "greedy":
            chosen, primary, secondary = select_greedy(
                self, la, budget, rng, self.greedy_target, stats=stats
            )
        else:
            chosen, primary, secondary = select_topk(self, la, budget, rng, stats=stats)
        t2 = time.perf_counter()
        info: dict[str, Any] = {
            "kernel": self.kernel,
            "kernel_seconds": t1 - t0,
            "score_seconds": t2 - t1,
            "jitter": la.jitter,
            "rank": la.rank,
            "num_clamped": la.num_clamped,
            "secondary_scores": secondary,
            "selection": self.selection,
            "score_precision": "fp32" if stats.rounds else "float64",
        }
        if stats.rounds:
            info["fp32"] = stats.as_info()
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=primary, info=info)

    def _query_on_executor(self, context: QueryContext, budget: int) -> QueryResult:
        """:meth:`query` with the candidate blocks scored on :attr:`executor`."""
        t0 = time.perf_counter()
        self.prepare(context)
        shipped = copy.copy(self)  # what the workers receive: prepared, without the executor
        shipped.executor = None
        with evaluating(context.model, context.device) as model:
            pool = ShardedPool(
                model,
                context.x_labelled,
                context.y_labelled,
                context.x_candidates,
                self.settings,
                self.executor,
                num_classes=context.num_classes,
                eval_seed=context.seed,
            )
        t1 = time.perf_counter()
        rng = np.random.default_rng(context.seed)
        try:
            chosen, primary, secondary = select_on_pool(
                shipped, pool, budget, rng, self.selection, self.greedy_target
            )
        finally:
            pool.close()
        t2 = time.perf_counter()
        info: dict[str, Any] = {
            "kernel": self.kernel,
            "kernel_seconds": t1 - t0,
            "score_seconds": t2 - t1,
            "jitter": 0.0,
            "rank": pool.rank,
            "num_clamped": pool.num_clamped,
            "secondary_scores": secondary,
            "selection": self.selection,
            "workers": pool.workers,
        }
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=primary, info=info)

    def pseudo_target(
        self, la: Lookahead, position: int, f_bar0: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Target ``(k,)`` a greedy pick is conditioned on (:func:`selection.pseudo_target`)."""
        return pseudo_target(self, la, position, self.greedy_target, f_bar0)

    def begin_sequential(self, context: QueryContext) -> LookaheadSession:
        """Sequential look-ahead: propose the best unlabelled candidate, observe its true label,
        update the linearised network in closed form (no SGD), repeat."""
        if context.num_candidates == 0:
            raise ValueError("the pool of candidates is empty: nothing left to query")
        return LookaheadSession(self, context)


class LookaheadSession(SequentialSession):
    """Ask/tell state of a sequential look-ahead query over one set of candidates: the first
    proposal is the batch query's first pick; each observed label conditions the linearised
    network in closed form before the next proposal."""

    def __init__(self, strategy: LookaheadStrategy, context: QueryContext) -> None:
        self.strategy = strategy
        self.context = context
        self.lookahead = strategy.lookahead(context)
        # The streaming engine keeps Σ[E, C] between steps when it fits its memory budget, so a
        # step re-scores from it (updated rank-p in place) instead of recomputing kernel blocks.
        self.covariance_cached = bool(self.lookahead.cache_covariance())
        self._chosen = np.zeros(self.lookahead.num_candidates, dtype=bool)
        self._step = 0

    @property
    def observed(self) -> list[int]:
        return list(self.lookahead.conditioned)

    def propose(self) -> tuple[int, float]:
        positions = np.flatnonzero(~self._chosen)
        if positions.size == 0:
            raise ValueError("every candidate has been labelled: nothing left to propose")
        rng = np.random.default_rng(self.context.seed + self._step)
        pick, primary, _ = pick_best(self.strategy, self.lookahead, 1, rng, positions)
        best = int(pick[0])
        return int(positions[best]), float(primary[best])

    def observe(self, position: int, label: int) -> None:
        position = int(position)
        if not 0 <= position < self._chosen.size:
            raise IndexError(f"position {position} is not a candidate (0..{self._chosen.size - 1})")
        if self._chosen[position]:
            raise ValueError(f"candidate {position} has already been observed")
        label = int(label)
        if not 0 <= label < self.lookahead.num_classes:
            raise ValueError(f"label must lie in [0, {self.lookahead.num_classes}), got {label}")
        self.lookahead.condition(position, label)
        self._chosen[position] = True
        self._step += 1

    @property
    def proposals_use_labels(self) -> bool:  # type: ignore[override]
        return self.strategy.proposals_use_labels

    def relabel_last(self, position: int, label: int) -> None:
        """The last observed candidate gets ``label`` instead (closed form, ``O(m k)``:
        :meth:`ntkal.lookahead.Lookahead.relabel_last`)."""
        label = int(label)
        if not 0 <= label < self.lookahead.num_classes:
            raise ValueError(f"label must lie in [0, {self.lookahead.num_classes}), got {label}")
        self.lookahead.relabel_last(int(position), label)


# ----------------------------------------------------------------------------- MLMOC by the eNTK
class MLMOC(LookaheadStrategy):
    """Most Likely Model Output Change, with look-ahead retraining by the empirical NTK.

    By default every candidate is scored independently against ``L`` (no greedy conditioning
    between the ``budget`` picks), as in the reference; ``selection="greedy"`` conditions on each
    pick's pseudo-label before the next; :meth:`begin_sequential` gives the sequential variant
    that conditions on each true label in closed form, with no SGD between queries.

    Parameters
    ----------
    score : {"flip", "norm", "expected"}
        Score function (see the module docstring); ``"flip"`` is the reference's.
    reference : {"f0", "base"}
        Predictions the flips are counted against and pseudo-labels taken from: the trained
        network (the reference's choice) or the linearised network retrained on ``L``. In a
        sequential session ``"f0"`` stays the trained network's outputs and ``"base"`` means
        ``f̄_t``, the linearised network retrained on L and the labels observed so far (what the
        reference code's sequential mode uses). Both are functions of the weights and the labels
        only, so a session rebuilt with the observed points in L (the learner does so when a
        taught point lies outside its session) proposes what the continuing session would.
        Within a greedy batch, ``"f0"`` is moved by the batch's pseudo-labels
        (``f0 + (f̄_t − f̄_0)``; see :func:`ntkal.strategies.selection.pseudo_target`).
    **lookahead : Any
        ``settings``, ``selection``, ``greedy_target`` and flat settings (``kernel``,
        ``eval_size``, ...), as in :class:`ntkal.strategies.lookahead.LookaheadStrategy`.

    References
    ----------
    Mohamadi, Bae & Sutherland, NeurIPS 2022, Sec. 3-4.
    """

    name = "mlmoc"

    def __init__(self, score: str = "flip", reference: str = "f0", **lookahead: Any) -> None:
        self.score, self.reference = check_score_reference(score, reference)
        super().__init__(**lookahead)

    def reference_rows(
        self, f0: torch.Tensor, f_bar: torch.Tensor, f_bar0: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.reference == "base":
            return f_bar
        return super().reference_rows(f0, f_bar, f_bar0)

    @property
    def certifies_fp32(self) -> bool:
        """The flip and norm scores on scalar kernels have certified float32 bounds."""
        return self.score in ("flip", "norm") and self.settings.kernel != "full"

    #: The flip and norm scores: the margin screen's bound, masks and (fp32 scoring) intervals.
    scalar_score_bytes_per_pair = 48.0

    def score_bytes_per_pair(self, la: Lookahead) -> float | None:
        """The ``expected`` score forms k-wide predictions: the engine's default then."""
        return None if self.score == "expected" else super().score_bytes_per_pair(la)

    def score_block(
        self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        k = ref_eval.shape[1]
        ref_cls = ref_eval.argmax(dim=1)
        margins = None if block.full_kernel else EvalMargins(block.f_bar_eval, ref_cls)
        labels: list[tuple[torch.Tensor, torch.Tensor | None]]
        if self.score in ("flip", "norm"):
            labels = [(ref_cand.argmax(dim=1), None)]
        else:
            probs = torch.softmax(ref_cand, dim=1)  # (b, k)
            labels = [
                (
                    torch.full((block.size,), c, dtype=torch.long, device=ref_cand.device),
                    probs[:, c],
                )
                for c in range(k)
            ]
        flips = torch.zeros(block.size, dtype=_F64, device=ref_cand.device)
        norms = torch.zeros_like(flips)
        for cls, weight in labels:
            f, n = flips_and_norms(block, onehot(cls, k), ref_cls, margins)
            flips += f if weight is None else weight * f
            norms += n if weight is None else weight * n
        flips_np, norms_np = flips.cpu().numpy(), norms.cpu().numpy()
        return (norms_np, flips_np) if self.score == "norm" else (flips_np, norms_np)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        result = super().query(context, budget)
        result.info.update(score=self.score, reference=self.reference)
        return result
