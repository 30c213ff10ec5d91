"""Error and time of reduced-precision Grams (``empirical_ntk(precision=...)``) against float64.

For each network and kernel kind the float64 kernel (float64 throughout, the default) is the
reference; every precision (``fp32``, ``bf16``, and ``tf32`` on CUDA) is timed on the same inputs
and compared with it:

* ``max rel``: max |ΔΘ| / max |Θ|;  ``fro rel``: ||ΔΘ||_F / ||Θ||_F;
* ``Σ rel``: the look-ahead's posterior variances diag Σ_SS, Σ = Θ_SS − Θ_SL (Θ_LL + λI)⁻¹ Θ_LS
  with L the first N/5 inputs, S the rest and λ = 1e-3 · mean diag Θ_LL, computed in float64
  from each kernel: max |Δ diag Σ| / max diag Σ (Σ's cancellation amplifies Gram errors).

Usage::

    python benchmarks/precision.py                    # CPU: MLP and CNN (N=500), pseudo and trace
    python benchmarks/precision.py --device cuda      # adds ResNet18 at N=5000 (L=1000, S=4000), tf32
    python benchmarks/precision.py --models resnet18 --n 64 --kinds pseudo

    python benchmarks/precision.py --quick            # smoke run: MLP, N = 40, pseudo, fp32

Networks and inputs are those of ``benchmarks/kernels.py`` (float32 weights, random inputs,
non-trivial BatchNorm statistics). Every row states the kernel's GEMM FLOPs (symmetric, cheapest
route per layer, plus featurisation; ``_common.gram_flops``) and its ``× floor`` at the GEMM rate
of its precision measured in the same run (float64; float32 for fp32 and tf32; bfloat16 for
bf16), with the load average before and after it. Writes
``benchmarks/results/precision_<device>_<hostname>.json`` (``_loaded.json`` when a row ran on a
loaded machine) with machine information and prints a table.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import _common
from kernels import _setup, case_work

RIDGE = 1e-3


def posterior_variances(theta, n_labelled: int):
    """diag Σ_SS for L = the first ``n_labelled`` inputs (float64)."""
    import torch

    t = theta.double()
    kll = t[:n_labelled, :n_labelled]
    ksl = t[n_labelled:, :n_labelled]
    lam = RIDGE * float(kll.diagonal().mean())
    chol = torch.linalg.cholesky(kll + lam * torch.eye(n_labelled, dtype=t.dtype, device=t.device))
    w = torch.cholesky_solve(ksl.T, chol)  # (L, S)
    return t[n_labelled:, n_labelled:].diagonal() - (ksl * w.T).sum(1)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


RATE_DTYPE = {"float64": "float64", "fp32": "float32", "tf32": "float32", "bf16": "bfloat16"}


def run(model: str, n: int, kind: str, precisions: list[str], device: str, rates: dict,
        threads: int) -> list[dict]:
    import torch

    from ntkal.kernels import empirical_ntk

    net, x = _setup(model, n, device)
    work = case_work(net, x, kind)
    rows = []
    n_labelled = max(1, n // 5)
    ref = None
    ref_sigma = None
    for precision in ["float64", *precisions]:
        p = None if precision == "float64" else precision
        before = _common.loadavg()
        empirical_ntk(net, x[:2], kind=kind, precision=p)  # warm-up (dispatch, allocations)
        _sync(device)
        t0 = time.perf_counter()
        theta = empirical_ntk(net, x, kind=kind, precision=p)
        _sync(device)
        secs = time.perf_counter() - t0
        row = {"model": model, "n": n, "kind": kind, "precision": precision, "seconds": secs,
               "finite": bool(torch.isfinite(theta).all()), "flops": work["best_flops"]}
        if RATE_DTYPE[precision] in rates.get("gemm_gflops", {}):
            rate = _common.gemm_rate(rates, RATE_DTYPE[precision], threads)
            row["floor_seconds"] = _common.floor_seconds(row["flops"], rate)
            row["times_floor"] = _common.times_floor(secs, row["floor_seconds"])
        if ref is None:
            ref = theta
            if kind != "full":
                ref_sigma = posterior_variances(ref, n_labelled)
        else:
            d = (theta - ref)
            row["max_rel"] = float(d.abs().max() / ref.abs().max())
            row["fro_rel"] = float(d.norm() / ref.norm())
            if ref_sigma is not None:
                sig = posterior_variances(theta, n_labelled)
                row["sigma_rel"] = float((sig - ref_sigma).abs().max() / ref_sigma.abs().max())
        row.update(_common.case_load(before, threads))
        rows.append(row)
        print(f"  {model} N={n} {kind} {precision}: {secs:.2f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    base = {(r["model"], r["kind"]): r["seconds"] for r in rows if r["precision"] == "float64"}
    body = []
    for r in rows:
        speed = base[(r["model"], r["kind"])] / r["seconds"]
        body.append([r["model"], r["n"], r["kind"], r["precision"], f"{r['seconds']:.2f}",
                     _common.fmt(r.get("times_floor"), ".1f"), f"{speed:.2f}×",
                     _common.fmt(r.get("max_rel"), ".1e"), _common.fmt(r.get("fro_rel"), ".1e"),
                     _common.fmt(r.get("sigma_rel"), ".1e"), _common.load_mark(r)])
    return _common.markdown_table(
        ["model", "N", "kind", "precision", "seconds", "× floor", "vs f64", "max rel", "fro rel",
         "Σ rel", "load 1-min before/after"], body, align="lrllrrrrrrl")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_common_args(ap, "smoke run: MLP, N = 40, pseudo, fp32 (seconds)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", default=None,
                    help="comma-separated (default: mlp,cnn on CPU; mlp,cnn,resnet18 on CUDA)")
    ap.add_argument("--kinds", default=None, help="default pseudo,trace")
    ap.add_argument("--precisions", default=None,
                    help="comma-separated (default fp32,bf16 on CPU; fp32,tf32,bf16 on CUDA)")
    ap.add_argument("--n", type=int, default=None,
                    help="inputs per kernel (default 500 on CPU; 5000 on CUDA)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    _common.one_at_a_time(args.quick)

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda requested but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.models, args.kinds = args.models or "mlp", "pseudo" if args.kinds is None else args.kinds
        args.precisions, args.n = args.precisions or "fp32", args.n or 40
    args.kinds = args.kinds or "pseudo,trace"
    models = (args.models or ("mlp,cnn,resnet18" if cuda else "mlp,cnn")).split(",")
    precisions = (args.precisions or ("fp32,tf32,bf16" if cuda else "fp32,bf16")).split(",")
    if not cuda and "tf32" in precisions:
        ap.error("tf32 is a CUDA tensor-core format: empirical_ntk refuses it on the CPU")
    n = args.n or (5000 if cuda else 500)
    info = _common.machine_info(args.device)
    rates = _common.measure_rates(args.threads, quick=args.quick, device=args.device)
    if "bf16" in precisions:
        sizes = ((128, 256) if args.quick else (2048, 4096, 8192) if cuda else (512, 1024, 2048))
        rates["gemm_gflops"].update(_common.gemm_rates(
            [1] if cuda else sorted({1, args.threads}), sizes=sizes, repeats=3,
            dtypes=("bfloat16",), device=args.device))
    rows = []
    for model in models:
        for kind in args.kinds.split(","):
            rows.extend(run(model, n, kind, precisions, args.device, rates, args.threads))
    text = table(rows)
    print()
    print(text)
    out = Path(args.out) if args.out else (
        _common.results_dir(args)
        / f"precision_{'cuda' if cuda else 'cpu'}_{socket.gethostname()}"
          f"{'_quick' if args.quick else ''}.json")
    _common.write_result(out, {"benchmark": "precision", "machine": info, "rates": rates,
                               "ridge": RIDGE, "labelled_fraction": 0.2, "results": rows,
                               "table": text}, rows, quick=args.quick, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
