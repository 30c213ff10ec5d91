"""The one featuriser factory and the one dtype rule: every implementation the blocked kernel
runs is the one a Featuriser runs, and the network is copied exactly when the dtype asks."""

from __future__ import annotations

import pytest
import torch

from ntkal.kernels import chosen_implementation, empirical_ntk, make_featuriser
from ntkal.kernels.inputs import network_for
from tiny_nets import TinyNet


def _net(dtype=torch.float32):
    torch.manual_seed(0)
    return TinyNet(4, 6, 3, depth=2).to(dtype)


@pytest.mark.parametrize("kind", ["pseudo", "full", "last_layer"])
@pytest.mark.parametrize("implementation", ["jacobian", "structured"])
def test_featuriser_kernel_is_empirical_ntk(kind, implementation):
    net, x = _net(), torch.randn(7, 4)
    feat = make_featuriser(net, x, kind=kind, implementation=implementation)
    f, logits = feat.featurise(x)
    expected, f1, _ = empirical_ntk(
        net, x, kind=kind, implementation=implementation, return_outputs=True
    )
    torch.testing.assert_close(feat.kernel(f, f), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits, f1.to(logits.dtype), rtol=1e-10, atol=1e-12)
    assert feat.implementation == ("last_layer" if kind == "last_layer" else implementation)


def test_chosen_implementation_names_what_runs():
    net, x = _net(), torch.randn(50, 4)
    assert chosen_implementation(net, x, "pseudo") == "structured"  # Linear layers: factorised
    assert chosen_implementation(net, x, "pseudo", implementation="jacobian") == "jacobian"
    assert chosen_implementation(net, x, "last_layer") == "last_layer"


def test_dtype_rule_copies_only_when_the_dtype_changes():
    cpu = torch.device("cpu")
    low = _net(torch.float32)
    net, dtype = network_for(low, torch.float32, torch.float64, None, cpu)
    assert net is not low and dtype == torch.float64
    assert next(low.parameters()).dtype == torch.float32  # the caller's model is untouched
    same, dtype = network_for(low, torch.float32, torch.float32, None, cpu)
    assert same is low and dtype == torch.float32
    high = _net(torch.float64)
    assert network_for(high, torch.float64, torch.float64, None, cpu)[0] is high
    assert network_for(high, torch.float64, torch.float64, None, cpu, own=True)[0] is not high
    net, dtype = network_for(high, torch.float64, torch.float64, "bf16", cpu)
    assert net is not high and dtype == torch.float32  # reduced-precision Grams: float32 network
    with pytest.raises(ValueError, match=r"precision='tf32' needs a CUDA device"):
        network_for(high, torch.float64, torch.float64, "tf32", cpu)
