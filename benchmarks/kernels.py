"""Benchmark of ``ntkal.kernels.empirical_ntk`` against a plain ``torch.func`` baseline.

One command runs every kind x implementation on three networks and, in the same run, the plain
route of the torch.func NTK tutorial (per-example Jacobians with ``vmap(jacrev)``, contracted per
parameter with ``einsum``, blocks of 125 inputs, every block pair computed), then prints a table
with seconds, peak memory and the speed-up over that baseline, and writes JSON with machine info.

Each case runs in its own subprocess, so peak memory is clean (``VmHWM`` of that process minus its
resident size before the kernel; ``torch.cuda.max_memory_allocated`` on CUDA).

Usage::

    python benchmarks/kernels.py                       # full run (CPU: MLP/CNN N=1000, ResNet18 N=64)
    python benchmarks/kernels.py --quick               # smoke run, small N, about a minute
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
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("pseudo", "trace", "full", "last_layer")
IMPLS = ("structured", "jacobian", "auto")
BASELINE_BLOCK = 125


# ----------------------------------------------------------------------------------- networks
def build(name: str):
    """The benchmark networks (defined here so the benchmark does not depend on model code)."""
    import torch
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
def baseline_ntk(net, x, kind, block=BASELINE_BLOCK, max_pairs=None):
    """The tutorial's route: ``vmap(jacrev)`` Jacobians, per-parameter ``einsum``, all block
    pairs (no symmetry, no caching). With ``max_pairs`` only that many pairs are computed and the
    number of pairs of the whole kernel is returned for extrapolation."""
    import torch
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
    impl = spec["impl"]
    # Warm-up on 2 examples (first-call dispatch, vmap tracing) so one-time costs are not timed.
    from ntkal.kernels import empirical_ntk

    if impl == "baseline":
        baseline_ntk(net, x[:2], spec["kind"], block=2)
    else:
        empirical_ntk(net, x[:2], kind=spec["kind"], implementation=impl)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    rss0 = _rss_kib("VmRSS")
    result = dict(spec)
    t0 = time.perf_counter()
    if impl == "baseline":
        _, total_pairs, done = baseline_ntk(net, x, spec["kind"], block=spec["block"],
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
        empirical_ntk(net, x, kind=spec["kind"], implementation=impl)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        result["extrapolated"] = False
        if impl == "auto":
            result["auto_choice"] = _auto_choice(net, x, spec["kind"])
    result["seconds"] = secs
    if device.startswith("cuda"):
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    else:
        result["peak_mib"] = max(0, _rss_kib("VmHWM") - rss0) / 1024
    result["params"] = sum(p.numel() for p in net.parameters())
    return result


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


# ----------------------------------------------------------------------------------- machine
def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "hostname": socket.gethostname(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def plan_cases(args) -> list[dict]:
    cuda = args.device.startswith("cuda")
    if args.quick:
        sizes = {"mlp": 200, "cnn": 200, "resnet18": 8}
    elif cuda:
        sizes = {"mlp": 5000, "cnn": 5000, "resnet18": 5000}
    else:
        sizes = {"mlp": 1000, "cnn": 1000, "resnet18": 64}
    if args.n:
        sizes = {m: args.n for m in sizes}
    models = args.models.split(",")
    kinds = args.kinds.split(",")
    impls = [i for i in args.impls.split(",") if i and i != "none"]
    cases = []
    for model in models:
        n = sizes[model]
        for kind in kinds:
            if kind == "full" and model == "resnet18" and n > 1000:
                continue  # n^2 k^2 float64 entries would not fit anywhere
            for impl in impls:
                cases.append(dict(model=model, n=n, kind=kind, impl=impl, device=args.device,
                                  threads=args.threads))
            if not args.no_baseline:
                block = BASELINE_BLOCK
                if model == "resnet18" and kind in ("full", "trace") and not cuda:
                    block = 4  # 125 x 10 x 11.2M float32 Jacobians would need 56 GB
                spec = dict(model=model, n=n, kind=kind, impl="baseline", device=args.device,
                            threads=args.threads, block=block)
                nb = math.ceil(n / block)
                slow = args.skip_slow_baseline and nb * nb > 2
                if slow:
                    spec["max_pairs"] = 2
                cases.append(spec)
    return cases


def table(results: list[dict]) -> str:
    base = {(r["model"], r["kind"]): r for r in results
            if r["impl"] == "baseline" and "seconds" in r}
    head = f"{'model':9} {'N':>5} {'kind':10} {'implementation':14} {'seconds':>9} " \
           f"{'peak MiB':>9} {'speed-up':>9}  note"
    rows = [head, "-" * len(head)]
    for r in results:
        note = r.get("error", "")
        if r.get("extrapolated"):
            note = (f"extrapolated from {r['measured_pairs']} block pairs "
                    f"({r['measured_seconds']:.1f} s)")
        if r["impl"] == "auto" and "auto_choice" in r:
            note = f"auto -> {r['auto_choice']}"
        if "seconds" not in r:
            rows.append(f"{r['model']:9} {r['n']:>5} {r['kind']:10} {r['impl']:14} "
                        f"{'-':>9} {'-':>9} {'-':>9}  {note}")
            continue
        b = base.get((r["model"], r["kind"]))
        sp = f"{b['seconds'] / r['seconds']:.1f}x" if b and r["impl"] != "baseline" else ""
        rows.append(f"{r['model']:9} {r['n']:>5} {r['kind']:10} {r['impl']:14} "
                    f"{r['seconds']:9.2f} {r['peak_mib']:9.0f} {sp:>9}  {note}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small N smoke run")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", default="mlp,cnn,resnet18")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help="comma-separated engines; 'none' runs only the baseline")
    ap.add_argument("--n", type=int, default=None, help="override N for every model")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per case")
    ap.add_argument("--skip-slow-baseline", action="store_true",
                    help="time the baseline on 2 block pairs and scale to all pairs (marked "
                         "'extrapolated' in the table and JSON)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    ap.add_argument("--out", default=None,
                    help="JSON path (default benchmarks/results/kernels_<hostname>.json)")
    ap.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._case:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        print(json.dumps(run_case(json.loads(args._case))))
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda requested but torch.cuda.is_available() is False")
    out = Path(args.out) if args.out else (
        Path(__file__).resolve().parent / "results" / f"kernels_{socket.gethostname()}.json")
    info = machine_info(args.device)
    info["threads_per_case"] = args.threads or info["torch_threads"]
    cases = plan_cases(args)
    results = []
    for i, spec in enumerate(cases, 1):
        label = f"[{i}/{len(cases)}] {spec['model']} N={spec['n']} {spec['kind']} {spec['impl']}"
        print(label, "...", end=" ", flush=True)
        res = _spawn(spec, args.timeout)
        results.append(res)
        print(res.get("error") or f"{res['seconds']:.2f} s", flush=True)
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    text = table(results)
    print()
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "quick": args.quick,
               "baseline": "torch.func vmap(jacrev) + per-parameter einsum, blocks of "
                           f"{BASELINE_BLOCK} (4 for ResNet18 full/trace on CPU), all pairs",
               "results": results, "table": text}
    out.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
