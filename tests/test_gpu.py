"""CUDA paths give the CPU results (run with ``pytest -m gpu`` on a machine with a GPU)."""

import numpy as np
import pytest
import torch

from ntkal.kernels import empirical_ntk
from ntkal.lookahead import Lookahead
from ntkal.models import build_model
from ntkal.strategies import get_strategy
from ntkal.strategies.base import QueryContext
from ntkal.training import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _net(seed=0):
    torch.manual_seed(seed)
    return build_model("cnn", (1, 8, 8), 10, width=4, batchnorm=True).double()


def _x(n, seed):
    return torch.randn(
        n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("kind", ["pseudo", "trace", "full", "last_layer"])
@pytest.mark.parametrize("implementation", ["jacobian", "structured"])
def test_kernel_on_cuda_equals_cpu(kind, implementation):
    net, x1, x2 = _net(), _x(9, 1), _x(5, 2)
    cpu = empirical_ntk(net, x1, x2, kind=kind, implementation=implementation)
    gpu_net = _net().cuda()
    gpu = empirical_ntk(gpu_net, x1.cuda(), x2.cuda(), kind=kind, implementation=implementation)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)


def test_lookahead_and_mlmoc_on_cuda_equal_cpu():
    x_l, x_s = _x(12, 3), _x(20, 4)
    y_l = torch.arange(12) % 10
    cpu = Lookahead.fit(_net(), x_l, y_l, x_s)
    gpu = Lookahead.fit(_net().cuda(), x_l, y_l, x_s)
    torch.testing.assert_close(
        gpu.retrained_predictions(3, 1).cpu(), cpu.retrained_predictions(3, 1)
    )

    mlmoc = get_strategy("mlmoc")
    picks = []
    for device in ("cpu", "cuda"):
        ctx = QueryContext(
            _net().to(device), x_s, x_l, y_l, num_classes=10, seed=0, device=torch.device(device)
        )
        picks.append(mlmoc.query(ctx, 5).indices)
    np.testing.assert_array_equal(picks[0], picks[1])


def test_training_on_cuda_runs_and_keeps_the_model_there():
    net = _net().float()
    x, y = _x(64, 5).float(), torch.arange(64) % 10
    result = train(net, x, y, TrainConfig(epochs=2, batch_size=16, device="cuda"), num_classes=10)
    assert np.isfinite(result.final_loss)
    assert next(net.parameters()).device.type == "cuda"


@pytest.mark.parametrize("kernel", ["pseudo", "full"])
def test_streaming_lookahead_on_cuda_equals_cpu(kernel):
    """The streaming engine (E a sample of the candidates, conditioning included) on CUDA."""
    from ntkal.strategies.lookahead import MLMOC

    x_l, x_s = _x(12, 3), _x(30, 4)
    y_l = torch.arange(12) % 10
    kw = dict(kernel=kernel, engine="streaming", eval_size=11, max_memory=2**28)
    cpu = Lookahead.fit(_net(), x_l, y_l, x_s, **kw)
    gpu = Lookahead.fit(_net().cuda(), x_l, y_l, x_s, **kw)
    assert gpu.device.type == "cuda"
    for la in (cpu, gpu):
        la.cache_covariance()
        la.condition(4, 2)
    strat = MLMOC(kernel=kernel, score="expected")
    for a, b in zip(strat.score_candidates(cpu), strat.score_candidates(gpu)):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gpu.base_predictions().cpu(), cpu.base_predictions())
