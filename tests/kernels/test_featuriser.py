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


class _Meet(torch.nn.Module):
    """Holds two forward passes at one point (a barrier), so that both threads' hooks are on
    the network while the other one runs through it."""

    def __init__(self):
        super().__init__()
        self.barrier = None

    def forward(self, x):
        if self.barrier is not None:
            self.barrier.wait(timeout=30)
        return x


@pytest.mark.parametrize("kind", ["pseudo", "last_layer"])
def test_two_threads_featurise_one_network_without_mixing(kind):
    """The labelling page featurises in a background thread while requests run the same
    network: each thread gets the features of its own inputs."""
    import threading

    torch.manual_seed(0)
    meets = [_Meet(), _Meet()]
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.Tanh(),
        meets[0],
        torch.nn.Linear(8, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 3),
        meets[1],
    )
    net = net.double()  # float64 already: the featuriser runs this very network, no copy
    xa, xb = torch.randn(5, 4, dtype=torch.float64), 3 * torch.randn(5, 4, dtype=torch.float64)
    feat = make_featuriser(net, xa, kind=kind, implementation="structured")
    want = {name: feat.kernel(*[feat.featurise(x)[0]] * 2) for name, x in (("a", xa), ("b", xb))}
    meets = [m for m in feat.model.modules() if isinstance(m, _Meet)]  # the network it runs
    assert len(meets) == 2
    for meet in meets:
        meet.barrier = threading.Barrier(2)
    got = {}

    def run(name, x):
        got[name] = feat.kernel(*[feat.featurise(x)[0]] * 2)

    threads = [threading.Thread(target=run, args=a) for a in (("a", xa), ("b", xb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for meet in meets:
        meet.barrier = None
    for name in ("a", "b"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12)
