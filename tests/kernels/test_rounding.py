"""The rounding bound of scalar eNTK blocks computed from float32 features (kernels/rounding.py):
it holds entrywise against the float64 kernel, is not absurdly loose, and is refused where the
prior diagonal does not bound the terms (positional factor layers, full kernels)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ntkal.kernels import make_featuriser, structured
from ntkal.kernels.blocking import cast_features
from ntkal.kernels.rounding import (
    features_in_range,
    gamma,
    gram_terms,
    kernel_error_constant,
)


def _mlp(seed=0, d=20, h=48, k=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, k))


def test_gamma_is_n_u_over_one_minus_n_u():
    u = 2.0**-24
    assert gamma(10, u) == pytest.approx(10 * u / (1 - 10 * u), rel=1e-15)
    assert gamma(2**24, u) == math.inf


@pytest.mark.parametrize(
    ("kind", "implementation"),
    [
        ("pseudo", "structured"),
        ("trace", "structured"),
        ("pseudo", "jacobian"),
        ("last_layer", "auto"),
    ],
)
def test_fp32_kernel_error_within_bound(kind, implementation):
    model = _mlp()
    x = torch.randn(70, 20) * 3.0
    fz = make_featuriser(model, x, kind=kind, implementation=implementation)
    f1, _ = fz.featurise(x[:40])
    f2, _ = fz.featurise(x[40:])
    k64 = fz.kernel(f1, f2)
    k32 = fz.kernel(
        cast_features(f1, torch.float32), cast_features(f2, torch.float32), torch.float32
    )
    assert k32.dtype == torch.float32
    kappa = kernel_error_constant(fz, torch.float32)
    assert kappa is not None and 0 < kappa < 1e-3
    roots = torch.cat([fz.diagonal(f1), fz.diagonal(f2)]).sqrt()
    bound = kappa * torch.outer(roots[:40], roots[40:])
    err = (k32.double() - k64).abs()
    ratio = float((err / bound).max())
    assert ratio <= 1.0  # rigorous
    assert ratio > 2e-4  # and not absurdly loose (worst case γ_n against √n-like errors)


def test_structured_terms_of_an_mlp():
    model = _mlp(d=20, h=48, k=5)
    fz = make_featuriser(model, torch.randn(4, 20), kind="pseudo", implementation="structured")
    # din + k'·dout per factored dense layer (pseudo: k' = 1)
    assert gram_terms(fz) == (20 + 48, 48 + 48, 48 + 5)
    fz_t = make_featuriser(model, torch.randn(4, 20), kind="trace", implementation="structured")
    assert gram_terms(fz_t) == (20 + 5 * 48, 48 + 5 * 48, 48 + 5 * 5)
    kappa = kernel_error_constant(fz, torch.float32)
    assert kappa == gamma(96 + 6 + 3, 2.0**-24)


def test_positional_factor_layers_and_full_kernels_not_certified():
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    x = torch.randn(3, 1, 6, 6)
    old = structured.FORCE_MODE
    structured.FORCE_MODE = "factor"
    try:
        fz = make_featuriser(conv, x, kind="pseudo", implementation="structured")
    finally:
        structured.FORCE_MODE = old
    assert kernel_error_constant(fz, torch.float32) is None
    structured.FORCE_MODE = "grad"
    try:  # as explicit gradient rows the same layer is bounded
        fz = make_featuriser(conv, x, kind="pseudo", implementation="structured")
    finally:
        structured.FORCE_MODE = old
    assert kernel_error_constant(fz, torch.float32) is not None
    full = make_featuriser(_mlp(), torch.randn(3, 20), kind="full")
    assert kernel_error_constant(full, torch.float32) is None


def test_features_in_range():
    assert features_in_range([torch.tensor([0.0, 1.0, -3.0])])
    assert not features_in_range([torch.tensor([1e-30, 1.0])])
    assert not features_in_range(torch.tensor([float("nan")]))
    assert not features_in_range((torch.tensor([2.0**70]),))
