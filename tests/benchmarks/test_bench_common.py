"""benchmarks/_common.py: the load rule, the result writer, and the arithmetic counts behind every
``× floor``, each checked against an independent count (FLOPs torch itself counts while running
the operations, explicit Jacobians, parameter totals)."""

import json
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.flop_counter import FlopCounterMode


# ----------------------------------------------------------------------------- load rule
@pytest.mark.parametrize(
    "before, after, cores, loaded",
    [
        ([0.1, 0, 0], [1.2, 0, 0], 1, False),  # the case itself on one core: quiet
        ([0.1, 0, 0], [1.6, 0, 0], 1, True),  # another process beside it, seen after
        ([1.6, 0, 0], [0.2, 0, 0], 1, True),  # another process when it started
        ([1.5, 0, 0], [1.5, 0, 0], 1, False),  # at the slack exactly: still quiet
        ([2.4, 0, 0], [2.4, 0, 0], 2, False),  # two threads use two cores
        ([0.1, 9, 9], [0.1, 9, 9], 1, False),  # only the 1-minute average counts
        (None, [0.1, 0, 0], 1, True),  # unknown load is never README-grade
    ],
)
def test_is_loaded(common, before, after, cores, loaded):
    assert common.is_loaded(before, after, cores) is loaded


def test_run_case_records_load_before_and_after(common, monkeypatch):
    loads = iter([[0.3, 0.2, 0.1], [2.5, 1.0, 0.5]])
    monkeypatch.setattr(common, "loadavg", lambda: next(loads))
    row = common.run_case(lambda: {"seconds": 1.0}, cores=1)
    assert row == {
        "seconds": 1.0,
        "loadavg_before": [0.3, 0.2, 0.1],
        "loadavg_after": [2.5, 1.0, 0.5],
        "cores": 1,
        "loaded": True,
    }
    assert common.load_mark(row) == "0.30/2.50 loaded"


def _quiet(**kw):
    return {"loadavg_before": [0.1, 0, 0], "loadavg_after": [1.0, 0, 0], "loaded": False, **kw}


def test_write_result_is_readme_grade_only_without_loaded_rows(common, tmp_path):
    path = tmp_path / "bench.json"
    assert common.write_result(path, {"x": 1}, [_quiet(), _quiet()]) == path
    grade = json.loads(path.read_text())
    assert grade["readme_grade"] is True and grade["x"] == 1
    assert "git" in grade["machine"] and grade["loadavg_end"] is not None

    # A loaded row: the README-grade file is left as it was, the run goes beside it.
    written = common.write_result(path, {"x": 2}, [_quiet(), _quiet(loaded=True)])
    assert written == tmp_path / "bench_loaded.json"
    assert json.loads(path.read_text())["x"] == 1
    loaded = json.loads(written.read_text())
    assert loaded["readme_grade"] is False and "[1]" in loaded["not_readme_grade"]


def test_write_result_quick_and_empty_runs_are_not_readme_grade(common, tmp_path):
    path = tmp_path / "q.json"
    common.write_result(path, {}, [_quiet()], quick=True)
    assert json.loads(path.read_text())["readme_grade"] is False
    common.write_result(tmp_path / "e.json", {}, [])
    assert json.loads((tmp_path / "e_loaded.json").read_text())["readme_grade"] is False
    # A row without load fields counts as loaded.
    common.write_result(tmp_path / "n.json", {}, [{"seconds": 1}])
    assert (tmp_path / "n_loaded.json").exists() and not (tmp_path / "n.json").exists()


# ----------------------------------------------------------------------------- rates
def test_rates_and_roofline(common):
    rates = common.gemm_rates([1], sizes=(16, 32), repeats=1)
    for dtype in ("float64", "float32"):
        per = rates[dtype]["1"]
        assert set(per["gflops_by_size"]) == {"16", "32"}
        assert per["best"] == max(per["gflops_by_size"].values()) > 0
    bw = common.stream_bandwidth([1], numel=1024, repeats=1)
    assert bw["1"] > 0
    both = {"gemm_gflops": rates, "stream_gbps": bw}
    assert common.gemm_rate(both, "float64", 4) == rates["float64"]["1"]["best"]  # nearest
    assert common.floor_seconds(2e9, 1.0) == pytest.approx(2.0)
    assert common.floor_seconds(1e9, 1.0, nbytes=3e9, gbps=1.0) == pytest.approx(3.0)
    assert common.floor_seconds(5e9, 1.0, nbytes=3e9, gbps=1.0) == pytest.approx(5.0)
    assert common.times_floor(3.0, 1.5) == 2.0 and common.times_floor(None, 1.0) is None


# ----------------------------------------------------------------------------- FLOP counts
def _mlp(d=6, h=5, k=3):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, k)
    ).double()


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 1 * 1, 7),
        nn.ReLU(),
        nn.Linear(7, 3),
    ).double()


@pytest.mark.parametrize("make, shape", [(_mlp, (6,)), (_cnn, (1, 6, 6))])
def test_forward_flops_match_what_torch_counts(common, make, shape):
    net = make()
    x = torch.randn(*shape, dtype=torch.float64)
    layers = common.model_layers(net, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x.unsqueeze(0))
    assert sum(lay["forward_flops"] for lay in layers) == counter.get_total_flops()
    assert sum(lay["params"] for lay in layers) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("kind, outputs", [("pseudo", 1), ("trace", 3), ("full", 9)])
