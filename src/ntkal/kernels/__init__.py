"""Empirical neural tangent kernels of any ``nn.Module`` that returns logits.

``empirical_ntk`` linearises a network at its *current* weights: Θ(x, x') = J(x) J(x')ᵀ with J the
Jacobian of the logits w.r.t. the trainable parameters, the model in eval mode. Two exact engines
sit behind the one call:

``"jacobian"``
    Per-example Jacobians from ``torch.func`` (``vmap(jacrev)``), contracted blockwise. General
    and trusted, but it costs ``k'·P`` memory per example and ``2·n1·n2·k'^2·P`` FLOPs.
``"structured"``
    Per-layer factorisation. For ``nn.Linear``, Θ_layer(x, x') = (a(x)·a(x') + 1)(δ(x)·δ(x')) with
    ``a`` the layer input and ``δ`` the output sensitivities at the pre-activation, so no
    per-example weight gradient is ever formed. ``nn.Conv2d`` uses the same identity summed over
    spatial positions, or per-example gradients built from unfolded patches when that is cheaper
    (a per-layer FLOP model decides); BatchNorm affine parameters get analytic per-example
    gradients; any other trainable parameter falls back to ``torch.func`` per-example gradients.
``"auto"``
    Estimates the FLOPs of both engines for this model, kind and ``(n1, n2)`` and runs the cheaper
    one. Jacobian engine: ``(n1+n2)(1+2k')·F`` for the Jacobian rows (``F`` the forward FLOPs of
    the recognised layers) plus ``2·n1·n2·c·P`` for the Gram (``c`` = k^2 full, k trace, 1
    pseudo). Structured engine: the sum of the per-layer choices of
    :func:`ntkal.kernels.structured.layer_costs` (factorised vs per-example gradients, whichever
    is cheaper for that layer's positions and widths), plus the fallback's cost for
    unrecognised parameters. In practice ``structured`` wins whenever Linear/Conv layers hold the
    parameters.

Layout: :mod:`~ntkal.kernels.ntk` (``empirical_ntk``, the entry point), :mod:`~ntkal.kernels.local`
(the kernel in this process), :mod:`~ntkal.kernels.featuriser` (the one factory of implementations,
their choice and memory estimates), :mod:`~ntkal.kernels.inputs` (input checks, the dtype rule),
:mod:`~ntkal.kernels.jacobian`, :mod:`~ntkal.kernels.structured`, :mod:`~ntkal.kernels.last_layer`
(the implementations), :mod:`~ntkal.kernels.blocking` (memory, block plans, assembly),
:mod:`~ntkal.kernels.distributed` (row stripes on workers).

The kernel lives on the model's device. Examples must not interact in eval mode (standard layers
do not; BatchNorm then uses its running statistics).
"""

from __future__ import annotations

from ntkal.kernels._common import KINDS
from ntkal.kernels.blocking import PRECISIONS
from ntkal.kernels.featuriser import IMPLEMENTATIONS, Featuriser, make_featuriser, slice_features
from ntkal.kernels.ntk import empirical_ntk

__all__ = [
    "empirical_ntk",
    "available_kinds",
    "available_implementations",
    "KINDS",
    "IMPLEMENTATIONS",
    "PRECISIONS",
    "Featuriser",
    "make_featuriser",
    "slice_features",
    "chosen_implementation",
]


def available_kinds() -> tuple[str, ...]:
    """Kernel variants :func:`empirical_ntk` accepts."""
    return KINDS


def available_implementations() -> tuple[str, ...]:
    """Engines :func:`empirical_ntk` accepts for ``implementation=``."""
    return IMPLEMENTATIONS


def chosen_implementation(model, x, kind: str = "pseudo", implementation: str = "auto") -> str:
    """What :func:`empirical_ntk` would run for Θ(x, x): ``"jacobian"``, ``"structured"`` or
    ``"last_layer"`` (for benchmarks and reports)."""
    return make_featuriser(
        model, x, kind=kind, implementation=implementation, n1=len(x), n2=len(x)
    ).implementation
