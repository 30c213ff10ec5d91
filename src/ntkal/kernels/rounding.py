"""Rigorous bounds on the rounding error of a scalar eNTK block computed in reduced precision.

The streaming look-ahead engine may compute its scoring blocks Θ(E, J) from float32 copies of
float64 per-example features (``LookaheadSettings(score_precision="fp32")``) and certify from a
bound which look-ahead decisions cannot differ from float64. This module says how large that
rounding error can be, from the structure of the kernel computation of each implementation.

Model (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Sec. 2.2 and 3.1):
every operation rounds with ``fl(x ∘ y) = (x ∘ y)(1 + θ)``, ``|θ| ≤ u`` (``u = 2⁻²⁴`` for float32,
``2⁻⁵³`` for float64), and with ``γ_n = n u / (1 − n u)``, ``∏ (1 + θ_i)^{±1}`` over ``n``
factors lies in ``[1 − γ_n, 1 + γ_n]``. A dot product of length ``n`` in any summation order
(blocked, FMA, BLAS) satisfies ``|fl(xᵀy) − xᵀy| ≤ γ_n |x|ᵀ|y|``; inputs rounded from float64
add two factors, ``γ_{n+2}``. The model holds without underflow: :func:`features_in_range`
checks that every nonzero input lies in ``[2⁻⁶³, 2⁶³]``, so every product of two inputs is a
normal float32; additions whose result is subnormal are exact under gradual underflow (IEEE
default; with flush-to-zero, ``torch.set_flush_denormal(True)``, the bound is not certified), and
the few remaining products of two sums contribute at most ``2⁻¹⁴⁹`` each (:func:`absolute_slack`).
Overflow shows as a non-finite block, which the caller checks.

What the implementations compute (scalar kernels: ``pseudo``, ``trace``, ``last_layer``) is a sum
of ``T`` terms ``Θ(x, x') = Σ_t τ_t(x, x')``, each of one of two shapes:

* a Gram of per-example rows, ``τ = g(x)·g(x')`` (explicit gradient rows, the Jacobian engine, the
  last layer's inputs; inner length ``n_t`` including the pieces it is accumulated from), with
  ``|τ| ≤ ‖g(x)‖‖g(x')‖``;
* a factored dense layer (:mod:`ntkal.kernels.structured`), ``τ = (a·a' + b)(δ·δ')`` with the
  layer input ``a``, the output sensitivities ``δ`` (``k'`` rows, flattened) and ``b ∈ {0, 1}``
  (a trainable bias); computed as two Grams of lengths ``n_a``, ``n_δ``, one addition and one
  product, so ``|fl(τ) − τ| ≤ γ_{n_a + n_δ + 6} (‖a‖‖a'‖ + b) ‖δ‖‖δ'‖``: with ``A = ‖a‖‖a'‖``,
  ``D = ‖δ‖‖δ'‖``, the first Gram plus ``b`` is within ``γ_{n_a+3} (A + b)`` of ``a·a' + b``
  (``γ_{n_a+2} A`` from the Gram, ``u (A + b)(1 + γ)`` from the addition), the second within
  ``γ_{n_δ+2} D``, and the rounded product of the two is within
  ``[(1 + γ_{n_a+3})(1 + γ_{n_δ+2})(1 + u) − 1] (A + b) D ≤ γ_{n_a+n_δ+6} (A + b) D``.

Summing ``T`` rounded terms adds ``γ_T``, so with ``N = max_t n_t`` (``n_a + n_δ`` for a layer)

    |fl(Θ_ij) − Θ_ij| ≤ κ Σ_t τ̄_t,     κ = γ_{N + 6 + T},

where ``τ̄_t`` is the term's magnitude bound above. By Cauchy–Schwarz in ``R²``,
``‖a‖‖a'‖ + b ≤ sqrt((‖a‖² + b)(‖a'‖² + b))``, so ``τ̄_t ≤ c_t(x) c_t(x')`` with
``c_t(x)² = (‖a‖² + b)‖δ‖²`` (or ``‖g‖²``), which is exactly the term's contribution to the
prior diagonal ``Θ(x, x) = Σ_t c_t(x)²``; Cauchy–Schwarz again over ``t`` gives

    |fl(Θ_ij) − Θ_ij| ≤ κ sqrt(Θ_ii Θ_jj),

a rank-one bound from the diagonal the engine already holds (computed in float64; its own
relative error, at most ``κ`` at ``u = 2⁻⁵³``, is absorbed by :func:`diagonal_roots`).

Positional (convolutional) factor layers sum ``(patch_p·patch'_q)(δ_p·δ'_q)`` over pairs of
positions, whose magnitudes are not bounded by the diagonal; a featuriser using one reports no
terms (:func:`gram_terms` is ``None``) and is not certified. Full ``k × k`` kernels are not covered.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "UNIT_ROUNDOFF",
    "gamma",
    "gram_terms",
    "kernel_error_constant",
    "diagonal_roots",
    "features_in_range",
    "absolute_slack",
    "SAFE_EXPONENT",
]

#: Unit roundoff ``u`` per dtype (round to nearest).
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
#: Nonzero inputs must lie in ``[2^-SAFE_EXPONENT, 2^SAFE_EXPONENT]`` in magnitude, so that a
#: product of two of them is a normal float32 (smallest normal ``2⁻¹²⁶``).
SAFE_EXPONENT = 63


def gamma(n: int, u: float) -> float:
    """``γ_n = n u / (1 − n u)`` (Higham, Lemma 3.1); infinite when ``n u ≥ 1``."""
    nu = float(n) * u
    return math.inf if nu >= 1.0 else nu / (1.0 - nu)


def gram_terms(featuriser: Any) -> tuple[int, ...] | None:
    """Inner lengths ``n_t`` of the terms the featuriser's scalar kernel is a sum of (module
    docstring), or ``None`` when it cannot be bounded that way (full kernels, positional factor
    layers). Read from the featuriser's ``gram_terms`` (set by
    :func:`ntkal.kernels.featuriser.build_featuriser`)."""
    if getattr(featuriser, "block_shape", ()) != ():
        return None
    terms = getattr(featuriser, "gram_terms", None)
    return None if terms is None else tuple(int(t) for t in terms)


def kernel_error_constant(featuriser: Any, dtype: torch.dtype) -> float | None:
    """``κ`` with ``|fl(Θ_ij) − Θ_ij| ≤ κ sqrt(Θ_ii Θ_jj)`` when the featuriser's kernel block is
    computed from its float64 features rounded to ``dtype`` (every later operation rounding at
    ``dtype``'s unit roundoff or finer); ``None`` when not certified (:func:`gram_terms`)."""
    terms = gram_terms(featuriser)
    if terms is None or dtype not in UNIT_ROUNDOFF:
        return None
    if not terms:
        return 0.0
    return gamma(max(terms) + 6 + len(terms), UNIT_ROUNDOFF[dtype])


def diagonal_roots(diagonal: torch.Tensor, kappa64: float) -> torch.Tensor:
    """Upper bounds on ``sqrt(Θ_ii)`` from the float64 diagonal ``fl(Θ_ii)``: the exact value is
    at most ``fl(Θ_ii) / (1 − κ₆₄)``; a further ``1 + 4u`` covers the square root and product."""
    scale = (1.0 + 4.0 * UNIT_ROUNDOFF[torch.float64]) / math.sqrt(max(1e-300, 1.0 - kappa64))
    return diagonal.to(torch.float64).clamp_min(0.0).sqrt() * scale


def features_in_range(feats: Any) -> bool:
    """Whether every floating tensor in ``feats`` (tensors, lists / tuples, feature records with
    ``factors`` / ``grads``) is finite with nonzero magnitudes in ``[2⁻⁶³, 2⁶³]``."""
    lo, hi = 2.0**-SAFE_EXPONENT, 2.0**SAFE_EXPONENT
    for t in _tensors(feats):
        if not t.is_floating_point() or t.numel() == 0:
            continue
        mag = t.detach().abs()
        top = float(mag.max())  # NaN when any entry is NaN, inf when any is infinite
        if not math.isfinite(top) or top > hi:
            return False
        if bool(((mag < lo) & (mag != 0)).any()):
            return False
    return True


def _tensors(feats: Any):
    if isinstance(feats, torch.Tensor):
        yield feats
    elif isinstance(feats, (list, tuple)):
        for f in feats:
            yield from _tensors(f)
    elif hasattr(feats, "factors") and hasattr(feats, "grads"):
        yield from _tensors(feats.factors)
        yield from _tensors(feats.grads)


def absolute_slack(num_ops: int) -> float:
    """Absolute error of ``num_ops`` products that may underflow (``2⁻¹⁴⁹`` each, doubled)."""
    return float(num_ops + 1) * 2.0**-148
