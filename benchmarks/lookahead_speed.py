"""Wall-clock cost of scoring every candidate by look-ahead: eNTK closed form vs SGD retraining.

Mohamadi, Bae & Sutherland (NeurIPS 2022) make look-ahead acquisition feasible by replacing one
SGD retraining per candidate with a closed-form update of the linearised network. This benchmark
times both on the same trained model and data, in the same run:

* eNTK side: the kernel on ``[L; S]`` (one ``empirical_ntk`` call), the Cholesky solve that builds
  ``f̄`` and ``Σ``, and the MLMOC scoring of all of ``S`` — reported separately;
* SGD side: a warm-started fine-tune per candidate (``SGDLookahead``); only a timed sample of
  candidates is fine-tuned and the total for all of ``S`` is EXTRAPOLATED from it (plus the one
  control fine-tune), as the output says.

Each eNTK row states its arithmetic and its ``× floor`` at the float64 GEMM rate measured in the
same run (``_common``): the symmetric kernel on ``[L; S]`` (cheapest route per layer, plus one
featurisation pass), the Cholesky factor of Θ(L, L) (n³/3) and the triangular solves for Σ
(:func:`ntk_work`); the load average is recorded before and after each part.

Run ``python benchmarks/lookahead_speed.py`` (the README's setting), ``--quick`` for a smoke run
(seconds); writes ``benchmarks/results/lookahead_speed_<tag>.json`` with machine information.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import _common
from _common import load_split, make_config, train_network


def ntk_work(model, x, n: int, m: int, k: int, kernel: str) -> float:
    """FLOPs the closed-form look-ahead needs at least: the symmetric kernel on ``[L; S]``
    (``_common.gram_flops``, best route per layer, plus featurisation), Cholesky of Θ(L, L)
    (n³/3), V = L⁻¹ Θ(L, S) (n² m) and Σ = Θ(S, S) − Vᵀ V (n m², symmetric); with the full
    kernel every n and m counts k outputs."""
    layers = _common.model_layers(model, x[0])
    gram = _common.gram_flops(layers, n + m, n + m, kernel, k, symmetric=True)["best"]
    feat = _common.featurise_flops(layers, n + m, kernel, k)
    p = k if kernel == "full" else 1
    nn_, mm = n * p, m * p
    return gram + feat + nn_ ** 3 / 3 + nn_ ** 2 * mm + nn_ * mm * (mm + 1)


def time_ntk(model, xl, yl, xs, k, kernel, score, repeats=1) -> dict:
    from ntkal.kernels import empirical_ntk
    from ntkal.lookahead import Lookahead
    from ntkal.strategies.lookahead import MLMOC

    n = xl.shape[0]
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        theta, f, _ = empirical_ntk(model, torch.cat([xl, xs]), kind=kernel, dtype=torch.float64,
                                    return_outputs=True)
        t1 = time.perf_counter()
        y1 = torch.nn.functional.one_hot(yl.long(), k).to(torch.float64)
        f = f.detach().to(torch.float64)
        la = Lookahead.from_kernels(theta[:n, :n], theta[n:, :n], theta[n:, n:], f[:n], f[n:], y1)
        t2 = time.perf_counter()
        scores, _ = MLMOC(kernel=kernel, score=score).score_candidates(la)
        t3 = time.perf_counter()
        row = {"kernel_seconds": t1 - t0, "solve_seconds": t2 - t1, "score_seconds": t3 - t2,
               "total_seconds": t3 - t0}
        if best is None or row["total_seconds"] < best["total_seconds"]:
            best = row
    assert np.isfinite(scores).all()
    return best


def time_sgd(model, xl, yl, xs, k, finetune, sample, seed) -> dict:
    from ntkal.strategies.base import QueryContext
    from ntkal.strategies.lookahead import SGDLookahead
    from ntkal.training import predict_logits

    ctx = QueryContext(model=model, x_candidates=xs, x_labelled=xl, y_labelled=yl, num_classes=k)
    strat = SGDLookahead(finetune=finetune)
    pseudo = predict_logits(model, xs).argmax(1)
    t0 = time.perf_counter()
    strat.control_predictions(ctx)
    control = time.perf_counter() - t0
    m = xs.shape[0]
    picks = np.random.default_rng(seed).choice(m, size=min(sample, m), replace=False)
    per = []
    for j in picks:
        t = time.perf_counter()
        strat.sgd_predictions(ctx, int(j), int(pseudo[j]))
        per.append(time.perf_counter() - t)
    per = np.asarray(per)
    return {"control_seconds": control, "sampled_candidates": int(len(per)),
            "per_candidate_seconds_mean": float(per.mean()),
            "per_candidate_seconds_std": float(per.std()),
            "extrapolated_total_seconds": float(control + per.mean() * m),
            "extrapolated": len(per) < m}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(ap, "smoke run: |L| = 20, |S| = 30, 2 SGD candidates (seconds)")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--n-labelled", type=int)
    ap.add_argument("--n-candidates", type=int)
    ap.add_argument("--kernels", nargs="+")
    ap.add_argument("--score", default="flip")
    ap.add_argument("--train-epochs", type=int)
    ap.add_argument("--finetune-epochs", type=int, default=None, help="default 20")
    ap.add_argument("--finetune-batch", type=int, default=32)
    ap.add_argument("--finetune-lr", type=float, default=None)
    ap.add_argument("--sgd-sample", type=int)
    ap.add_argument("--repeats", type=int, default=1, help="eNTK timing repeats (best kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: small networks on a shared CPU run fastest so)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    quick = {"dataset": "digits", "model": "cnn", "width": None, "n_labelled": 20,
             "n_candidates": 30, "kernels": ["pseudo"], "train_epochs": 1, "sgd_sample": 2,
             "finetune_epochs": 1}
    full = {"dataset": "digits", "model": "cnn", "width": None, "n_labelled": 200,
            "n_candidates": 600, "kernels": ["pseudo", "trace", "full"], "train_epochs": 60,
            "sgd_sample": 10, "finetune_epochs": 20}
    for key, val in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    if args.tag is None:
        args.tag = "quick" if args.quick else "full"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    _common.one_at_a_time(args.quick)
    if args.threads:
        torch.set_num_threads(args.threads)
    xl, yl, xs, _, _, _, k, in_shape = load_split(args.dataset, args.n_labelled,
                                                  args.n_candidates, 50, args.seed)
    cfg = make_config(args.train_epochs, 32, None, "mse", args.seed, weight_decay=5e-4,
                      schedule="cosine")
    t0 = time.perf_counter()
    model = train_network(args.model, in_shape, k, args.width, xl, yl, cfg)
    train_seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    m = xs.shape[0]
    print(f"{args.dataset} {args.model} ({n_params} params): |L| = {len(xl)}, |S| = {m}, k = {k}; "
          f"initial training {train_seconds:.1f}s", flush=True)
    rates = _common.measure_rates(args.threads or 1, quick=args.quick)
    rate = _common.gemm_rate(rates, "float64", args.threads or 1)
    ft = make_config(args.finetune_epochs, args.finetune_batch, args.finetune_lr, "mse", args.seed)
    before = _common.loadavg()
    sgd = time_sgd(model, xl, yl, xs, k, ft, args.sgd_sample, args.seed)
    sgd.update(_common.case_load(before, args.threads or 1))
    rows = [sgd]
    print(f"SGD look-ahead: {sgd['per_candidate_seconds_mean']:.3f}s ± "
          f"{sgd['per_candidate_seconds_std']:.3f}s per candidate ({args.finetune_epochs} epochs on "
          f"|L|+1), timed on {sgd['sampled_candidates']} candidates and EXTRAPOLATED to all {m}: "
          f"{sgd['extrapolated_total_seconds']:.1f}s", flush=True)
    ntk = {}
    for kern in args.kernels:
        before = _common.loadavg()
        row = time_ntk(model, xl, yl, xs, k, kern, args.score, args.repeats)
        row.update(_common.case_load(before, args.threads or 1))
        row["speedup_vs_sgd"] = sgd["extrapolated_total_seconds"] / row["total_seconds"]
        row["flops"] = ntk_work(model, xl, len(xl), m, k, kern)
        row["floor_seconds"] = _common.floor_seconds(row["flops"], rate)
        row["times_floor"] = _common.times_floor(row["total_seconds"], row["floor_seconds"])
        ntk[kern] = row
        rows.append(row)
        print(f"eNTK look-ahead ({kern:6s}): kernel {row['kernel_seconds']:.2f}s + solve "
              f"{row['solve_seconds']:.3f}s + scoring {row['score_seconds']:.3f}s = "
              f"{row['total_seconds']:.2f}s ({row['times_floor']:.1f}× floor)  ->  "
              f"{row['speedup_vs_sgd']:.1f}x faster than SGD (extrapolated); load "
              f"{_common.load_mark(row)}", flush=True)
    result = {"benchmark": "lookahead_speed", "args": vars(args),
              "machine": _common.machine_info(), "rates": rates,
              "params": n_params, "num_labelled": len(xl), "num_candidates": m,
              "num_classes": k, "train_seconds": train_seconds, "sgd": sgd, "ntk": ntk,
              "note": "SGD total extrapolated from a timed sample of candidates; the machine "
                      "is README-grade only when no part ran loaded (loadavg per part)."}
    _common.write_result(_common.results_dir(args) / f"lookahead_speed_{args.tag}.json", result,
                         rows, quick=args.quick)
    return result


if __name__ == "__main__":
    main()
