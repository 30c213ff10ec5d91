"""Whole-pool look-ahead scoring on block executors: candidate blocks spread over workers.

A pool of millions of candidates is scored block by block anyway (the streaming engine,
:class:`ntkal.lookahead.StreamingLookahead`); here the blocks go to the workers of a
:class:`ntkal.kernels.distributed.BlockExecutor` (Ray actors, or in-process). Each worker builds,
once per map, a streaming engine whose candidates are the evaluation set E alone (E = all of its
candidates), from the same labelled set L: the factor of L's kernel, the coefficients ``w``, the
features of E and ``V_E``. It then scores inputs that are *not* its candidates: for a block J of
pool inputs it featurises J and forms

    f0_J,  V_J = R⁻¹ Θ(L⁺, J),  f̄_J = f0_J + V_Jᵀ w,  raw Σ_jj = Θ_jj − ‖V_j‖²,
    Σ[E, J] = Θ(E, J) − V_Eᵀ V_J,

with the pivots clamped by the engine's eps rule, which is what the single-process engine computes
for those candidates (Mohamadi, Bae & Sutherland, NeurIPS 2022, Sec. 3). One value of the
single-process engine depends on the whole candidate set: the fallback floor of a candidate with
zero prior variance, ``eps`` times the mean prior Θ_jj over every candidate
(:func:`ntkal.lookahead.span.clamp_pivots`). The first pass returns the prior sums of its parts;
the few candidates (if any) with zero prior variance are then rescored with the pool's mean. The
labelled-set ridge is relative to L's own kernel and the rank tolerance of its factor to L's rows,
so neither depends on the candidates; ``jitter`` is always 0.

Greedy batches condition every worker on each pick's pseudo-label: the pick is an input that is not
a worker's candidate, so the worker conditions its E-engine on the input itself
(:func:`condition_on_input`; the factor, ``V_E``, f̄ on E and ``w`` grow as in
:meth:`ntkal.lookahead.StreamingLookahead.condition`). A worker keeps its engine between maps of one
pool (one engine per process, keyed by the pool and device), so a greedy step costs it one
conditioning pass over E plus its share of the candidates, not a rebuild.

The strategy travels to the workers as it is, prepared by the coordinator (e.g. ``auto``'s
reliability): it must provide ``score_block(block, ref_eval, ref_cand)`` and
``reference_rows(f0, f_bar, f_bar0)`` (:class:`BlockScorer`).
"""

from __future__ import annotations

import copy
import math
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ntkal.lookahead.block import _DTYPE, LookaheadBlock, eval_positions_for
from ntkal.lookahead.engine import _output_width, onehot_targets
from ntkal.lookahead.settings import LookaheadSettings
from ntkal.lookahead.span import BlockRows, clamp_pivots, mean_prior, warn_clamped
from ntkal.lookahead.streaming import StreamingLookahead

__all__ = [
    "BlockScorer",
    "ShardedPool",
    "PoolScoring",
    "eval_engine",
    "outside_blocks",
    "condition_on_input",
    "PART_BYTES",
]

#: Largest share of the pool's inputs one part carries (bytes): parts travel through the
#: executor's object store one per worker at a time.
PART_BYTES = 32 << 20


