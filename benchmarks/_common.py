"""What every benchmark shares: machine information, the load rule, floors, tables and JSON.

A timing is only worth quoting next to what the machine could do at best. Every benchmark
therefore

* records the machine (CPU model, torch threads, BLAS, torch / numpy versions, git commit) and the
  load average before and after every case (:func:`case_load`);
* marks a case ``loaded`` when the 1-minute load average, before or after it, exceeds the cores the
  case uses (plus :data:`LOAD_SLACK`), and refuses to write a README-grade result file when any row
  is loaded: :func:`write_result` then writes ``<name>_loaded.json`` beside it instead;
* states the arithmetic a case must do (FLOPs or bytes; :func:`model_layers`, :func:`gram_flops`,
  :func:`mlmoc_query_flops`, :func:`sequential_step_work`) and measures, in the same run, the rate
  this machine runs float64 and float32 GEMM at (:func:`gemm_rates`) and streams memory at
  (:func:`stream_bandwidth`), so each time is printed with its ``× floor`` = time / (work / rate).

Benchmarks are run as scripts, ``python benchmarks/<name>.py``: the script's folder is then first
on ``sys.path`` and ``import _common`` needs no path edits. Importing this module puts the
checkout's ``src`` first on the path, so a benchmark measures the code of the commit it records.
Benchmarks run one at a time; each has ``--quick`` (seconds, tiny sizes; never README-grade).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # measure this checkout's code, the commit recorded below
    sys.path.insert(0, str(ROOT / "src"))

#: Where result files go unless ``--results`` or ``$NTKAL_BENCH_RESULTS`` says otherwise.
RESULTS = Path(os.environ.get("NTKAL_BENCH_RESULTS") or (ROOT / "benchmarks" / "results"))
#: Load above the cores a case uses that still counts as a quiet machine (shells, the kernel).
LOAD_SLACK = 0.5


# ----------------------------------------------------------------------------- machine and load
def loadavg() -> Optional[list[float]]:
    """The 1-, 5- and 15-minute load averages, or ``None`` where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        return None


def is_loaded(before: Optional[Sequence[float]], after: Optional[Sequence[float]],
              cores: float, slack: float = LOAD_SLACK) -> bool:
    """Whether another job shared the machine: the 1-minute load, before or after the case, above
    the ``cores`` the case itself uses (plus ``slack``). Unknown load counts as loaded."""
    if before is None or after is None:
        return True
    return max(before[0], after[0]) > cores + slack


def case_load(before: Optional[Sequence[float]], cores: float) -> dict:
    """The load fields of one row, ``before`` taken when the case started and now as after."""
    after = loadavg()
    return {"loadavg_before": before, "loadavg_after": after, "cores": cores,
            "loaded": is_loaded(before, after, cores)}


def run_case(fn: Callable[[], dict], cores: float) -> dict:
    """Run one case, ``fn() -> row``, and add its load before and after (:func:`case_load`)."""
    before = loadavg()
    row = dict(fn())
    row.update(case_load(before, cores))
    return row


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or ""


def _git_commit() -> dict:
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD") or None,
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):  # pragma: no cover - no git
        return {"commit": None, "dirty": None}


def _blas() -> dict:
    import numpy as np
    import torch

    out = {}
    config = torch.__config__.show()
    for key in ("BLAS_INFO", "LAPACK_INFO"):
        part = config.split(key + "=", 1)
        if len(part) == 2:
            out["torch_" + key.lower()] = part[1].split(",", 1)[0].strip()
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # pragma: no cover - numpy < 1.25 prints only
        pass
    return out


def machine_info(device: str = "cpu") -> dict:
    """What the numbers were measured on, and the load average now."""
    import numpy as np
    import torch

    info = {"hostname": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "torch": torch.__version__, "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(), **_blas(), "git": _git_commit(),
            "device": device, "loadavg": loadavg()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------- arguments
def add_common_args(ap: argparse.ArgumentParser, quick_help: str = "tiny sizes, seconds") -> None:
    """``--quick`` (a smoke run, never README-grade) and ``--results DIR``."""
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--results", type=Path, default=None,
                    help=f"folder for the result JSON (default {RESULTS}, or $NTKAL_BENCH_RESULTS)")


def results_dir(args) -> Path:
    return Path(getattr(args, "results", None) or RESULTS)


_LOCK = None


def one_at_a_time(quick: bool = False) -> None:
    """Hold the machine-wide benchmark lock (a ``flock`` in the temporary folder) until this
    process exits, waiting while another full benchmark holds it: two benchmarks side by side
    would each time the other's load. Quick runs, which are never quoted, skip it."""
    global _LOCK
    if quick or _LOCK is not None:
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return
    import tempfile

    fh = open(Path(tempfile.gettempdir()) / "ntkal-benchmark.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("another benchmark is running: waiting for it to finish", file=sys.stderr,
              flush=True)
        fcntl.flock(fh, fcntl.LOCK_EX)
    _LOCK = fh


