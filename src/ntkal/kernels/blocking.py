"""Memory budget -> block sizes, and the blocked (optionally symmetric) kernel driver.

Every engine reduces a block of inputs to per-example *features* (Jacobians, or layer inputs and
output sensitivities) and contracts a row block's features with a column block's. This module owns
the loop over blocks, so no engine ever holds more than two blocks of features at once, and the
symmetric case computes each off-diagonal block once and mirrors it.
"""

from __future__ import annotations

import contextvars
import math
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ntkal.progress import progress_allowed

__all__ = [
    "default_max_memory",
    "free_memory",
    "plan_blocks",
    "BlockPlan",
    "run_blocked",
    "PRECISIONS",
    "gram_precision",
    "current_gram_precision",
    "cast_features",
]

#: Fraction of the free memory a kernel call may use by default.
MEMORY_FRACTION = 0.5


def _free_host_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 4 << 30


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: ``torch.cuda.mem_get_info`` on CUDA, else the host's
    ``MemAvailable`` from ``/proc/meminfo`` (``sysconf`` elsewhere)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return _free_host_memory()


def default_max_memory(device: torch.device) -> int:
    """Bytes a kernel call may use on ``device`` for its working set (features and contraction
    intermediates, not the output kernel): a fraction of :func:`free_memory`."""
    return int(free_memory(device) * MEMORY_FRACTION)


@dataclass(frozen=True)
class BlockPlan:
    """Block sizes chosen for a call.

    Attributes
    ----------
    rows, cols : int
        Examples per row / column block.
    cache_cols : bool
        Whether every column block's features fit at once (computed once, reused for all rows).
    """

    rows: int
    cols: int
    cache_cols: bool


