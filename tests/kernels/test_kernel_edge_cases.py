"""empirical_ntk's less travelled paths, each against a direct computation: no trainable
parameters, the last-layer kernel's classifier lookup and bias handling, and size formatting."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ntkal.kernels import empirical_ntk
from ntkal.kernels.inputs import format_bytes


def _mlp(k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, k))


@pytest.mark.parametrize("kind, shape", [("pseudo", (5, 7)), ("full", (5, 7, 3, 3))])
def test_frozen_model_has_a_zero_kernel_and_its_outputs(kind, shape):
    model = _mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    x1, x2 = torch.randn(5, 4), torch.randn(7, 4)
    kern, f1, f2 = empirical_ntk(model, x1, x2, kind=kind, return_outputs=True)
    assert kern.shape == shape and not kern.any()
    # A float64 kernel runs on a float64 copy of a float32 model, so the outputs are its logits.
    model64 = copy.deepcopy(model).double()
    torch.testing.assert_close(f1, model64(x1.double()))
    torch.testing.assert_close(f2, model64(x2.double()))
    kern, f1, f2 = empirical_ntk(model, x1, kind=kind, return_outputs=True)
    assert f2 is f1 and kern.shape[:2] == (5, 5)


class _Headless(nn.Module):
    """No `classifier` attribute: the last nn.Linear in module order is the head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.body(x)))


def test_last_layer_kernel_uses_the_last_linear_and_its_bias_only_when_trainable():
    torch.manual_seed(1)
    model = _Headless()
    x1, x2 = torch.randn(5, 4), torch.randn(6, 4)
    a1, a2 = torch.tanh(model.body(x1)).double(), torch.tanh(model.body(x2)).double()
    kern = empirical_ntk(model, x1, x2, kind="last_layer")
    torch.testing.assert_close(kern, (a1 @ a2.T + 1).detach())
    model.out.bias.requires_grad_(False)
    kern = empirical_ntk(model, x1, x2, kind="last_layer")
    torch.testing.assert_close(kern, (a1 @ a2.T).detach())
    with pytest.raises(
        ValueError,
        match=r"kind='last_layer' needs a final nn.Linear \(model"
        r".classifier, or the last nn.Linear in module order\)",
    ):
        empirical_ntk(nn.Sequential(nn.Flatten(), nn.Identity()), x1, kind="last_layer")


def test_sizes_are_formatted_in_binary_units():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1024) == "1.0 KiB"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**20) == "3.0 MiB"
    assert format_bytes(5 * 2**30) == "5.0 GiB"
    assert format_bytes(2**50) == "1024.0 TiB"
