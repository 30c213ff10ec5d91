"""Benchmark of ``ntkal.kernels.empirical_ntk`` against a plain ``torch.func`` baseline.

One command runs every kind x implementation on three networks and, in the same run, the plain
route of the torch.func NTK tutorial (per-example Jacobians with ``vmap(jacrev)``, contracted per
parameter with ``einsum``, blocks of 125 inputs, every block pair computed), then prints a table
with seconds, peak memory and the speed-up over that baseline, and writes JSON with machine info.

Each case runs in its own subprocess, so peak memory is clean (``VmHWM`` of that process minus its
resident size before the kernel; ``torch.cuda.max_memory_allocated`` on CUDA); ``--quick`` runs its
few tiny cases in this process instead (no memory figures).

Floors, measured in the same run (``_common.gemm_rates``): every case states its GEMM FLOPs, the
Gram of explicit per-example gradients (2·N²·P per output pair, the floor of any Jacobian route)
and the per-layer cheapest route (dense layers factorised as (a·a' + 1)(δ·δ'), Novak et al., ICML
2022), both for the symmetric Θ(X, X) plus one featurisation pass, and prints time / floor at the
float64 (or float32, for the float32 baseline) GEMM rate of the threads it uses. Beside ntkal's
engines run the plain torch.func route, float64 per-example Jacobians computed once and one Gram
(``torchfunc``), and the tutorial's route that recomputes Jacobians for every block pair
(``baseline``, float32 as the tutorial).

Usage::

    python benchmarks/kernels.py                       # full run (CPU: MLP/CNN N=1000, ResNet18 N=64)
    python benchmarks/kernels.py --quick               # smoke run: CNN, N = 8, seconds
    python benchmarks/kernels.py --skip-slow-baseline  # baseline timed on two block pairs, scaled
    python benchmarks/kernels.py --device cuda         # GPU run (ResNet18 N=5000)
    python benchmarks/kernels.py --models mlp,cnn --kinds pseudo,full --out my.json

Timings on a shared machine are noisy: rerun on a quiet one before quoting them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import _common

KINDS = ("pseudo", "trace", "full", "last_layer")
IMPLS = ("structured", "jacobian", "auto", "torchfunc")
QUICK_IMPLS = "auto,torchfunc"
BASELINE_BLOCK = 125


# ----------------------------------------------------------------------------------- networks
def build(name: str):
    """The benchmark networks (defined here so the benchmark does not depend on model code)."""
    from torch import nn

    if name == "mlp":  # 784-512-512-10: 669,706 parameters
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                            nn.ReLU(), nn.Linear(512, 10))
        return net, (1, 28, 28)
    if name == "cnn":  # conv16, conv32, fc64, fc10 on 1x28x28: 105,866 parameters
        net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))
        return net, (1, 28, 28)
    if name == "resnet18":
        return _resnet18_cifar(), (3, 32, 32)
    raise ValueError(name)


def _resnet18_cifar():
    """ResNet18, CIFAR variant (3x3 stem, no max-pool), BatchNorm; 11.17M parameters."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(out)) + self.short(x))

    class ResNet18(nn.Module):
        def __init__(self, k=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU())
            layers, cin = [], 64
            for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.classifier = nn.Linear(512, k)

        def forward(self, x):
            h = self.layers(self.stem(x))
            return self.classifier(h.mean((2, 3)))

    return ResNet18()