# ----------------------------------------------------------------------------- measured rates
def _median_seconds(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    import torch

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()  # warm-up: allocation, first-call dispatch
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_rates(threads: Iterable[int] = (1,), sizes: Sequence[int] = (512, 1024, 2048),
               repeats: int = 5, dtypes: Sequence[str] = ("float64", "float32"),
               device: str = "cpu") -> dict:
    """This machine's square-GEMM rate, GFLOP/s (2 n³ per product, median of ``repeats``), per
    dtype, thread count and size; ``best`` is the fastest size, the rate a floor divides by.
    On a CUDA ``device`` the thread count is only a label (torch threads do not matter there)."""
    import torch

    old = torch.get_num_threads()
    out: dict = {}
    try:
        for dtype in dtypes:
            dt = getattr(torch, dtype)
            for t in sorted(set(int(t) for t in threads)):
                torch.set_num_threads(t)
                per = {}
                for n in sizes:
                    g = torch.Generator().manual_seed(n)
                    a = torch.randn(n, n, generator=g, dtype=dt).to(device)
                    b = torch.randn(n, n, generator=g, dtype=dt).to(device)
                    c = torch.empty(n, n, dtype=dt, device=device)
                    secs = _median_seconds(lambda: torch.mm(a, b, out=c), repeats, device)
                    per[str(n)] = 2.0 * n ** 3 / secs / 1e9
                out.setdefault(dtype, {})[str(t)] = {"gflops_by_size": per,
                                                     "best": max(per.values())}
    finally:
        torch.set_num_threads(old)
    return out


def stream_bandwidth(threads: Iterable[int] = (1,), numel: int = 1 << 24, repeats: int = 5,
                     device: str = "cpu") -> dict:
    """Memory bandwidth, GB/s, of the in-place float64 update ``y += a x`` (24 bytes an element:
    read x, read and write y), median of ``repeats``, per thread count."""
    import torch

    old = torch.get_num_threads()
    out = {}
    try:
        for t in sorted(set(int(t) for t in threads)):
            torch.set_num_threads(t)
            x = torch.ones(numel, dtype=torch.float64, device=device)
            y = torch.zeros(numel, dtype=torch.float64, device=device)
            secs = _median_seconds(lambda: y.add_(x, alpha=1e-3), repeats, device)
            out[str(t)] = 24.0 * numel / secs / 1e9
    finally:
        torch.set_num_threads(old)
    return out


def measure_rates(threads: int, quick: bool = False, device: str = "cpu") -> dict:
    """GEMM rates (float64, float32; 1 thread and ``threads``) and stream bandwidth, in one go;
    on a CUDA ``device``, the device's (larger sizes)."""
    used = sorted({1, int(threads)})
    if quick:
        return {"gemm_gflops": gemm_rates(used, sizes=(128, 256), repeats=3, device=device),
                "stream_gbps": stream_bandwidth(used, numel=1 << 18, repeats=3, device=device),
                "quick": True, "device": device}
    if device.startswith("cuda"):
        return {"gemm_gflops": gemm_rates([1], sizes=(2048, 4096, 8192), device=device),
                "stream_gbps": stream_bandwidth([1], numel=1 << 27, device=device),
                "device": device}
    return {"gemm_gflops": gemm_rates(used), "stream_gbps": stream_bandwidth(used),
            "device": device}


def gemm_rate(rates: dict, dtype: str, threads: int) -> float:
    """Best measured GFLOP/s for ``dtype`` at ``threads`` (the nearest measured thread count)."""
    per = rates["gemm_gflops"][dtype]
    key = min(per, key=lambda t: abs(int(t) - int(threads)))
    return float(per[key]["best"])


def bandwidth(rates: dict, threads: int) -> float:
    per = rates["stream_gbps"]
    return float(per[min(per, key=lambda t: abs(int(t) - int(threads)))])


def floor_seconds(flops: float = 0.0, gflops: float = math.inf, nbytes: float = 0.0,
                  gbps: float = math.inf) -> float:
    """Roofline floor: the slower of doing ``flops`` at ``gflops`` and moving ``nbytes`` at ``gbps``."""
    return max(flops / (gflops * 1e9), nbytes / (gbps * 1e9))


def times_floor(seconds: Optional[float], floor: Optional[float]) -> Optional[float]:
    if seconds is None or not floor:
        return None
    return seconds / floor


# ----------------------------------------------------------------------------- arithmetic counts
def model_layers(model, example) -> list[dict]:
    """Every parameterised leaf module of ``model`` with its shapes, from one forward pass of
    ``example`` (one input, no batch axis): type, parameters, forward FLOPs per input, and for
    ``nn.Linear`` the widths that its factorised kernel needs (``in``, ``out``, ``bias``)."""
    import torch
    from torch import nn

    layers: list[dict] = []
    hooks = []

    def hook(module, inputs, output):
        p = sum(q.numel() for q in module.parameters(recurse=False) if q.requires_grad)
        row = {"name": names[module], "type": type(module).__name__, "params": p}
        if isinstance(module, nn.Linear):
            rows = inputs[0].numel() // module.in_features
            row.update(inp=module.in_features, out=module.out_features,
                       bias=module.bias is not None,
                       forward_flops=2 * rows * module.in_features * module.out_features)
        elif isinstance(module, nn.modules.conv._ConvNd):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
            row["forward_flops"] = 2 * per_out * output.numel()
        else:
            row["forward_flops"] = 2 * output.numel()
        layers.append(row)

    names = {m: n for n, m in model.named_modules()}
    for m in model.modules():
        if any(True for _ in m.children()):
            continue
        if any(q.requires_grad for q in m.parameters(recurse=False)):
            hooks.append(m.register_forward_hook(hook))
    try:
        was = [(m, m.training) for m in model.modules()]
        model.eval()
        with torch.no_grad():
            model(example.unsqueeze(0))
    finally:
        for h in hooks:
            h.remove()
        for m, t in was:
            m.training = t
    return layers


def _outputs_per_kind(kind: str, k: int) -> int:
    return {"pseudo": 1, "last_layer": 1, "trace": k, "full": k * k}[kind]


def layer_gram_flops(layer: dict, kind: str, k: int) -> dict:
    """FLOPs per (x, x') pair of one layer's kernel contribution, by the explicit route (dot
    products of per-example gradients: P per output pair) and, for ``nn.Linear``, by the exact
    factorisation Θ = (a·a' + 1)(δ·δ') (Novak et al., ICML 2022): ``in`` for the activations plus
    ``out`` per backpropagated output (1 pseudo, k trace — Σ_c δ_c·δ_c' — and k² full)."""
    explicit = 2 * layer["params"] * _outputs_per_kind(kind, k)
    best = explicit
    if layer["type"] == "Linear":
        fact = 2 * (layer["inp"] + layer["out"] * _outputs_per_kind(kind, k))
        best = min(explicit, fact)
    return {"explicit": explicit, "best": best}


def gram_flops(layers: list[dict], n1: int, n2: int, kind: str, k: int,
               symmetric: bool = False) -> dict:
    """GEMM FLOPs of a kernel Θ(X1, X2) of ``kind``: ``explicit`` (Gram of explicit per-example
    gradients, 2 n1 n2 P × outputs) and ``best`` (per layer the cheaper of explicit and
    factorised); ``symmetric`` halves the off-diagonal pairs (Θ(X, X))."""
    if kind == "last_layer":
        last = [lay for lay in layers if lay["type"] == "Linear"][-1]
        per = {"explicit": 2 * last["params"], "best": 2 * (last["inp"] + 1)}
    else:
        per = {"explicit": 0, "best": 0}
        for lay in layers:
            for key, v in layer_gram_flops(lay, kind, k).items():
                per[key] += v
    pairs = n1 * (n1 + 1) / 2 if symmetric else n1 * n2
    return {key: v * pairs for key, v in per.items()}


def featurise_flops(layers: list[dict], n: int, kind: str, k: int) -> float:
    """A lower bound on featurising n inputs: one forward pass, and per backpropagated output
    (1 pseudo, k trace / full; none for last_layer) one backward pass of the sensitivities
    through every layer but the first (its δ is at its output), each layer's backward at least
    as costly as its forward."""
    fwd = sum(lay["forward_flops"] for lay in layers)
    back = 0 if kind == "last_layer" else (1 if kind == "pseudo" else k)
    first = layers[0]["forward_flops"] if layers else 0
    return float(n * (fwd + back * (fwd - first)))


def mlmoc_query_flops(layers: list[dict], n: int, e: int, m: int, k: int) -> dict:
    """FLOPs of the whole-pool MLMOC query (pseudo-NTK; L of n points, candidates C = the m pool
    points, evaluation set E ⊂ C of e points; Mohamadi et al. 2022 Sec. 3 with Σ[E, C] =
    Θ(E, C) − V_Eᵀ V_C, V = chol(Θ(L, L))⁻¹ Θ(L, ·)): the GEMMs Θ(E, C), V_Eᵀ V_C and Θ(L, C) by
    the cheapest route per layer, plus the smaller terms (featurisation, Θ(L, L), its Cholesky
    factor, the triangular solve for V_C). Θ(E, C) and V_Eᵀ V_C count the E × E block once."""
    per = gram_flops(layers, 1, 1, "pseudo", k)["best"]
    ec_pairs = e * (m - e) + e * (e + 1) / 2
    terms = {"theta_EC": per * ec_pairs, "VtV_EC": 2.0 * n * ec_pairs, "theta_LC": per * n * m,
             "theta_LL": per * n * (n + 1) / 2, "cholesky": n ** 3 / 3.0,
             "solve_V_C": float(n) * n * m, "featurise": featurise_flops(layers, n + m, "pseudo", k)}
    terms["total"] = sum(terms.values())
    return terms


def sequential_step_work(n: int, e: int, m: int, k: int, per_pair: float) -> dict:
    """Work of one sequential step with Σ[E, C] (e × m, float64) cached: the new row Σ[j, C]
    (kernel row of the chosen point, ``per_pair`` FLOPs a pair, and its V product), one rank-one
    update of Σ[E, C] (2 e m FLOPs; read and write, 16 e m bytes) and one rescoring pass over it
    (each candidate's look-ahead of the k outputs on E: 2 e m k FLOPs, reading 8 e m bytes)."""
    return {"flops": per_pair * m + 2.0 * n * m + 2.0 * e * m + 2.0 * e * m * k,
            "bytes": 24.0 * e * m}


# ----------------------------------------------------------------------------- shared set-up
def make_config(epochs, batch_size, lr, loss, seed, momentum=0.9, weight_decay=0.0,
                schedule="constant"):
    """A TrainConfig; ``lr=None`` takes the loss's default rate (MSE averages over classes)."""
    from ntkal.training import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                       weight_decay=weight_decay, schedule=schedule, loss=loss, seed=seed)


