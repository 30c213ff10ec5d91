"""empirical_ntk refuses inputs it cannot honour, before any work, with a message saying why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkal.kernels.inputs
from ntkal.kernels import empirical_ntk


def _model(k=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, k))


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
@pytest.mark.parametrize("where", ["x1", "x2"])
def test_non_finite_inputs_are_rejected(bad, where):
    good = torch.randn(4, 3)
    broken = good.clone()
    broken[2, 1] = bad
    x1, x2 = (broken, good) if where == "x1" else (good, broken)
    with pytest.raises(ValueError, match=f"{where} contains NaN or infinite values"):
        empirical_ntk(_model(), x1, x2)


def test_full_kernel_larger_than_memory_is_refused_with_the_size_and_alternatives():
    # 20 000 points, 10 classes: a 298 GiB float64 output, more than any machine here has free.
    with pytest.raises(
        MemoryError,
        match=r"kind='full' kernel on 20000 x 20000 inputs with 10 "
        r"outputs needs 298\.0 GiB .*kind='pseudo' or 'trace' "
        r"\(100x smaller\), fewer inputs",
    ):
        empirical_ntk(_model(), torch.randn(20000, 3), kind="full")


def test_output_check_uses_the_free_memory_of_the_device(monkeypatch):
    x = torch.randn(30, 3)
    need = 30 * 30 * 8  # a pseudo kernel in float64
    monkeypatch.setattr(ntkal.kernels.inputs, "free_memory", lambda device: need - 1)
    with pytest.raises(MemoryError, match=r"kind='pseudo' kernel on 30 x 30 inputs .* 7\.0 KiB"):
        empirical_ntk(_model(), x)
    monkeypatch.setattr(ntkal.kernels.inputs, "free_memory", lambda device: need)
    assert empirical_ntk(_model(), x).shape == (30, 30)


@pytest.mark.parametrize("implementation", ["jacobian", "structured"])
def test_empty_x1_still_gives_the_outputs_of_x2(implementation):
    model = _model(k=5)
    x2 = torch.randn(6, 3)
    kern, f1, f2 = empirical_ntk(
        model, torch.zeros(0, 3), x2, implementation=implementation, return_outputs=True
    )
    assert kern.shape == (0, 6) and f1.shape == (0, 5)
    # float64 kernel: the outputs come from a float64 copy of the float32 model
    torch.testing.assert_close(f2, model.double()(x2.double()).detach())
