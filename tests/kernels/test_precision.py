"""Reduced-precision Grams (``empirical_ntk(precision=...)``): float64 kernels whose Gram products
are fp32 / bf16 (tf32 on CUDA), with errors against float64 inside the documented bands."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkal.kernels import empirical_ntk
from ntkal.kernels._common import add_contracted_rows
from ntkal.kernels.blocking import cast_features, current_gram_precision, gram_precision
from ntkal.kernels.distributed import SerialBlockExecutor


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def _cnn():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.Flatten(),
        nn.Linear(4 * 9, 3),
    )


def _x(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 12) if isinstance(model[0], nn.Linear) else (n, 1, 8, 8)
    return torch.randn(shape, generator=g)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# Bands: fp32 rounds features and Grams at 2^-24 (measured ~1e-7 relative); bf16 rounds them at
# 2^-9 (measured 2e-3 .. 8e-3). Lower bounds prove the reduction really happened.
BANDS = {"fp32": (1e-10, 1e-5), "bf16": (1e-4, 3e-2)}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["pseudo", "trace", "full"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("implementation", ["structured", "jacobian"])
def test_reduced_precision_error_against_float64(precision, kind, net, implementation):
    model = (_mlp() if net == "mlp" else _cnn()).double()
    x = _x(model, 24).double()
    ref = empirical_ntk(model, x, kind=kind, implementation=implementation)
    got = empirical_ntk(model, x, kind=kind, implementation=implementation, precision=precision)
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    low, high = BANDS[precision]
    assert low < _rel(got, ref) < high
    assert next(model.parameters()).dtype == torch.float64  # the caller's model is untouched
    assert current_gram_precision() is None  # reset after the call


def test_float32_model_default_is_float64_and_fp32_is_the_float32_grams():
    model = _mlp()
    x = _x(model, 16)
    exact = empirical_ntk(model.double(), x.double())
    model.float()
    default = empirical_ntk(model, x)
    fp32 = empirical_ntk(model, x, precision="fp32")
    assert _rel(default, exact) < 1e-12
    assert 1e-10 < _rel(fp32, exact) < 1e-5


def test_bf16_products_are_each_added_in_float64():
    # Two layers' gradient rows whose Grams are 256 and 1: added into the float64 kernel one by
    # one they give 257; summed in bfloat16 first (8-bit mantissa) they would round to 256.
    g1 = [
        torch.full((1, 1, 4), 8.0, dtype=torch.bfloat16),
        torch.tensor([[[1.0]]], dtype=torch.bfloat16),
    ]
    dest = torch.zeros(1, 1, dtype=torch.float64)
    add_contracted_rows(dest, g1, g1, "pseudo")
    assert dest.item() == 257.0
    dest32 = torch.zeros(1, 1, dtype=torch.float64)
    add_contracted_rows(dest32, [g.float() for g in g1], [g.float() for g in g1], "pseudo")
    assert dest32.item() == 257.0
    full = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    rows = [
        torch.tensor([[[16.0], [0.0]]], dtype=torch.bfloat16),
        torch.tensor([[[1.0], [1.0]]], dtype=torch.bfloat16),
    ]
    add_contracted_rows(full, rows, rows, "full")
    assert full[0, 0].tolist() == [[257.0, 1.0], [1.0, 1.0]]


def test_cast_features_reaches_every_tensor():
    class Record:
        def __init__(self, t):
            self.t = t

        def cast(self, dtype):
            return Record(self.t.to(dtype))

    feats = [
        torch.ones(2),
        (torch.zeros(1, dtype=torch.float64), torch.arange(3)),
        Record(torch.ones(1)),
        "label",
    ]
    out = cast_features(feats, torch.bfloat16)
    assert out[0].dtype == torch.bfloat16 and out[1][0].dtype == torch.bfloat16
    assert out[1][1].dtype == torch.int64  # integer tensors are left alone
    assert out[2].t.dtype == torch.bfloat16 and out[3] == "label"


def test_bad_precisions_are_refused_clearly():
    model = _mlp()
    x = _x(model, 4)
    with pytest.raises(ValueError, match=r"unknown precision 'fp16'; choose one of"):
        empirical_ntk(model, x, precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(
            ValueError,
            match=r"precision='tf32' needs a CUDA device.*use 'fp32' "
            r"or 'bf16'",
        ):
            empirical_ntk(model, x, precision="tf32")
    with pytest.raises(ValueError, match="unknown precision"):
        with gram_precision("half"):
            pass
    assert current_gram_precision() is None


def test_precision_travels_with_executor_stripes():
    model = _cnn().double()
    x = _x(model, 20).double()
    ref = empirical_ntk(model, x)
    single = empirical_ntk(model, x, precision="bf16")
    striped = empirical_ntk(model, x, precision="bf16", executor=SerialBlockExecutor())
    assert 1e-4 < _rel(striped, ref) < 3e-2
    assert _rel(striped, single) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tf32_on_cuda_sits_between_fp32_and_bf16_and_restores_the_flags():
    model = _cnn().double().cuda()
    x = _x(model, 64).double().cuda()
    ref = empirical_ntk(model, x, kind="trace")
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    errs = {
        p: _rel(empirical_ntk(model, x, kind="trace", precision=p), ref)
        for p in ("fp32", "tf32", "bf16")
    }
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert errs["fp32"] < 1e-5 and errs["tf32"] < 2e-2 and errs["bf16"] < 3e-2
    assert errs["fp32"] <= errs["tf32"]