def load_split(dataset: str, n_labelled: int, n_candidates: int, n_test: int, seed: int):
    """Labelled set L, candidate set S (disjoint, from the training split) and a test set."""
    import numpy as np
    import torch

    from ntkal.data import load_dataset

    ds = load_dataset(dataset, train_size=n_labelled + n_candidates, test_size=n_test, seed=seed)
    rng = np.random.default_rng(seed)
    perm = torch.as_tensor(rng.permutation(ds.x_train.shape[0]))
    li, si = perm[:n_labelled], perm[n_labelled:n_labelled + n_candidates]
    return (ds.x_train[li], ds.y_train[li], ds.x_train[si], ds.y_train[si],
            ds.x_test, ds.y_test, ds.num_classes, tuple(ds.in_shape))


def train_network(model_name, in_shape, num_classes, width, x, y, config):
    """``model_name`` built with the seed of ``config`` and trained on (x, y); in eval mode."""
    import torch

    from ntkal.models import build_model
    from ntkal.training import train

    torch.manual_seed(config.seed)
    model = build_model(model_name, in_shape, num_classes, width=width)
    train(model, x, y, config, num_classes=num_classes)
    return model.eval()


# ----------------------------------------------------------------------------- output
def fmt(v, spec: str = ".2f", missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def load_mark(row: dict) -> str:
    """``1.02/1.10`` (1-minute load before / after), with ``loaded`` when the row is."""
    b, a = row.get("loadavg_before"), row.get("loadavg_after")
    text = f"{b[0]:.2f}/{a[0]:.2f}" if b and a else "?"
    return text + (" loaded" if row.get("loaded", True) else "")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                   align: Optional[str] = None) -> str:
    """A Markdown table; ``align`` one letter a column, ``l`` or ``r`` (default: first left)."""
    rows = [[str(c) for c in r] for r in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_result(path: Path, payload: dict, rows: Sequence[dict], quick: bool = False,
                 device: str = "cpu") -> Path:
    """Write ``payload`` (plus the machine, the load now, and whether it is README-grade) as JSON.

    README-grade means a full run whose rows are all unloaded. Otherwise the file is written as
    ``<stem>_loaded.json`` next to ``path``, never over a README-grade file, and a warning says
    which rows were loaded; quick runs are written where asked but marked not README-grade."""
    loaded = [i for i, r in enumerate(rows) if r.get("loaded", True)]
    grade = not quick and not loaded and bool(rows)
    out = dict(payload)
    out.setdefault("machine", machine_info(device))
    out["loadavg_end"] = loadavg()
    out["readme_grade"] = grade
    if not grade:
        out["not_readme_grade"] = ("quick run" if quick else
                                   f"rows {loaded} ran with the load above the cores they use"
                                   if loaded else "no rows")
    path = Path(path)
    if not grade and not quick:
        path = path.with_name(path.stem + "_loaded" + path.suffix)
        print(f"NOT README-grade ({out['not_readme_grade']}); writing {path.name} instead",
              file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")
    return path
