"""Look-ahead acquisition: MLMOC scored by the empirical NTK, and its SGD ground truth.

Mohamadi, Bae & Sutherland, "Making Look-Ahead Active Learning Strategies Feasible with Neural
Tangent Kernels", NeurIPS 2022 (arXiv:2206.12569).

MLMOC ("most likely model output change") asks, for every candidate ``x_j``: if the network were
retrained with ``x_j`` labelled by its most likely class ``ŷ_j``, how much would its predictions on
the evaluation set ``E`` (a seeded sample of the candidates, or all of them) change? :class:`MLMOC` answers in closed form with the linearised network
(:class:`ntkal.lookahead.Lookahead`); :class:`SGDLookahead` answers by actually fine-tuning a copy of
the network per candidate, which is what the closed form approximates (and is far slower).

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
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ntkal.lookahead import DEFAULT_EVAL_SIZE, Lookahead, LookaheadBlock
from ntkal.progress import progress_allowed
from ntkal.strategies.base import (QueryContext, QueryResult, SequentialSession, Strategy,
                                   check_budget, top_k)
from ntkal.strategies.forward_passes import evaluating

__all__ = ["LookaheadStrategy", "LookaheadSession", "MLMOC", "SGDLookahead", "flip_fraction",
           "output_change", "SCORES"]

SCORES = ("flip", "norm", "expected")
SELECTIONS = ("topk", "greedy")
GREEDY_TARGETS = ("most_likely", "expected")
REFERENCES = ("f0", "base")
_F64 = torch.float64


# ----------------------------------------------------------------------------- score primitives
def flip_fraction(preds: torch.Tensor, ref_classes: torch.Tensor) -> torch.Tensor:
    """Fraction of points whose argmax under ``preds`` ``(b, m, k)`` differs from ``ref_classes``
    ``(m,)``; shape ``(b,)``."""
    return (preds.argmax(dim=-1) != ref_classes.unsqueeze(0)).to(_F64).mean(dim=-1)


def output_change(preds: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``Σ_i ‖preds_i − base_i‖₂`` over the points of ``S``; shape ``(b,)``."""
    return (preds - base.unsqueeze(0)).norm(dim=-1).sum(dim=-1)


class EvalMargins:
    """Per point of E, what the flip test needs from the base predictions f̄: the gap between
    f̄ at the reference class and the best other class (negative when f̄ already disagrees with
    the reference) and a rounding scale."""

    def __init__(self, f_bar_eval: torch.Tensor, ref_cls: torch.Tensor) -> None:
        at_ref = f_bar_eval.gather(1, ref_cls[:, None])[:, 0]
        others = f_bar_eval.scatter(1, ref_cls[:, None], float("-inf"))
        self.gap = at_ref - others.max(dim=1).values if f_bar_eval.shape[1] > 1 else \
            torch.full_like(at_ref, float("inf"))
        self.scale = f_bar_eval.abs().max(dim=1).values
        self.f_bar = f_bar_eval
        self.ref_cls = ref_cls


#: Relative slack of the margin screen: a decision is taken only when it holds with this much
#: room beyond float64 rounding of f̄ + Σ_ij·coef (a few ulps of the magnitudes involved).
_SCREEN_SLACK = 1e-12