def _setup(model_name: str, n: int, device: str, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    net, shape = build(model_name)
    # Non-trivial BatchNorm statistics, as in a trained network.
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    net = net.to(device).eval()
    x = torch.randn(n, *shape, device=device)
    return net, x


# ----------------------------------------------------------------------------------- baseline
def _jacobian_fn(net, kind):
    """``jac(xb)``: per-example Jacobians of the kernel's function by ``vmap(jacrev)``, one
    flattened ``(b, [k,] P_param)`` tensor per parameter, and the einsum that contracts them."""
    from torch.func import functional_call, jacrev, vmap

    params = {n: p.detach() for n, p in net.named_parameters()}
    if kind == "last_layer":
        head = [n for n in params if n.startswith(_last_linear_prefix(net))]
        consts = {n: p for n, p in params.items() if n not in head}
        params = {n: params[n] for n in head}
    else:
        consts = {}
    buffers = dict(net.named_buffers())
    buffers.update(consts)

    def f(p, xi):
        out = functional_call(net, (p, buffers), (xi.unsqueeze(0),)).squeeze(0)
        if kind in ("pseudo", "last_layer"):
            return out.sum() / math.sqrt(out.shape[0])
        return out

    def jac(xb):
        j = vmap(jacrev(f), (None, 0))(params, xb)
        return [v.flatten(2) if kind in ("full", "trace") else v.flatten(1) for v in j.values()]

    eq = {"full": "Naf,Mbf->NMab", "trace": "Naf,Maf->NM", "pseudo": "Nf,Mf->NM",
          "last_layer": "Nf,Mf->NM"}[kind]
    return jac, eq


def baseline_ntk(net, x, kind, block=BASELINE_BLOCK, max_pairs=None):
    """The tutorial's route: ``vmap(jacrev)`` Jacobians, per-parameter ``einsum``, all block
    pairs (no symmetry, no caching). With ``max_pairs`` only that many pairs are computed and the
    number of pairs of the whole kernel is returned for extrapolation."""
    import torch

    jac, eq = _jacobian_fn(net, kind)
    n = x.shape[0]
    blocks = [slice(s, min(s + block, n)) for s in range(0, n, block)]
    pairs = [(a, b) for a in blocks for b in blocks]
    todo = pairs if max_pairs is None else pairs[:max_pairs]
    shape = (n, n, 10, 10) if kind == "full" else (n, n)
    out = torch.zeros(shape if max_pairs is None else (1,), device=x.device)
    with torch.no_grad():
        for a, b in todo:
            ja, jb = jac(x[a]), jac(x[b])
            blk = sum(torch.einsum(eq, u, v) for u, v in zip(ja, jb))
            if max_pairs is None:
                out[a, b] = blk
    return out, len(pairs), len(todo)


def torchfunc_bytes(net, n, kind) -> int:
    """Bytes of the float64 Jacobians of n inputs that :func:`torchfunc_ntk` holds at once."""
    p = sum(q.numel() for q in net.parameters())
    if kind == "last_layer":
        p = sum(q.numel() for name, q in net.named_parameters()
                if name.startswith(_last_linear_prefix(net)))
    return 8 * n * p * (10 if kind in ("full", "trace") else 1)


def torchfunc_ntk(net, x, kind, block=BASELINE_BLOCK):
    """The plain torch.func route in float64: per-example Jacobians (``vmap(jacrev)``, blocks of
    ``block`` inputs) computed once, concatenated, and contracted in one Gram."""
    import copy

    import torch

    net64 = copy.deepcopy(net).double()
    jac, eq = _jacobian_fn(net64, kind)
    x64 = x.double()
    with torch.no_grad():
        parts = [torch.cat(jac(x64[s:s + block]), dim=-1) for s in range(0, x.shape[0], block)]
        j = torch.cat(parts)
        del parts
        return torch.einsum(eq, j, j)


def _last_linear_prefix(net):
    from torch import nn

    head = getattr(net, "classifier", None)
    if isinstance(head, nn.Linear):
        return "classifier."
    name = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    return name + "."


# ----------------------------------------------------------------------------------- one case
def _rss_kib(field="VmRSS"):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_case(spec: dict) -> dict:
    """Run one (model, N, kind, implementation) case in this process and measure it."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = spec["device"]
    net, x = _setup(spec["model"], spec["n"], device)
    impl, kind = spec["impl"], spec["kind"]
    result = dict(spec)
    result.update(case_work(net, x, kind))
    if impl == "torchfunc" and torchfunc_bytes(net, x.shape[0], kind) > spec["torchfunc_max_bytes"]:
        gib = torchfunc_bytes(net, x.shape[0], kind) / 2**30
        return dict(result, error=f"skipped: its Jacobians need {gib:.1f} GiB at once")
    # Warm-up on 2 examples (first-call dispatch, vmap tracing) so one-time costs are not timed.
    from ntkal.kernels import empirical_ntk

    if impl == "baseline":
        baseline_ntk(net, x[:2], kind, block=2)
    elif impl == "torchfunc":
        torchfunc_ntk(net, x[:2], kind)
    else:
        empirical_ntk(net, x[:2], kind=kind, implementation=impl)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    rss0 = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    if impl == "baseline":
        _, total_pairs, done = baseline_ntk(net, x, kind, block=spec["block"],
                                            max_pairs=spec.get("max_pairs"))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        result["extrapolated"] = done < total_pairs
        if done < total_pairs:
            result["measured_seconds"] = secs
            result["measured_pairs"] = done
            secs = secs * total_pairs / done
    else:
        if impl == "torchfunc":
            torchfunc_ntk(net, x, kind)
        else:
            empirical_ntk(net, x, kind=kind, implementation=impl)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        result["extrapolated"] = False
        if impl == "auto":
            result["auto_choice"] = _auto_choice(net, x, kind)
    result["seconds"] = secs
    if device.startswith("cuda"):
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    elif spec.get("in_process"):
        result["peak_mib"] = None  # the process's high-water mark is not this case's
    else:
        result["peak_mib"] = max(0, _rss_kib("VmHWM") - rss0) / 1024
    result["params"] = sum(p.numel() for p in net.parameters())
    return result


def case_work(net, x, kind: str) -> dict:
    """The GEMM FLOPs the kernel Θ(X, X) needs (``_common.gram_flops``, symmetric) plus one
    featurisation pass: ``explicit_flops`` for the Gram of explicit per-example gradients,
    ``best_flops`` for the cheapest route per layer."""
    layers = _common.model_layers(net, x[0])
    k = 10
    n = x.shape[0]
    gram = _common.gram_flops(layers, n, n, kind, k, symmetric=True)
    feat = _common.featurise_flops(layers, n, kind, k)
    return {"explicit_flops": gram["explicit"] + feat, "best_flops": gram["best"] + feat}


def _auto_choice(net, x, kind):
    from ntkal.kernels import chosen_implementation

    return chosen_implementation(net, x, kind)


def _spawn(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--_case", json.dumps(spec)]
    env = dict(os.environ, NTKAL_QUIET="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timeout after {timeout:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit {proc.returncode}"
        return dict(spec, error=f"{why} {last}".strip())
    return json.loads(lines[-1])


def plan_cases(args) -> list[dict]:
    cuda = args.device.startswith("cuda")
    if args.quick:
        sizes = {"mlp": 8, "cnn": 8, "resnet18": 4}
    elif cuda:
        sizes = {"mlp": 5000, "cnn": 5000, "resnet18": 5000}
    else:
        sizes = {"mlp": 1000, "cnn": 1000, "resnet18": 64}
    if args.n:
        sizes = {m: args.n for m in sizes}
    models = args.models.split(",")
    kinds = args.kinds.split(",")
    impls = [i for i in (args.impls or QUICK_IMPLS if args.quick else args.impls or
                         ",".join(IMPLS)).split(",") if i and i != "none"]
    common = dict(device=args.device, threads=args.threads, in_process=args.quick,
                  torchfunc_max_bytes=int(args.torchfunc_max_gib * 2**30))
    cases = []
    for model in models:
        n = sizes[model]
        for kind in kinds:
            if kind == "full" and model == "resnet18" and n > 1000:
                continue  # n^2 k^2 float64 entries would not fit anywhere
            for impl in impls:
                cases.append(dict(model=model, n=n, kind=kind, impl=impl, **common))
            if not args.no_baseline:
                block = BASELINE_BLOCK
                if model == "resnet18" and kind in ("full", "trace") and not cuda:
                    block = 4  # 125 x 10 x 11.2M float32 Jacobians would need 56 GB
                spec = dict(model=model, n=n, kind=kind, impl="baseline", block=block, **common)
                nb = math.ceil(n / block)
                slow = args.skip_slow_baseline and nb * nb > 2
                if slow:
                    spec["max_pairs"] = 2
                cases.append(spec)
    return cases


def add_floors(row: dict, rates: dict) -> dict:
    """``floor_seconds`` (cheapest route per layer) and ``gram_floor_seconds`` (explicit
    per-example gradients' Gram) at the GEMM rate of the row's dtype and threads, and the
    ``× floor`` ratios of its time."""
    if "best_flops" not in row:
        return row
    dtype = "float32" if row["impl"] == "baseline" else "float64"  # the tutorial runs float32
    rate = _common.gemm_rate(rates, dtype, row.get("threads") or rates["threads"])
    row["floor_dtype"], row["floor_gflops"] = dtype, rate
    row["floor_seconds"] = _common.floor_seconds(row["best_flops"], rate)
    row["gram_floor_seconds"] = _common.floor_seconds(row["explicit_flops"], rate)
    row["times_floor"] = _common.times_floor(row.get("seconds"), row["floor_seconds"])
    row["times_gram_floor"] = _common.times_floor(row.get("seconds"), row["gram_floor_seconds"])
    return row


def table(results: list[dict]) -> str:
    base = {(r["model"], r["kind"]): r for r in results
            if r["impl"] == "baseline" and "seconds" in r}
    rows = []
    for r in results:
        note = r.get("error", "")
        if r.get("extrapolated"):
            note = (f"extrapolated from {r['measured_pairs']} block pairs "
                    f"({r['measured_seconds']:.1f} s)")
        if r["impl"] == "auto" and "auto_choice" in r:
            note = f"auto -> {r['auto_choice']}"
        b = base.get((r["model"], r["kind"]))
        sp = (f"{b['seconds'] / r['seconds']:.1f}×" if b and "seconds" in r
              and r["impl"] != "baseline" else "")
        rows.append([r["model"], r["n"], r["kind"], r["impl"], _common.fmt(r.get("seconds")),
                     _common.fmt(r.get("times_floor"), ".1f"),
                     _common.fmt(r.get("times_gram_floor"), ".2f"),
                     _common.fmt(r.get("peak_mib"), ".0f"), sp, _common.load_mark(r), note])
    return _common.markdown_table(
        ["model", "N", "kind", "implementation", "seconds", "× floor", "× Gram floor",
         "peak MiB", "vs baseline", "load 1-min before/after", "note"], rows,
        align="lrllrrrrrll")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_common_args(ap, "smoke run: the CNN, N = 8, pseudo, in this process")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", default=None, help="default mlp,cnn,resnet18 (--quick: cnn)")
    ap.add_argument("--kinds", default=None, help=f"default {','.join(KINDS)} (--quick: pseudo)")
    ap.add_argument("--impls", default=None,
                    help=f"comma-separated engines, default {','.join(IMPLS)} (--quick: "
                         f"{QUICK_IMPLS}); 'none' runs only the baseline")
    ap.add_argument("--n", type=int, default=None, help="override N for every model")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per case")
    ap.add_argument("--skip-slow-baseline", action="store_true",
                    help="time the baseline on 2 block pairs and scale to all pairs (marked "
                         "'extrapolated' in the table and JSON)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--torchfunc-max-gib", type=float, default=4.0,
                    help="skip the torchfunc route when its Jacobians exceed this (default 4)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    ap.add_argument("--out", default=None,
                    help="JSON path (default <results>/kernels_<hostname>.json)")
    ap.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._case:
        print(json.dumps(run_case(json.loads(args._case))))
        return 0
    _common.one_at_a_time(args.quick)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda requested but torch.cuda.is_available() is False")
    args.models = args.models or ("cnn" if args.quick else "mlp,cnn,resnet18")
    args.kinds = args.kinds or ("pseudo" if args.quick else ",".join(KINDS))
    out = Path(args.out) if args.out else (
        _common.results_dir(args) / f"kernels_{socket.gethostname()}{'_quick' if args.quick else ''}.json")
    info = _common.machine_info(args.device)
    threads = args.threads or info["torch_threads"]
    info["threads_per_case"] = threads
    rates = _common.measure_rates(threads, quick=args.quick, device=args.device)
    rates["threads"] = threads
    cases = plan_cases(args)
    results = []
    for i, spec in enumerate(cases, 1):
        label = f"[{i}/{len(cases)}] {spec['model']} N={spec['n']} {spec['kind']} {spec['impl']}"
        print(label, "...", end=" ", flush=True)
        before = _common.loadavg()
        if args.quick:
            res = run_case(spec)
            torch.set_num_threads(info["torch_threads"])
        else:
            res = _spawn(spec, args.timeout)
        res.update(_common.case_load(before, threads))
        results.append(add_floors(res, rates))
        print(res.get("error") or f"{res['seconds']:.2f} s, {res['times_floor']:.1f}× floor",
              flush=True)
    text = table(results)
    print()
    print(text)
    payload = {"benchmark": "kernels", "machine": info, "quick": args.quick, "rates": rates,
               "baseline": "torch.func vmap(jacrev) + per-parameter einsum, float32, blocks of "
                           f"{BASELINE_BLOCK} (4 for ResNet18 full/trace on CPU), all pairs",
               "torchfunc": "float64 per-example Jacobians by vmap(jacrev), once, one Gram",
               "floors": "GEMM FLOPs of the symmetric kernel plus one featurisation pass at the "
                         "measured best GEMM rate: cheapest route per layer (× floor) and the "
                         "Gram of explicit per-example gradients (× Gram floor)",
               "results": results, "table": text}
    _common.write_result(out, payload, results, quick=args.quick, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
