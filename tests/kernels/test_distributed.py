"""Kernel stripes on executors: equal to the single-process kernel (float64, ~1e-12), on 2 Ray
CPU actors and in-process; the executor runs any block job."""

from __future__ import annotations

import importlib.util
import itertools
import os

import pytest
import torch
from torch import nn

from ntkal.kernels import empirical_ntk
from ntkal.kernels.distributed import SerialBlockExecutor, stripe_bounds

HAVE_RAY = importlib.util.find_spec("ray") is not None


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 8), nn.ReLU(), nn.Linear(8, 3)
    ).double()


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4, 4)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x)))[:, :, ::2, ::2].flatten(1))


def _cnn():
    torch.manual_seed(1)
    net = _CNN().double()
    net.bn.running_mean.uniform_(-0.5, 0.5)
    net.bn.running_var.uniform_(0.5, 1.5)
    return net


def _inputs(model, n, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 6) if isinstance(model, nn.Sequential) else (n, 1, 4, 4)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _close(a, b):
    scale = b.abs().max().clamp_min(1e-300)
    return float((a - b).abs().max() / scale)


def _mirror(t):
    t = t.transpose(0, 1)
    return t.transpose(2, 3) if t.ndim == 4 else t


@pytest.mark.parametrize("n,stripes", [(1, 4), (7, 3), (50, 8), (51, 1), (10, 40)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_stripe_bounds_cover_the_rows_and_balance_the_pairs(n, stripes, symmetric):
    bounds = stripe_bounds(n, stripes, symmetric)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(b > a for a, b in bounds) and all(
        x[1] == y[0] for x, y in itertools.pairwise(bounds)
    )
    assert len(bounds) <= min(stripes, n)
    if n >= 50 and stripes > 1:
        work = [(b - a) * ((n - a) if symmetric else n) for a, b in bounds]
        assert max(work) <= 1.3 * sum(work) / len(work), work  # about equal pairs per stripe
        assert len(bounds) >= 0.75 * stripes
    assert stripe_bounds(0, 3, symmetric) == []


@pytest.mark.parametrize("kind", ["pseudo", "full", "trace", "last_layer"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_serial_stripes_equal_the_single_process_kernel(kind, net):
    model = _mlp() if net == "mlp" else _cnn()
    x = _inputs(model, 23, 0)
    y = _inputs(model, 9, 1)
    ex = SerialBlockExecutor()
    ref, f_ref, _ = empirical_ntk(model, x, kind=kind, return_outputs=True)
    got, f1, f2 = empirical_ntk(model, x, kind=kind, return_outputs=True, executor=ex)
    assert got.shape == ref.shape and got.dtype == torch.float64
    assert _close(got, ref) < 1e-12
    assert torch.equal(got, _mirror(got))  # exactly symmetric, diagonal blocks included
    assert f2 is f1 and torch.allclose(f1, f_ref, rtol=0, atol=1e-12)
    ref_xy, _, g_ref = empirical_ntk(model, x, y, kind=kind, return_outputs=True)
    got_xy, _, g2 = empirical_ntk(model, x, y, kind=kind, return_outputs=True, executor=ex)
    assert _close(got_xy, ref_xy) < 1e-12 and torch.allclose(g2, g_ref, rtol=0, atol=1e-12)


def test_executor_inputs_are_checked_before_shipping():
    model = _mlp()
    with pytest.raises(ValueError, match="x1 contains NaN"):
        empirical_ntk(model, torch.full((3, 6), float("nan")), executor=SerialBlockExecutor())
    with pytest.raises(ValueError, match="same per-example shape"):
        empirical_ntk(model, torch.zeros(3, 6), torch.zeros(2, 5), executor=SerialBlockExecutor())
    empty = empirical_ntk(model, torch.zeros(0, 6), executor=SerialBlockExecutor())
    assert empty.shape == (0, 0)


# ----------------------------------------------------------------------------- on Ray actors
@pytest.fixture(scope="module")
def two_actors():
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'ntkal[ray]')")
    import sys

    import ray.cloudpickle

    from ntkal.kernels.distributed import RayBlockExecutor

    # the test's own classes travel by value: the workers cannot import this test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = RayBlockExecutor(workers=2, num_cpus=2)
    try:
        yield ex
    finally:
        ray = ex._ray
        ex.close()
        assert not ray.is_initialized()  # the executor's private Ray is gone


class _SquareRows:
    """A block job that is not a kernel: rows a:b of A @ A.T, with the worker's pid."""

    def __init__(self, a):
        self.a = a

    def to(self, device):
        return _SquareRows(self.a.to(device))

    def __call__(self, part):
        lo, hi = part
        if lo < 0:
            raise ValueError("negative row")
        return self.a[lo:hi] @ self.a.T, os.getpid()


def test_ray_actors_are_other_processes_and_run_any_block_job(two_actors):
    info = two_actors.worker_info()
    assert len(info) == 2 and len({i["pid"] for i in info}) == 2
    assert os.getpid() not in {i["pid"] for i in info}
    assert {i["device"] for i in info} == {"cpu"}
    a = torch.randn(30, 4, dtype=torch.float64)
    parts = [(i, i + 3) for i in range(0, 30, 3)]
    out = dict(two_actors.map(_SquareRows(a), parts))
    assert sorted(out) == list(range(len(parts)))
    assert _close(torch.cat([out[i][0] for i in range(len(parts))]), a @ a.T) < 1e-14
    assert {pid for _, pid in out.values()} <= {i["pid"] for i in info}
    with pytest.raises(
        RuntimeError,
        match=r"block part 1 failed on a Ray worker: ValueError: "
        r"negative row",
    ):
        list(two_actors.map(_SquareRows(a), [(0, 3), (-1, 2)]))


@pytest.mark.parametrize("kind", ["pseudo", "full"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_ray_kernel_equals_the_single_process_kernel(two_actors, kind, net):
    model = _mlp() if net == "mlp" else _cnn()
    x = _inputs(model, 40, 2)
    y = _inputs(model, 11, 3)
    ref = empirical_ntk(model, x, kind=kind)
    got, f1, f2 = empirical_ntk(model, x, kind=kind, executor=two_actors, return_outputs=True)
    assert _close(got, ref) < 1e-12 and torch.equal(got, _mirror(got))
    assert f1.shape == (40, model(x[:1]).shape[1]) and f2 is f1
    ref_xy = empirical_ntk(model, x, y, kind=kind)
    got_xy = empirical_ntk(model, x, y, kind=kind, executor=two_actors)
    assert _close(got_xy, ref_xy) < 1e-12


def test_ray_kernel_of_a_float32_model_is_float64_throughout(two_actors):
    model = _mlp().float()
    x = _inputs(model, 20, 4).float()
    ref = empirical_ntk(model, x)
    got = empirical_ntk(model, x, executor=two_actors)
    assert got.dtype == torch.float64 and _close(got, ref) < 1e-12
