"""One validated description of the linearised network a look-ahead criterion is scored on.

BoTorch keeps the model, the acquisition function and the optimiser of the acquisition function
apart; here :class:`LookaheadSettings` is the model part (which kernel, how the labelled solve is
regularised, where output change is measured, how much memory the engine may hold), checked once
when it is built, so a bad value fails where it is written (a constructor call or a config file)
and not at the first query, after a round of training.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ntkal.arguments import as_choice, as_float, as_int, as_optional_int

__all__ = [
    "LookaheadSettings",
    "ENGINES",
    "DEFAULT_EVAL_SIZE",
    "DEFAULT_BLOCK_MEMORY",
    "DEPRECATED_NAMES",
    "SCORE_PRECISIONS",
]

#: Look-ahead engines: ``"auto"`` lets :func:`ntkal.lookahead.choose_engine` decide.
ENGINES = ("auto", "dense", "streaming")
#: Arithmetic of the streaming engine's scoring blocks: ``"float64"``, or ``"fp32"`` with every
#: pick certified equal to float64 (:mod:`ntkal.strategies.certified`).
SCORE_PRECISIONS = ("float64", "fp32")
#: Default size of the evaluation set E (a seeded random sample of the candidates).
DEFAULT_EVAL_SIZE = 5000
#: Default bytes of one block of look-ahead predictions and their intermediates.
DEFAULT_BLOCK_MEMORY = 256 * 2**20
#: Old parameter names, still accepted with a :class:`DeprecationWarning`.
DEPRECATED_NAMES = {"chunk_size": "block_size", "memory_budget": "block_memory"}

EvalSize = int | str


@dataclass(frozen=True)
class LookaheadSettings:
    """Settings of the linearised network and its look-ahead engine (validated when built).

    Parameters
    ----------
    kernel : {"pseudo", "trace", "full", "last_layer"}
        eNTK variant; the pseudo-NTK is the paper's default (Mohamadi et al., 2022, Sec. 4).
    ridge : float
        Relative ridge ``λ >= 0``: the labelled solve uses ``Θ(L, L) + λ · mean(diag) · I``.
        With ``0`` the linearised network is retrained to the minimum-norm least-squares fit
        that gradient flow converges to, also when ``Θ(L, L)`` is singular.
    eps : float
        Relative rank tolerance ``> 0``: a candidate whose posterior variance ``Σ_jj`` is at most
        ``eps`` times its prior ``Θ_jj`` lies in the span of the labelled set's features.
    implementation : {"auto", "jacobian", "structured"}
        How the kernel is computed (:func:`ntkal.kernels.empirical_ntk`).
    eval_size : int or "all"
        Size of the evaluation set E where output change is measured: a random sample of that
        many candidates, seeded by the query's seed, or every candidate.
    max_memory : int, optional
        Bytes the engine may hold in total (kernel, Σ or its streamed blocks, caches). ``None``:
        half the free memory of the model's device when the engine is built. It decides dense vs
        streaming (:func:`ntkal.lookahead.choose_engine`).
    block_size : int, optional
        Candidates per scoring block; ``None``: as many as fit ``block_memory``.
    block_memory : int
        Bytes of one block's look-ahead predictions on E and their intermediates, when
        ``block_size`` is not given.
    engine : {"auto", "dense", "streaming"}
        Force an engine; ``"auto"``: :func:`ntkal.lookahead.choose_engine`.
    score_precision : {"float64", "fp32"}
        Arithmetic of the streaming engine's big scoring blocks Θ(E, J) and ``V_Eᵀ V_J``.
        ``"fp32"`` computes them from float32 copies of the float64 features and span
        coordinates, with a rigorous bound on the difference to float64
        (:mod:`ntkal.lookahead.fp32_blocks`); MLMOC's top-k (``score`` ``"flip"`` / ``"norm"``,
        scalar kernels) then recomputes in float64 every candidate that could reach the top
        ``budget`` and returns exactly the float64 picks and picked scores
        (:mod:`ntkal.strategies.certified`). Everything else (the dense engine, full kernels,
        other criteria, a held Σ[E, C], kernels whose rounding is not bounded) uses float64.
    """

    kernel: str = "pseudo"
    ridge: float = 0.0
    eps: float = 1e-6
    implementation: str = "auto"
    eval_size: EvalSize = DEFAULT_EVAL_SIZE
    max_memory: int | None = None
    block_size: int | None = None
    block_memory: int = DEFAULT_BLOCK_MEMORY
    engine: str = "auto"
    score_precision: str = "float64"

    def __post_init__(self) -> None:
        from ntkal.kernels import available_implementations, available_kinds

        put = object.__setattr__
        put(self, "kernel", as_choice(self.kernel, "kernel", available_kinds()))
        put(self, "ridge", as_float(self.ridge, "ridge", minimum=0.0))
        put(self, "eps", as_float(self.eps, "eps", minimum=0.0, strict_minimum=True))
        put(
            self,
            "implementation",
            as_choice(self.implementation, "implementation", available_implementations()),
        )
        if not (isinstance(self.eval_size, str) and self.eval_size == "all"):
            if isinstance(self.eval_size, str):
                raise ValueError(
                    f"eval_size must be a positive integer or 'all', got {self.eval_size!r}"
                )
            put(self, "eval_size", as_int(self.eval_size, "eval_size", minimum=1))
        put(
            self,
            "max_memory",
            as_optional_int(self.max_memory, "max_memory", minimum=1, integral_floats=True),
        )
        put(self, "block_size", as_optional_int(self.block_size, "block_size", minimum=1))
        put(
            self,
            "block_memory",
            as_int(self.block_memory, "block_memory", minimum=1, integral_floats=True),
        )
        put(self, "engine", as_choice(self.engine, "engine", ENGINES))
        put(
            self,
            "score_precision",
            as_choice(self.score_precision, "score_precision", SCORE_PRECISIONS),
        )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The parameter names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def split(cls, params: Mapping[str, Any]) -> tuple[dict, dict]:
        """``params`` split into (settings keys, the rest); old names renamed with a warning."""
        mine: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        for key, value in params.items():
            if key in DEPRECATED_NAMES:
                new = DEPRECATED_NAMES[key]
                warnings.warn(
                    f"{key!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=4
                )
                if new in params:
                    raise TypeError(f"give {new!r} or its old name {key!r}, not both")
                key = new
            (mine if key in cls.names() else rest)[key] = value
        return mine, rest

    @classmethod
    def build(cls, settings: LookaheadSettings | None = None, **params: Any) -> LookaheadSettings:
        """``settings`` with flat ``params`` applied (the one place flat keyword arguments, as
        configs pass them, become settings). Unknown keys are a :class:`TypeError` listing the
        valid ones."""
        mine, rest = cls.split(params)
        if rest:
            raise TypeError(
                f"unknown look-ahead parameter(s) {', '.join(sorted(rest))}; valid: "
                f"{', '.join(cls.names())} (or settings=LookaheadSettings(...))"
            )
        if settings is None:
            return cls(**mine)
        if not isinstance(settings, cls):
            raise TypeError(f"settings must be a LookaheadSettings, got {type(settings).__name__}")
        return dataclasses.replace(settings, **mine) if mine else settings

    @property
    def full_kernel(self) -> bool:
        """Whether the kernel keeps its ``k × k`` output blocks."""
        return self.kernel == "full"