def _flips_and_norms(block: LookaheadBlock, targets: torch.Tensor, ref_cls: torch.Tensor,
                     margins: Optional[EvalMargins]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip fraction on E against ``ref_cls`` and ``Σ_i ‖f'(x_i) − f̄(x_i)‖`` per candidate.

    Scalar kernels: f'(x_i) = f̄(x_i) + Σ_ij · coef_j with one ``coef_j`` per candidate, so the
    change in "reference class minus class c" is ``Σ_ij (coef_jc' − coef_jc)``, at most
    ``|Σ_ij| · range(coef_j)`` in size. Points of E whose gap to the runner-up is larger than that
    bound cannot change class (smaller than minus it: they have changed for sure); only the
    undecided pairs get the exact k-way argmax, computed exactly as the full predictions would
    be, so the counts equal the argmax over f̄ + delta. The norm is ``‖coef_j‖ · Σ_i |Σ_ij|``.
    Full (k × k block) kernels fall back to the explicit predictions.
    """
    if margins is None:
        preds = block.retrained(targets)
        return flip_fraction(preds, ref_cls), output_change(preds, block.f_bar_eval)
    coef = block.coefficients(targets)                                          # (b, k)
    cov = block.cov                                                             # (b, e)
    e = cov.shape[1]
    # Work in the layout Σ[E, J] arrived in ((b, e) rows, or a transposed (e, b) view of a held
    # Σ): reductions then run along memory. ``ax`` is the E axis; ``per_t`` / ``per_i`` shape
    # per-candidate / per-point vectors for broadcasting.
    mat, ax = (cov, 1) if cov.stride(-1) == 1 or cov.shape[0] <= 1 else (cov.T, 0)
    per_t = (lambda v: v[:, None]) if ax == 1 else (lambda v: v[None, :])
    per_i = (lambda v: v[None, :]) if ax == 1 else (lambda v: v[:, None])
    spread = (coef.max(dim=1).values - coef.min(dim=1).values) * (1 + _SCREEN_SLACK)
    bound = mat.abs()                                                           # |Σ_ij|
    norms = bound.sum(dim=ax) * coef.norm(dim=1)
    bound.mul_(per_t(spread)).add_(per_i(_SCREEN_SLACK * margins.scale))        # + rounding room
    undecided = bound >= per_i(margins.gap.abs())
    del bound
    pairs = undecided.nonzero(as_tuple=True)
    t, i = pairs if ax == 1 else (pairs[1], pairs[0])
    neg = margins.gap < 0                               # f̄ already off the reference class
    undecided &= per_i(neg)
    counts = (int(neg.sum()) - undecided.sum(dim=ax)).to(_F64)                   # sure flips
    if t.numel():
        preds = margins.f_bar[i] + cov[t, i][:, None] * coef[t]
        changed = (preds.argmax(dim=1) != margins.ref_cls[i]).to(_F64)
        counts.index_add_(0, t, changed)
    return counts / max(1, e), norms


def _validate(score: str, reference: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")


def _onehot(classes: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes.long(), k).to(_F64)


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
    kernel : {"pseudo", "trace", "full", "last_layer"}
        eNTK variant (the pseudo-NTK is the paper's default).
    ridge, eps : float
        Relative ridge on Θ(L, L) and the relative floor for Σ_jj (see :class:`Lookahead`).
    chunk_size : int, optional
        Candidates per scoring block; default from ``memory_budget``.
    memory_budget : int
        Bytes of one scoring block's look-ahead predictions on E and their intermediates; sets
        the block size when ``chunk_size`` is not given (see ``default_chunk_size`` of the
        engine).
    implementation : str
        Passed to :func:`ntkal.kernels.empirical_ntk`.
    eval_size : int or "all"
        Size of the evaluation set E where output change is measured: a random sample of the
        candidates seeded by the query's seed (5000 by default), or ``"all"``.
    max_memory : int, optional
        Bytes the look-ahead engine may hold in total (kernel, Σ or its streamed blocks, caches);
        default half the free memory of the model's device. Decides dense vs streaming
        (:func:`ntkal.lookahead.choose_engine`).
    engine : {"auto", "dense", "streaming"}
        Force an engine (``"auto"``: :func:`ntkal.lookahead.choose_engine`).
    selection : {"topk", "greedy"}
        How a batch is chosen: ``"topk"`` scores every candidate independently against ``L`` and
        takes the best ``budget`` (the reference's batch mode); ``"greedy"`` takes the best
        candidate, conditions the linearised network on it with a pseudo-target (see
        ``greedy_target``) in closed form, rescores, and repeats: the batch analogue of the
        sequential mode, which stops a batch from spending its budget on near-copies of one point.
    greedy_target : {"most_likely", "expected"}
        The pseudo-target a greedy pick is conditioned on: the one-hot most likely class under the
        reference predictions, or the softmax of the reference outputs (the expected target).
    """

    def __init__(self, kernel: str = "pseudo", ridge: float = 0.0, eps: float = 1e-6,
                 chunk_size: Optional[int] = None, memory_budget: int = 256 * 2**20,
                 implementation: str = "auto", eval_size: Any = DEFAULT_EVAL_SIZE,
                 max_memory: Optional[int] = None, engine: str = "auto",
                 selection: str = "topk", greedy_target: str = "most_likely") -> None:
        from ntkal.kernels import IMPLEMENTATIONS, KINDS

        if kernel not in KINDS:
            raise ValueError(f"kernel must be one of {KINDS}, got {kernel!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got "
                             f"{implementation!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if greedy_target not in GREEDY_TARGETS:
            raise ValueError(f"greedy_target must be one of {GREEDY_TARGETS}, got {greedy_target!r}")
        self.selection = selection
        self.greedy_target = greedy_target
        self.kernel = kernel
        self.ridge = float(ridge)
        self.eps = float(eps)
        self.chunk_size = chunk_size
        self.memory_budget = int(memory_budget)
        self.implementation = implementation
        self.eval_size = eval_size
        self.max_memory = max_memory
        self.engine = engine

    # -- what a subclass provides
    def score_block(self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(primary, secondary) scores ``(b,)`` of the candidates of ``block`` (higher = more
        wanted; the secondary score breaks ties). ``ref_eval`` ``(e, k)`` and ``ref_cand``
        ``(b, k)`` are the reference predictions on the evaluation set and on the block."""
        raise NotImplementedError

    def references(self, la: Lookahead, f_bar0: Optional[torch.Tensor] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference predictions ``(on E, on the candidates)``: the trained network's outputs,
        moved by what labels conditioned on since ``f_bar0`` (f̄ when the session started) taught
        the linearised network. Before any conditioning this is ``f0``."""
        ref = la.f0_candidates
        if f_bar0 is not None:
            ref = ref + (la.base_predictions() - f_bar0)
        return la._on_eval(ref), ref

    # -- shared machinery
    def _chunk(self, la: Lookahead) -> int:
        if self.chunk_size is not None:
            return max(1, int(self.chunk_size))
        return la.default_chunk_size(self.memory_budget)

    def lookahead(self, context: QueryContext) -> Lookahead:
        """The linearised network of ``context.model`` on ``L ∪ S`` (the model's modes, device and
        weights are left as they were)."""
        with evaluating(context.model, context.device) as model:
            return Lookahead.fit(model, context.x_labelled, context.y_labelled,
                                 context.x_candidates, num_classes=context.num_classes,
                                 kernel=self.kernel, ridge=self.ridge, eps=self.eps,
                                 implementation=self.implementation, progress=context.progress,
                                 eval_size=self.eval_size, eval_seed=context.seed,
                                 max_memory=self.max_memory, engine=self.engine)

    def score_candidates(self, la: Lookahead, positions: Optional[np.ndarray] = None,
                         f_bar0: Optional[torch.Tensor] = None) -> tuple[np.ndarray, np.ndarray]:
        """(primary, secondary) scores of ``positions`` (default: all candidates), in that order."""
        if positions is None:
            positions = np.arange(la.num_candidates)
        positions = np.asarray(positions, dtype=np.int64)
        ref_eval, ref_cand = self.references(la, f_bar0)
        ref_eval = ref_eval.to(device=la.device, dtype=_F64)
        ref_cand = ref_cand.to(device=la.device, dtype=_F64)
        primary = np.zeros(positions.size)
        secondary = np.zeros(positions.size)
        start = 0
        for block in la.iter_blocks(positions, self._chunk(la)):
            stop = start + block.size
            p, s = self.score_block(block, ref_eval, ref_cand[block.positions])
            primary[start:stop], secondary[start:stop] = p, s
            start = stop
        if not (np.isfinite(primary).all() and np.isfinite(secondary).all()):
            raise FloatingPointError(f"{self.name}: look-ahead scores are not finite")
        return primary, secondary

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        budget = check_budget(budget, context.num_candidates)
        t0 = time.perf_counter()
        la = self.lookahead(context)
        t1 = time.perf_counter()
        rng = np.random.default_rng(context.seed)
        if self.selection == "greedy":
            chosen, primary, secondary = self.select_greedy(la, budget, rng)
        else:
            primary, secondary = self.score_candidates(la)
            chosen = top_k(primary, budget, rng, secondary=secondary)
        t2 = time.perf_counter()
        info: dict[str, Any] = {
            "kernel": self.kernel, "kernel_seconds": t1 - t0, "score_seconds": t2 - t1,
            "jitter": la.jitter, "num_clamped": la.num_clamped, "secondary_scores": secondary,
            "selection": self.selection,
        }
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=primary, info=info)

    def pseudo_target(self, la: Lookahead, position: int,
                      f_bar0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Target ``(k,)`` a greedy pick at ``position`` is conditioned on (``greedy_target``)."""
        _, ref_cand = self.references(la, f_bar0)
        ref = ref_cand[int(position)].to(_F64)
        if self.greedy_target == "expected":
            return torch.softmax(ref, dim=0)
        return _onehot(ref.argmax(), ref.shape[0])

    def select_greedy(self, la: Lookahead, budget: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Greedy batch: pick the best candidate, condition ``la`` on its pseudo-target (in place),
        rescore the rest, repeat ``budget`` times. Returns the picks in order and the first round's
        (primary, secondary) scores of every candidate."""
        f_bar0 = la.base_predictions()
        remaining = np.ones(la.num_candidates, dtype=bool)
        chosen: list[int] = []
        primary = secondary = None
        for step in range(budget):
            positions = np.flatnonzero(remaining)
            p, s = self.score_candidates(la, positions, f_bar0)
            if step == 0:
                primary, secondary = p, s
            best = int(positions[top_k(p, 1, rng, secondary=s)[0]])
            chosen.append(best)
            remaining[best] = False
            if step + 1 < budget:
                la.condition(best, self.pseudo_target(la, best, f_bar0))
        return np.asarray(chosen, dtype=np.int64), primary, secondary

    def begin_sequential(self, context: QueryContext) -> "LookaheadSession":
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
        cache = getattr(self.lookahead, "cache_covariance", None)
        self.covariance_cached = bool(cache()) if cache is not None else True
        self._f_bar0 = self.lookahead.base_predictions()
        self._chosen = np.zeros(self.lookahead.num_candidates, dtype=bool)
        self._step = 0

    @property
    def observed(self) -> list[int]:
        return list(self.lookahead.conditioned)

    def propose(self) -> tuple[int, float]:
        positions = np.flatnonzero(~self._chosen)
        if positions.size == 0:
            raise ValueError("every candidate has been labelled: nothing left to propose")
        primary, secondary = self.strategy.score_candidates(self.lookahead, positions,
                                                            self._f_bar0)
        best = top_k(primary, 1, np.random.default_rng(self.context.seed + self._step),
                     secondary=secondary)[0]
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


# ----------------------------------------------------------------------------- MLMOC by the eNTK
class MLMOC(LookaheadStrategy):
    """Most Likely Model Output Change, with look-ahead retraining by the empirical NTK.

    By default every candidate is scored independently against ``L`` (no greedy conditioning
    between the ``budget`` picks), as in the reference; ``selection="greedy"`` conditions on each
    pick's pseudo-label before the next; :meth:`begin_sequential` gives the sequential variant
    that conditions on each true label in closed form, with no SGD between queries.

    Parameters
    ----------
    kernel : {"pseudo", "trace", "full", "last_layer"}
        eNTK variant (the pseudo-NTK is the paper's default).
    score : {"flip", "norm", "expected"}
        Score function (see the module docstring); ``"flip"`` is the reference's.
    reference : {"f0", "base"}
        Predictions the flips are counted against and pseudo-labels taken from: the trained
        network (the reference's choice) or the linearised network retrained on ``L``. In a
        sequential session ``"f0"`` means ``f0 + (f̄_t − f̄_0)`` (the network moved by the observed
        labels) and ``"base"`` means ``f̄_t`` (what the reference code's sequential mode uses).
        ``"f0"`` stays the default in both modes so that a session's first proposal is the batch
        query's first pick and later steps count the same kind of flips: those caused by the new
        point and the labels observed so far, not the flips of re-fitting ``L`` itself (``f̄_0``
        vs ``f0``), which ``f̄_t`` adds for every candidate alike.
    ridge, eps, chunk_size, memory_budget, implementation, eval_size, max_memory, engine,
    selection, greedy_target
        As in :class:`LookaheadStrategy`.

    References
    ----------
    Mohamadi, Bae & Sutherland, NeurIPS 2022, Sec. 3-4.
    """

    name = "mlmoc"

    def __init__(self, kernel: str = "pseudo", score: str = "flip", reference: str = "f0",
                 ridge: float = 0.0, eps: float = 1e-6, chunk_size: Optional[int] = None,
                 memory_budget: int = 256 * 2**20, implementation: str = "auto",
                 eval_size: Any = DEFAULT_EVAL_SIZE, max_memory: Optional[int] = None,
                 engine: str = "auto", selection: str = "topk",
                 greedy_target: str = "most_likely") -> None:
        _validate(score, reference)
        super().__init__(kernel=kernel, ridge=ridge, eps=eps, chunk_size=chunk_size,
                         memory_budget=memory_budget, implementation=implementation,
                         eval_size=eval_size, max_memory=max_memory, engine=engine,
                         selection=selection, greedy_target=greedy_target)
        self.score = score
        self.reference = reference

    def references(self, la: Lookahead, f_bar0: Optional[torch.Tensor] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference == "base":
            ref = la.base_predictions()
            return la._on_eval(ref), ref
        return super().references(la, f_bar0)

    def score_block(self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
                    ) -> tuple[np.ndarray, np.ndarray]:
        k = ref_eval.shape[1]
        ref_cls = ref_eval.argmax(dim=1)
        margins = None if block.block else EvalMargins(block.f_bar_eval, ref_cls)
        if self.score in ("flip", "norm"):
            labels = [(ref_cand.argmax(dim=1), None)]
        else:
            probs = torch.softmax(ref_cand, dim=1)                              # (b, k)
            labels = [(torch.full((block.size,), c, dtype=torch.long, device=ref_cand.device),
                       probs[:, c]) for c in range(k)]
        flips = torch.zeros(block.size, dtype=_F64, device=ref_cand.device)
        norms = torch.zeros_like(flips)
        for cls, weight in labels:
            f, n = _flips_and_norms(block, _onehot(cls, k), ref_cls, margins)
            flips += f if weight is None else weight * f
            norms += n if weight is None else weight * n
        flips, norms = flips.cpu().numpy(), norms.cpu().numpy()
        return (norms, flips) if self.score == "norm" else (flips, norms)

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        result = super().query(context, budget)
        result.info.update(score=self.score, reference=self.reference)
        return result


# ----------------------------------------------------------------------------- SGD ground truth
def default_finetune_config():
    """A short warm-started fine-tune: 10 epochs of SGD with momentum on MSE at the loss's default
    rate, constant schedule, no weight decay (closest to the gradient flow the eNTK models)."""
    from ntkal.training import TrainConfig

    return TrainConfig(epochs=10, batch_size=64, lr=None, momentum=0.9, weight_decay=0.0,
                       schedule="constant", loss="mse", seed=0)


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

    def __init__(self, finetune: Any = None, score: str = "flip", reference: str = "f0",
                 max_candidates: Optional[int] = None) -> None:
        _validate(score, reference)
        self.finetune = finetune
        self.score = score
        self.reference = reference
        if max_candidates is not None and int(max_candidates) < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
        self.max_candidates = max_candidates

    def _config(self):
        return self.finetune if self.finetune is not None else default_finetune_config()

    def _finetuned_outputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           x_eval: torch.Tensor, num_classes: int, batch_size: int) -> torch.Tensor:
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
        x = torch.cat([context.x_labelled, context.x_candidates[position:position + 1]])
        y_l = context.y_labelled.long()
        y = torch.cat([y_l, torch.tensor([int(label)], dtype=torch.long, device=y_l.device)])
        return self._finetuned_outputs(context.model, x, y, context.x_candidates,
                                       context.num_classes, context.batch_size)

    def control_predictions(self, context: QueryContext) -> torch.Tensor:
        """Outputs on S of a copy fine-tuned on ``L`` alone (the SGD analogue of f̄)."""
        return self._finetuned_outputs(context.model, context.x_labelled,
                                       context.y_labelled.long(), context.x_candidates,
                                       context.num_classes, context.batch_size)

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
            f0 = predict_logits(model, context.x_candidates,
                                batch_size=context.batch_size).detach().to(_F64).cpu()
        control = self.control_predictions(context)
        ref = f0 if self.reference == "f0" else control
        ref_cls = ref.argmax(dim=1)
        probs = torch.softmax(ref, dim=1)
        primary = np.full(m, -np.inf)
        secondary = np.full(m, -np.inf)
        iterator = positions
        if progress_allowed(context.progress):
            from rich.progress import track

            iterator = track(positions, description="SGD look-ahead")
        for j in iterator:
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
        info = {"score": self.score, "reference": self.reference, "seconds": seconds,
                "scored_positions": positions, "secondary_scores": secondary}
        return QueryResult(indices=np.asarray(chosen, dtype=np.int64), scores=primary, info=info)
