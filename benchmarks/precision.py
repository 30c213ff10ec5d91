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

Networks and inputs are those of ``benchmarks/kernels.py`` (float32 weights, random inputs,
non-trivial BatchNorm statistics). Writes ``benchmarks/results/precision_<device>_<hostname>.json``
with machine information and prints a table. Timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import _setup, machine_info  # noqa: E402

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


def run(model: str, n: int, kind: str, precisions: list[str], device: str) -> list[dict]:
    import torch

    from ntkal.kernels import empirical_ntk

    net, x = _setup(model, n, device)
    rows = []
    n_labelled = max(1, n // 5)
    ref = None
    ref_sigma = None
    for precision in ["float64", *precisions]:
        p = None if precision == "float64" else precision
        empirical_ntk(net, x[:2], kind=kind, precision=p)  # warm-up (dispatch, allocations)
        _sync(device)
        t0 = time.perf_counter()
        theta = empirical_ntk(net, x, kind=kind, precision=p)
        _sync(device)
        secs = time.perf_counter() - t0
        row = {"model": model, "n": n, "kind": kind, "precision": precision, "seconds": secs,
               "finite": bool(torch.isfinite(theta).all())}
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
        rows.append(row)
        print(f"  {model} N={n} {kind} {precision}: {secs:.2f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    base = {(r["model"], r["kind"]): r["seconds"] for r in rows if r["precision"] == "float64"}
    head = (f"{'model':9} {'N':>5} {'kind':7} {'precision':9} {'seconds':>8} {'vs f64':>7} "
            f"{'max rel':>9} {'fro rel':>9} {'Σ rel':>9}")
    out = [head, "-" * len(head)]
    for r in rows:
        def f(key):
            return f"{r[key]:9.1e}" if key in r else f"{'-':>9}"
        speed = base[(r["model"], r["kind"])] / r["seconds"]
        out.append(f"{r['model']:9} {r['n']:>5} {r['kind']:7} {r['precision']:9} "
                   f"{r['seconds']:8.2f} {speed:6.2f}x {f('max_rel')} {f('fro_rel')} "
                   f"{f('sigma_rel')}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", default=None,
                    help="comma-separated (default: mlp,cnn on CPU; mlp,cnn,resnet18 on CUDA)")
    ap.add_argument("--kinds", default="pseudo,trace")
    ap.add_argument("--precisions", default=None,
                    help="comma-separated (default fp32,bf16 on CPU; fp32,tf32,bf16 on CUDA)")
    ap.add_argument("--n", type=int, default=None,
                    help="inputs per kernel (default 500 on CPU; 5000 on CUDA)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda requested but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    models = (args.models or ("mlp,cnn,resnet18" if cuda else "mlp,cnn")).split(",")
    precisions = (args.precisions or ("fp32,tf32,bf16" if cuda else "fp32,bf16")).split(",")
    if not cuda and "tf32" in precisions:
        ap.error("tf32 is a CUDA tensor-core format: empirical_ntk refuses it on the CPU")
    n = args.n or (5000 if cuda else 500)
    info = machine_info(args.device)
    rows = []
    for model in models:
        for kind in args.kinds.split(","):
            rows.extend(run(model, n, kind, precisions, args.device))
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    text = table(rows)
    print()
    print(text)
    out = Path(args.out) if args.out else (
        Path(__file__).resolve().parent / "results"
        / f"precision_{'cuda' if cuda else 'cpu'}_{socket.gethostname()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "ridge": RIDGE, "labelled_fraction": 0.2,
                               "results": rows, "table": text}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