def plan_blocks(
    n1: int,
    n2: int,
    bytes_per_example: float,
    bytes_per_pair: float,
    max_memory: int,
    *,
    transient_per_example: float = 0.0,
    symmetric: bool = False,
    max_block: int = 1024,
) -> BlockPlan:
    """Largest square-ish blocks whose features and pairwise intermediates fit ``max_memory``.

    Parameters
    ----------
    n1, n2 : int
        Number of row / column examples.
    bytes_per_example : float
        Feature bytes kept per example (what a contraction reads).
    bytes_per_pair : float
        Bytes of contraction intermediates and output per (row, column) pair.
    max_memory : int
        Budget in bytes.
    transient_per_example : float
        Extra bytes per example while features are being computed (activations, autograd graph).
    symmetric : bool
        Θ(x, x): blocks are capped at about n/4 so that most of the work sits in off-diagonal
        blocks, which are computed once and mirrored.
    max_block : int
        Upper bound on a block; beyond ~1000 examples BLAS gains nothing and memory traffic grows.

    Returns
    -------
    BlockPlan
    """
    n1, n2 = max(int(n1), 1), max(int(n2), 1)
    budget = max(float(max_memory), 1.0)
    per_ex = float(bytes_per_example) + float(transient_per_example)
    # Can every column's features stay resident (computed once)? Leave half the budget for rows.
    all_cols = n2 * float(bytes_per_example)
    cache_cols = all_cols <= 0.5 * budget
    left = budget - all_cols if cache_cols else budget

    def fits(b1: int, b2: int) -> bool:
        col_cost = 0.0 if cache_cols else b2 * per_ex
        return b1 * per_ex + col_cost + b1 * b2 * float(bytes_per_pair) <= left

    # Solve b^2 q + 2 b e <= M for a square block, then clamp and grow the row block if it fits.
    q, e = float(bytes_per_pair), per_ex * (1 if cache_cols else 2)
    if q > 0:
        b = int((-e + math.sqrt(e * e + 4 * q * left)) / (2 * q))
    else:
        b = int(left / max(e, 1.0))
    cap = max_block
    if symmetric:
        cap = min(cap, max(64, -(-n1 // 4)))
    b = max(1, min(b, max(n1, n2), cap))
    b1, b2 = min(b, n1), min(b, n2)
    while b1 > 1 and not fits(b1, b2):
        b1 = max(1, b1 // 2)
        b2 = max(1, min(b2, b1) if not cache_cols else b2)
    return BlockPlan(rows=max(1, b1), cols=max(1, b2), cache_cols=cache_cols)


#: Reduced precisions for the Gram products (``empirical_ntk(precision=...)``); the kernel itself
#: is still accumulated in its own dtype (float64 by default), one Gram product at a time.
#: ``fp32``: float32 features and matmuls. ``tf32``: the same with TF32 tensor-core matmuls
#: (CUDA only; 10-bit mantissa inputs, float32 accumulation). ``bf16``: features rounded to
#: bfloat16 (8-bit mantissa) before each Gram product.
PRECISIONS = ("fp32", "tf32", "bf16")

_GRAM_PRECISION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ntkal_gram_precision", default=None
)


@contextmanager
def gram_precision(precision: str | None) -> Iterator[None]:
    """Within the block, :func:`run_blocked` contracts features in ``precision`` (one of
    :data:`PRECISIONS`; ``None``: in the features' own dtype). Set by ``empirical_ntk``, and
    inherited by any engine that drives :func:`run_blocked` inside it."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS} or None")
    token = _GRAM_PRECISION.set(precision)
    try:
        yield
    finally:
        _GRAM_PRECISION.reset(token)


def current_gram_precision() -> str | None:
    """The precision set by the innermost :func:`gram_precision` (``None`` outside one)."""
    return _GRAM_PRECISION.get()


def cast_features(feats: Any, dtype: torch.dtype) -> Any:
    """``feats`` with every floating tensor cast to ``dtype``: tensors, lists / tuples of them,
    and objects with a ``cast(dtype)`` method (an engine's feature record); anything else as is."""
    if isinstance(feats, torch.Tensor):
        return feats.to(dtype) if feats.is_floating_point() else feats
    if isinstance(feats, (list, tuple)):
        return type(feats)(cast_features(f, dtype) for f in feats)
    cast = getattr(feats, "cast", None)
    return cast(dtype) if callable(cast) else feats


@contextmanager
def _matmul_precision(precision: str | None, device: torch.device) -> Iterator[None]:
    """TF32 matmuls on for ``tf32`` and off for ``fp32`` (CUDA; restored afterwards)."""
    if device.type != "cuda" or precision not in ("tf32", "fp32"):
        yield
        return
    on = precision == "tf32"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _slices(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def run_blocked(
    featurise: Callable[[torch.Tensor], tuple[Any, torch.Tensor]],
    contract: Callable[[Any, Any, torch.Tensor], None],
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    block_shape: tuple[int, ...],
    plan: BlockPlan,
    dtype: torch.dtype,
    device: torch.device,
    progress: bool = False,
    description: str = "eNTK",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assemble a kernel block by block.

    Parameters
    ----------
    featurise : callable
        ``x_block -> (features, logits)``.
    contract : callable
        ``(row_features, col_features, dest)`` adds the kernel block into ``dest``, a zeroed
        ``(b1, b2, *block_shape)`` view of the output in ``dtype`` (no temporary full block).
    x1, x2 : Tensor
        Inputs; ``x2=None`` is the symmetric case (upper blocks computed, lower ones mirrored).
    block_shape : tuple of int
        Trailing kernel shape: ``()`` for scalar kernels, ``(k, k)`` for full ones.
    plan : BlockPlan
    dtype, device
        The kernel is accumulated in ``dtype`` on ``device``.
    progress : bool
        Show a rich progress bar over blocks.

    Notes
    -----
    Inside :func:`gram_precision` the features are cast once per block (``bf16``: to bfloat16;
    ``fp32`` / ``tf32``: to float32) and contracted with that matmul precision.

    Returns
    -------
    kernel, f1, f2 : Tensor
        ``f2`` is ``f1`` in the symmetric case.
    """
    symmetric = x2 is None
    xc = x1 if x2 is None else x2
    n1, n2 = int(x1.shape[0]), int(xc.shape[0])
    if symmetric:
        size = min(plan.rows, plan.cols)
        rows = cols = _slices(n1, size)
    else:
        rows, cols = _slices(n1, plan.rows), _slices(n2, plan.cols)
    pairs = [(i, j) for i in range(len(rows)) for j in range(len(cols)) if not symmetric or j >= i]
    # Every entry is written exactly once (computed or mirrored), so no zero fill of the whole.
    out = torch.empty((n1, n2, *block_shape), dtype=dtype, device=device)
    f_rows: list[torch.Tensor | None] = [None] * len(rows)
    f_cols: list[torch.Tensor | None] = [None] * len(cols)
    cache: dict[int, Any] = {}
    precision = current_gram_precision()
    featurise = _in_gram_precision(featurise, precision)

    def col_features(j: int) -> Any:
        if j in cache:
            return cache[j]
        feats, logits = featurise(xc[cols[j]])
        f_cols[j] = logits
        if plan.cache_cols:
            cache[j] = feats
        return feats

    bar, task = _start_bar(progress, description, len(pairs))
    matmul_mode = ExitStack()
    matmul_mode.enter_context(_matmul_precision(precision, torch.device(device)))
    try:
        for i, rs in enumerate(rows):
            row_feats, logits = featurise(x1[rs])
            f_rows[i] = logits
            if symmetric:
                f_cols[i] = logits
                if plan.cache_cols:
                    cache[i] = row_feats
            for j in range(i if symmetric else 0, len(cols)):
                cs = cols[j]
                dest = out[rs, cs]
                dest.zero_()
                if symmetric and j == i:
                    contract(row_feats, row_feats, dest)
                    # Exactly symmetric diagonal blocks (Cholesky downstream relies on it).
                    dest.copy_(0.5 * (dest + mirror(dest)))
                else:
                    contract(row_feats, col_features(j), dest)
                    if symmetric:
                        out[cs, rs] = mirror(dest)
                if bar is not None:
                    bar.advance(task)
    finally:
        matmul_mode.close()
        if bar is not None:
            bar.stop()
    for j in range(len(cols)):
        if f_cols[j] is None:  # x1 is empty: no row block ran, but f2 is still wanted
            _, f_cols[j] = featurise(xc[cols[j]])
    return (out, *_joined_logits(f_rows, f_cols, symmetric))


def _in_gram_precision(featurise: Callable, precision: str | None) -> Callable:
    """``featurise`` with its features cast to the Gram dtype of ``precision`` (unchanged for
    ``None``): once per block, not once per contraction."""
    if precision is None:
        return featurise
    gram_dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def cast(x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        feats, logits = featurise(x)
        return cast_features(feats, gram_dtype), logits

    return cast


def _start_bar(progress: bool, description: str, total: int):
    """A started transient rich progress bar and its task, or ``(None, None)``."""
    if not progress_allowed(progress):
        return None, None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(description, total=total)
    bar.start()
    return bar, task


def _joined_logits(
    f_rows: list, f_cols: list, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f1, f2)`` from the per-block logits; an empty side gets ``(0, k)`` like the other
    side's, not a bare ``(0,)``."""
    f1 = torch.cat(f_rows, 0) if f_rows else None
    f2 = f1 if symmetric else (torch.cat(f_cols, 0) if f_cols else None)
    like = f1 if f1 is not None else f2
    if f1 is None:
        f1 = like.new_zeros((0, *like.shape[1:])) if like is not None else torch.zeros(0, 0)
    if f2 is None:
        f2 = f1.new_zeros((0, *f1.shape[1:]))
    return f1, f2


def mirror(blk: torch.Tensor) -> torch.Tensor:
    """Θ(x', x) from Θ(x, x'): swap the example axes and, for ``(b1, b2, k, k)`` blocks, the
    class axes."""
    blk = blk.transpose(0, 1)
    return blk.transpose(2, 3) if blk.ndim == 4 else blk