class BlockScorer(Protocol):
    """What scoring needs of a criterion (every look-ahead strategy is one)."""

    @property
    def name(self) -> str: ...

    def score_block(
        self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def reference_rows(
        self, f0: torch.Tensor, f_bar: torch.Tensor, f_bar0: torch.Tensor | None = None
    ) -> torch.Tensor: ...


# ----------------------------------------------------------------------------- outside inputs
def _outside_rows(
    engine: StreamingLookahead, x: torch.Tensor, fallback: float
) -> tuple[Any, torch.Tensor, BlockRows]:
    """Features, coordinates ``V_J`` ``(r, b p)`` and per-input values of inputs ``x`` that are
    not candidates of ``engine`` (as its candidate pass computes them for candidates)."""
    fj = engine._features(x)
    b, k, p = int(x.shape[0]), engine.num_classes, engine._p
    f0 = torch.cat([lg for _, _, lg in fj], 0).to(_DTYPE)
    prior = engine._diagonal(fj)
    n_rows = int(engine._chol.shape[0])
    if n_rows:
        v = engine._solve(engine._labelled_kernel(fj))
        f_bar = f0 + (v.T @ engine._w).reshape(b, k)
        if not engine.full_kernel:
            raw = prior - (v * v).sum(0)
        else:
            vb = v.reshape(n_rows, b, p).transpose(0, 1)  # (b, N, p)
            raw = prior - vb.transpose(1, 2) @ vb
    else:
        v = torch.zeros(0, b * p, dtype=_DTYPE, device=engine.device)
        f_bar, raw = f0, prior.clone()
    pivot, evecs, clamped = clamp_pivots(raw, prior, engine.eps, fallback)
    return fj, v, BlockRows(raw, prior, pivot, evecs, clamped, f_bar, f0)


def outside_blocks(
    engine: StreamingLookahead,
    x: torch.Tensor,
    positions: torch.Tensor,
    *,
    fallback: float,
    block_size: int,
) -> Iterator[tuple[LookaheadBlock, torch.Tensor, BlockRows]]:
    """Yield ``(block, its coordinates V_J, its per-input values)`` for inputs ``x`` that are
    not candidates of ``engine`` (labelled ``positions`` in the blocks), ``block_size`` at a
    time: the values
    :meth:`StreamingLookahead.iter_blocks` gives candidates, with ``fallback`` the mean prior
    variance of the whole candidate set (:func:`ntkal.lookahead.span.clamp_pivots`)."""
    f_bar_eval, f0_eval = engine.on_eval(engine._f_bar), engine.f0_eval
    step = max(1, int(block_size))
    for s in range(0, int(x.shape[0]), step):
        xb = x[s : s + step]
        fj, v, rows = _outside_rows(engine, xb, fallback)
        cov = engine._cov_from_features(fj, v if engine._chol.shape[0] else None)
        cov = engine._as_block_cov(cov, int(xb.shape[0]))
        jb = positions[s : s + step]
        yield engine._block_from_rows(jb, cov, rows, f_bar_eval, f0_eval, v), v, rows


def condition_on_input(
    engine: StreamingLookahead, x: torch.Tensor, target: torch.Tensor, fallback: float = 0.0
) -> None:
    """Add ``(x, target)`` (one input ``(1, ...)`` that is not a candidate, target ``(k,)``) to
    the linearised network's training set, as :meth:`StreamingLookahead.condition` does for a
    candidate. ``fallback`` does not change the step (a point with zero prior variance is in the
    span for any positive floor)."""
    fj, v, rows = _outside_rows(engine, x, fallback)
    y = target.reshape(1, engine.num_classes).to(device=engine.device, dtype=_DTYPE)
    step = engine._step_from(rows.raw, rows.prior, bool(rows.clamped[0]), rows.f_bar, y, v)
    engine._condition_on(fj, v, step, None)


def eval_engine(
    model: nn.Module,
    x_labelled: torch.Tensor,
    y_onehot: torch.Tensor,
    x_eval: torch.Tensor,
    settings: LookaheadSettings,
    pool_size: int,
) -> StreamingLookahead:
    """The streaming engine on ``model``'s device whose candidates are E (``x_eval``, all of them
    the evaluation set), from labelled set ``(x_labelled, y_onehot)``; its featuriser is costed
    for the pool's size, as the single-process engine's is."""
    from ntkal.kernels import make_featuriser
    from ntkal.kernels.blocking import default_max_memory

    fz = make_featuriser(
        model,
        x_eval[:1],
        kind=settings.kernel,
        implementation=settings.implementation,
        dtype=_DTYPE,
        n1=int(x_eval.shape[0]),
        n2=int(pool_size),
    )
    budget = settings.max_memory or default_max_memory(fz.device)
    with warnings.catch_warnings():  # about E's own pivots, which nothing here reads
        warnings.simplefilter("ignore", RuntimeWarning)
        engine = StreamingLookahead(
            fz,
            x_labelled,
            y_onehot.to(fz.device),
            x_eval,
            eval_positions=np.arange(int(x_eval.shape[0])),
            ridge=settings.ridge,
            eps=settings.eps,
            block_size=settings.block_size,
            max_memory=budget,
            kernel=settings.kernel,
        )
    engine._clamp_warned = True
    return engine


# ----------------------------------------------------------------------------- the block job
@dataclass
class _EvalState:
    """A worker's E-engine, how many picks it has been conditioned on, and what greedy
    references need from before the first pick (f̄ on E, ``w`` and its rows)."""

    engine: StreamingLookahead
    steps: int
    f_bar0_eval: torch.Tensor
    w0: torch.Tensor
    rows0: int

    def f_bar0(self, f0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """f̄ before the first pick of inputs with f0 ``(b, k)`` and coordinates ``v``."""
        if not self.rows0:
            return f0
        return f0 + (v[: self.rows0].T @ self.w0).reshape(f0.shape)


#: This process's E-engine: one at a time, for the pool (and device) last scored here.
_STATE: dict[str, Any] = {}


@dataclass
class PoolScoring:
    """Block job (:class:`ntkal.kernels.distributed.BlockJob`): scores of parts of the pool.

    ``job(part)`` with ``part = (positions (b,), inputs (b, ...))`` returns a dict: ``primary``,
    ``secondary`` (NumPy ``(b,)``), ``clamped`` (how many are in the labelled span), ``prior_sum``
    (sum of their mean prior variances), ``zero_prior`` (positions with zero prior variance) and
    ``rank``. The job holds the model, L, E's inputs, the settings, the prepared criterion, the
    picks conditioned on so far and, once known, the pool's mean prior variance.
    """

    key: str
    model: nn.Module
    x_labelled: torch.Tensor
    y_onehot: torch.Tensor
    x_eval: torch.Tensor
    settings: LookaheadSettings
    pool_size: int
    scorer: Any = None
    history: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    greedy: bool = False
    prior_mean: float | None = None
    device: str = "cpu"

    def to(self, device: torch.device) -> PoolScoring:
        moved = copy.copy(self)
        moved.device = str(device)
        return moved

    def state(self) -> _EvalState:
        """This process's E-engine for the pool, built once and conditioned on new picks."""
        tag = f"{self.key}@{self.device}"
        st = _STATE.get(tag)
        if st is None or st.steps > len(self.history):
            _STATE.clear()  # one engine per process: the previous pool's goes
            model = copy.deepcopy(self.model).to(self.device)
            engine = eval_engine(
                model, self.x_labelled, self.y_onehot, self.x_eval, self.settings, self.pool_size
            )
            st = _EvalState(engine, 0, engine.base_predictions(), engine._w.clone(), 0)
            st.rows0 = int(engine._chol.shape[0])
            _STATE[tag] = st
        for x, target in self.history[st.steps :]:
            condition_on_input(st.engine, x, target)
            st.steps += 1
        return st

    def _fallback(self, engine: StreamingLookahead) -> float:
        # before the pool's mean is known, E's stands in (its zero-prior inputs are rescored)
        return self.prior_mean if self.prior_mean is not None else mean_prior(engine._prior)

    def references(self, st: _EvalState, rows_f0, rows_f_bar, v) -> torch.Tensor:
        f_bar0 = st.f_bar0(rows_f0, v) if self.greedy else None
        return self.scorer.reference_rows(rows_f0, rows_f_bar, f_bar0).to(_DTYPE)

    def reference_at(self, x: torch.Tensor) -> torch.Tensor:
        """The criterion's reference prediction ``(k,)`` at one input ``(1, ...)``."""
        st = self.state()
        _, v, rows = _outside_rows(st.engine, x, self._fallback(st.engine))
        return self.references(st, rows.f0, rows.f_bar, v)[0]

    def __call__(self, part: tuple[np.ndarray, torch.Tensor]) -> dict:
        positions, x = part
        st = self.state()
        la = st.engine
        fallback = self._fallback(la)
        f0_e, f_bar_e = la.f0_candidates, la.base_predictions()
        f_bar0_e = st.f_bar0_eval if self.greedy else None
        ref_eval = self.scorer.reference_rows(f0_e, f_bar_e, f_bar0_e).to(_DTYPE)
        b = int(x.shape[0])
        primary, secondary = np.zeros(b), np.zeros(b)
        clamped, prior_sum = 0, 0.0
        zero: list[int] = []
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64), device=la.device)
        start = 0
        for block, v, rows in outside_blocks(
            la, x, pos, fallback=fallback, block_size=self._block_size(la, b)
        ):
            stop = start + block.size
            ref_cand = self.references(st, block.f0_cand, block.f_bar_cand, v)
            p, s = self.scorer.score_block(block, ref_eval, ref_cand)
            primary[start:stop], secondary[start:stop] = p, s
            per = rows.prior if rows.prior.ndim == 1 else rows.prior.diagonal(dim1=1, dim2=2)
            per = per if per.ndim == 1 else per.mean(dim=1)
            prior_sum += float(per.sum())
            clamped += int(rows.clamped.sum())
            zero.extend(int(j) for j in block.positions[per <= 0].tolist())
            start = stop
        return {
            "primary": primary,
            "secondary": secondary,
            "clamped": clamped,
            "prior_sum": prior_sum,
            "zero_prior": np.asarray(zero, dtype=np.int64),
            "rank": la.rank,
        }

    def _block_size(self, la: StreamingLookahead, b: int) -> int:
        if self.settings.block_size is not None:
            return int(self.settings.block_size)
        room = min(float(self.settings.block_memory), la.max_memory - la.resident_bytes())
        return int(max(1, min(b, room // la.block_bytes_per_candidate())))


# ----------------------------------------------------------------------------- the coordinator
class _Parts(Sequence):
    """Parts ``(positions, inputs)`` of the pool, built when an executor reaches them (so only the
    parts in flight are copied out of the pool)."""

    def __init__(self, x: torch.Tensor, positions: np.ndarray, size: int) -> None:
        self.x, self.positions, self.size = x, positions, max(1, int(size))

    def __len__(self) -> int:
        return -(-int(self.positions.size) // self.size)

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.size, min(int(self.positions.size), (i + 1) * self.size)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not 0 <= i < len(self):
            raise IndexError(i)
        a, b = self.bounds(i)
        pos = self.positions[a:b]
        # a copy, not a view: a pickled view would carry the whole pool's storage
        return pos, self.x.index_select(0, torch.as_tensor(pos))


class ShardedPool:
    """Look-ahead scoring of a whole pool of candidates on a block executor.

    The coordinator's side of :class:`PoolScoring`: it draws E from the pool (as
    :meth:`ntkal.lookahead.Lookahead.fit` does), ships the model, L, E's inputs and the criterion
    once per map, cuts the candidates into parts, and assembles the scores. Selection (top-k,
    greedy) is the strategies' (:func:`ntkal.strategies.selection.select_on_pool`).

    Parameters
    ----------
    model : nn.Module
        The trained network (a CPU copy in eval mode is what travels).
    x_labelled, y_labelled, x_candidates
        As for :meth:`ntkal.lookahead.Lookahead.fit`.
    settings : LookaheadSettings
        Kernel, ridge, eps, implementation, eval_size, max_memory (each worker's budget; default
        half the free memory of its device), block_size / block_memory (blocks within a part);
        ``engine`` is ignored (the workers always stream).
    executor : BlockExecutor
        :class:`ntkal.kernels.distributed.SerialBlockExecutor` or ``RayBlockExecutor``.
    num_classes : int, optional
        Checked against the model's output width.
    eval_seed : int
        Seed of E's sample.
    part_size : int, optional
        Candidates per part (default: four parts per worker, each at most :data:`PART_BYTES` of
        inputs).
    """

    def __init__(
        self,
        model: nn.Module,
        x_labelled,
        y_labelled,
        x_candidates,
        settings: LookaheadSettings,
        executor,
        *,
        num_classes: int | None = None,
        eval_seed: int = 0,
        part_size: int | None = None,
    ) -> None:
        if not callable(getattr(executor, "map", None)):
            raise TypeError(
                "executor must be a block executor with map(job, parts) (SerialBlockExecutor or "
                f"RayBlockExecutor from ntkal.kernels.distributed), got {type(executor).__name__}"
            )
        if part_size is not None and (isinstance(part_size, bool) or int(part_size) < 1):
            raise ValueError(f"part_size must be a positive int, got {part_size!r}")
        x_c, x_l = torch.as_tensor(x_candidates), torch.as_tensor(x_labelled)
        m, n = int(x_c.shape[0]), int(x_l.shape[0])
        if m == 0:
            raise ValueError("x_candidates is empty: nothing to look ahead on")
        if n and tuple(x_l.shape[1:]) != tuple(x_c.shape[1:]):
            raise ValueError(
                f"x_labelled has per-example shape {tuple(x_l.shape[1:])}, x_candidates "
                f"{tuple(x_c.shape[1:])}"
            )
        if int(torch.as_tensor(y_labelled).shape[0]) != n:
            raise ValueError("x_labelled and y_labelled must have the same length")
        k = _output_width(model, x_c, num_classes)
        self.executor, self.settings = executor, settings
        self.num_candidates, self.num_classes = m, k
        self.eval_positions = eval_positions_for(m, settings.eval_size, eval_seed)
        self.workers = max(1, int(getattr(executor, "workers", 1)))
        per_input = max(1, x_c[0].numel() * x_c.element_size())
        self.part_size = part_size
        self._part_cap = max(1, PART_BYTES // per_input)
        self._x = x_c
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        shipped = copy.deepcopy(model).cpu().eval()
        self._job = PoolScoring(
            key=uuid.uuid4().hex,
            model=shipped,
            x_labelled=x_l.detach().cpu(),
            y_onehot=onehot_targets(y_labelled, k, "cpu"),
            x_eval=x_c.index_select(0, torch.as_tensor(self.eval_positions)).detach().cpu(),
            settings=settings,
            pool_size=m,
            device=str(device),
        )
        self.num_clamped = 0
        self.rank = 0
        self._warned = False

    # -- scoring
    def _parts(self, positions: np.ndarray) -> _Parts:
        if self.part_size:
            return _Parts(self._x, positions, self.part_size)
        size = max(1, math.ceil(positions.size / (4 * self.workers)))
        return _Parts(self._x, positions, min(size, self._part_cap))

    def _run(self, job: PoolScoring, positions: np.ndarray) -> list[dict]:
        parts = self._parts(positions)
        out: list[dict | None] = [None] * len(parts)
        for index, result in self.executor.map(job, parts):
            if not 0 <= int(index) < len(parts) or out[int(index)] is not None:
                raise RuntimeError(f"the executor returned part {index} twice or out of range")
            out[int(index)] = result
        missing = [i for i, r in enumerate(out) if r is None]
        if missing:
            raise RuntimeError(
                f"the executor returned {len(parts) - len(missing)} of {len(parts)} parts "
                f"(missing: {missing[:5]})"
            )
        return [r for r in out if r is not None]

    def score(
        self, scorer: BlockScorer, positions=None, *, greedy: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(primary, secondary) scores of candidate ``positions`` (sorted; default: all) under
        the picks conditioned on so far; ``greedy``: references move with the batch's picks
        (``f_bar0`` of :meth:`LookaheadStrategy.references`). The first call must cover every
        candidate: it fixes the pool's mean prior variance."""
        m = self.num_candidates
        pos = np.arange(m) if positions is None else np.unique(np.asarray(positions, np.int64))
        if pos.size == 0:
            raise ValueError("no candidate positions to score")
        if pos[0] < 0 or pos[-1] >= m:
            raise IndexError(f"candidate positions must be integers in [0, {m})")
        if self._job.prior_mean is None and pos.size != m:
            raise ValueError("the first scoring pass must cover every candidate")
        job = copy.copy(self._job)
        job.scorer, job.greedy, job.history = scorer, bool(greedy), list(self._job.history)
        results = self._run(job, pos)
        primary = np.concatenate([r["primary"] for r in results])
        secondary = np.concatenate([r["secondary"] for r in results])
        if self._job.prior_mean is None:
            self._job.prior_mean = sum(r["prior_sum"] for r in results) / m
            zero = np.concatenate([r["zero_prior"] for r in results])
            if zero.size:  # their floor is eps times the pool's mean: rescore them with it
                job.prior_mean = self._job.prior_mean
                again = self._run(job, zero)
                at = np.searchsorted(pos, zero)
                primary[at] = np.concatenate([r["primary"] for r in again])
                secondary[at] = np.concatenate([r["secondary"] for r in again])
        if primary.shape != (pos.size,) or secondary.shape != (pos.size,):
            raise RuntimeError("the executor's parts do not add up to the candidates scored")
        self.num_clamped = int(sum(r["clamped"] for r in results))
        self.rank = int(results[-1]["rank"])
        if self.num_clamped and not self._warned:
            self._warned = True
            warn_clamped(self.num_clamped, self.settings.eps, stacklevel=3)
        if not (np.isfinite(primary).all() and np.isfinite(secondary).all()):
            raise FloatingPointError(f"{scorer.name}: look-ahead scores are not finite")
        return primary, secondary

    # -- greedy batches
    def reference_at(self, scorer: BlockScorer, position: int) -> torch.Tensor:
        """The criterion's reference prediction ``(k,)`` at candidate ``position`` within a
        greedy batch (computed here, on this process's E-engine)."""
        job = copy.copy(self._job)
        job.scorer, job.greedy = scorer, True
        j = int(position)
        return job.reference_at(self._x[j : j + 1].detach().cpu())

    def condition(self, position: int, target: torch.Tensor) -> None:
        """Condition the linearised network on candidate ``position`` with ``target`` ``(k,)``:
        every later scoring pass (each worker, and :meth:`reference_at`) includes it."""
        j = int(position)
        if not 0 <= j < self.num_candidates:
            raise IndexError(f"position {j} is not a candidate (0..{self.num_candidates - 1})")
        t = torch.as_tensor(target, dtype=_DTYPE).reshape(-1).cpu()
        if t.shape != (self.num_classes,):
            raise ValueError(f"target must have {self.num_classes} values, got {tuple(t.shape)}")
        self._job.history.append((self._x[j : j + 1].detach().cpu().clone(), t))

    def close(self) -> None:
        """Drop this process's E-engine of the pool (workers drop theirs with the next pool)."""
        for tag in [t for t in _STATE if t.startswith(self._job.key)]:
            del _STATE[tag]