def test_explicit_gram_is_two_n1_n2_params_per_output_pair(common, kind, outputs):
    net = _cnn()
    layers = common.model_layers(net, torch.randn(1, 6, 6, dtype=torch.float64))
    p = sum(q.numel() for q in net.parameters())
    flops = common.gram_flops(layers, 4, 7, kind, 3)
    assert flops["explicit"] == 2 * 4 * 7 * p * outputs
    assert flops["best"] < flops["explicit"]  # the dense layers factorise
    sym = common.gram_flops(layers, 4, 4, kind, 3, symmetric=True)["explicit"]
    assert sym == 2 * p * outputs * 4 * 5 / 2


def _factorised_pseudo_ntk(net, x1, x2):
    """Pseudo-NTK by the per-layer factorisation (a·a' + 1)(δ·δ'): each Gram a GEMM."""

    def features(x):
        acts, sens = {}, {}

        def keep(name):
            def hook(module, inputs, output):
                acts[name] = inputs[0].detach()
                output.register_hook(lambda g: sens.__setitem__(name, g))

            return hook

        hooks = [
            mod.register_forward_hook(keep(name))
            for name, mod in net.named_modules()
            if isinstance(mod, nn.Linear)
        ]
        out = net(x)
        (out.sum(1) / math.sqrt(out.shape[1])).sum().backward()
        for h in hooks:
            h.remove()
        return acts, sens

    a1, d1 = features(x1)
    a2, d2 = features(x2)
    with FlopCounterMode(display=False) as counter:
        theta = sum((torch.mm(a1[n], a2[n].T) + 1) * torch.mm(d1[n], d2[n].T) for n in a1)
    return theta, counter.get_total_flops()


def test_factorised_route_is_exact_and_costs_what_gram_flops_says(common):
    net = _mlp()
    x1, x2 = torch.randn(4, 6, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)
    theta, counted = _factorised_pseudo_ntk(net, x1, x2)
    # The floor's route is a real route: it equals the explicit-Jacobian pseudo-NTK.
    params = {n: p.detach() for n, p in net.named_parameters()}

    def s(p, xi):
        out = functional_call(net, p, (xi.unsqueeze(0),)).squeeze(0)
        return out.sum() / math.sqrt(out.shape[0])

    def jac(x):
        return torch.cat([v.flatten(1) for v in vmap(jacrev(s), (None, 0))(params, x).values()], 1)

    torch.testing.assert_close(theta, jac(x1) @ jac(x2).T)
    layers = common.model_layers(net, x1[0])
    assert common.gram_flops(layers, 4, 7, "pseudo", 3)["best"] == counted


def test_mlmoc_query_flops_of_the_issue_case(common):
    from ntkal.models import build_model

    torch.manual_seed(0)
    net = build_model("mlp", (1, 28, 28), 10)  # 784-512-512-10
    layers = common.model_layers(net, torch.zeros(1, 28, 28))
    per_pair = 2 * ((784 + 512) + (512 + 512) + (512 + 10))
    assert common.gram_flops(layers, 1, 1, "pseudo", 10)["best"] == per_pair
    n, e, m = 1000, 5000, 60_000
    q = common.mlmoc_query_flops(layers, n, e, m, 10)
    ec = e * (m - e) + e * (e + 1) / 2
    assert q["theta_EC"] == per_pair * ec and q["VtV_EC"] == 2 * n * ec
    assert q["theta_LC"] == per_pair * n * m
    assert q["theta_EC"] == pytest.approx(1.64e12, rel=0.01)  # 1.7 without the E × E savings
    assert q["VtV_EC"] == pytest.approx(0.575e12, rel=0.01)
    assert q["theta_LC"] == pytest.approx(0.341e12, rel=0.01)
    assert q["total"] == pytest.approx(sum(v for k, v in q.items() if k != "total"))
    assert 2.7e12 < q["total"] < 2.75e12  # the issue's "about 2.7"


def test_sequential_step_work(common):
    w = common.sequential_step_work(n=10, e=20, m=30, k=3, per_pair=100.0)
    assert w["bytes"] == 24 * 20 * 30  # Σ[E, C] read + written by the update, read by rescoring
    assert w["flops"] == 100 * 30 + 2 * 10 * 30 + 2 * 20 * 30 + 2 * 20 * 30 * 3


def test_featurise_flops(common):
    layers = common.model_layers(_mlp(), torch.randn(6, dtype=torch.float64))
    fwd, first = 2 * (6 * 5 + 5 * 5 + 5 * 3), 2 * 6 * 5
    assert common.featurise_flops(layers, 4, "pseudo", 3) == 4 * (fwd + (fwd - first))
    assert common.featurise_flops(layers, 4, "trace", 3) == 4 * (fwd + 3 * (fwd - first))
    assert common.featurise_flops(layers, 4, "last_layer", 3) == 4 * fwd


# ----------------------------------------------------------------------------- output
def test_markdown_table(common):
    text = common.markdown_table(["a", "b"], [[1, "x"], [2, "y"]])
    assert text.splitlines() == ["| a | b |", "|---|---:|", "| 1 | x |", "| 2 | y |"]
    assert common.fmt(None) == "-" and common.fmt(1.234, ".1f") == "1.2"


def test_one_at_a_time_waits_for_the_running_benchmark(common, tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    common.one_at_a_time(quick=True)
    assert common._LOCK is None  # quick runs do not take the lock
    monkeypatch.setattr(common, "_LOCK", None)
    common.one_at_a_time()
    try:
        assert common._LOCK is not None
        probe = (
            "import fcntl, sys; fh = open(sys.argv[1], 'a+')\n"
            "try: fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except OSError: sys.exit(3)"
        )
        held = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "ntkal-benchmark.lock")])
        assert held.returncode == 3  # another process cannot take it while this one runs
    finally:
        common._LOCK.close()
