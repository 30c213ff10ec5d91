"""Wall-clock cost of scoring every candidate by look-ahead: eNTK closed form vs SGD retraining.

Mohamadi, Bae & Sutherland (NeurIPS 2022) make look-ahead acquisition feasible by replacing one
SGD retraining per candidate with a closed-form update of the linearised network. This benchmark
times both on the same trained model and data, in the same run:

* eNTK side: the kernel on ``[L; S]`` (one ``empirical_ntk`` call), the Cholesky solve that builds
  ``f̄`` and ``Σ``, and the MLMOC scoring of all of ``S`` — reported separately;
* SGD side: a warm-started fine-tune per candidate (``SGDLookahead``); only a timed sample of
  candidates is fine-tuned and the total for all of ``S`` is EXTRAPOLATED from it (plus the one
  control fine-tune), as the output says.

Run ``python benchmarks/lookahead_speed.py --quick``; writes
``benchmarks/results/lookahead_speed_<tag>.json`` with machine information.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import RESULTS, load_split, machine_info, make_config, train_network  # noqa: E402


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
    ap.add_argument("--quick", action="store_true", help="small setting (well under a minute)")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--n-labelled", type=int)
    ap.add_argument("--n-candidates", type=int)
    ap.add_argument("--kernels", nargs="+")
    ap.add_argument("--score", default="flip")
    ap.add_argument("--train-epochs", type=int)
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--finetune-batch", type=int, default=32)
    ap.add_argument("--finetune-lr", type=float, default=None)
    ap.add_argument("--sgd-sample", type=int)
    ap.add_argument("--repeats", type=int, default=1, help="eNTK timing repeats (best kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: small networks on a shared CPU run fastest so)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    quick = {"dataset": "digits", "model": "cnn", "width": None, "n_labelled": 100,
             "n_candidates": 200, "kernels": ["pseudo"], "train_epochs": 30, "sgd_sample": 4}
    full = {"dataset": "digits", "model": "cnn", "width": None, "n_labelled": 200,
            "n_candidates": 600, "kernels": ["pseudo", "trace", "full"], "train_epochs": 60,
            "sgd_sample": 10}
    for key, val in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    if args.tag is None:
        args.tag = "quick" if args.quick else "full"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
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
    ft = make_config(args.finetune_epochs, args.finetune_batch, args.finetune_lr, "mse", args.seed)
    sgd = time_sgd(model, xl, yl, xs, k, ft, args.sgd_sample, args.seed)
    print(f"SGD look-ahead: {sgd['per_candidate_seconds_mean']:.3f}s ± "
          f"{sgd['per_candidate_seconds_std']:.3f}s per candidate ({args.finetune_epochs} epochs on "
          f"|L|+1), timed on {sgd['sampled_candidates']} candidates and EXTRAPOLATED to all {m}: "
          f"{sgd['extrapolated_total_seconds']:.1f}s", flush=True)
    ntk = {}
    for kern in args.kernels:
        row = time_ntk(model, xl, yl, xs, k, kern, args.score, args.repeats)
        row["speedup_vs_sgd"] = sgd["extrapolated_total_seconds"] / row["total_seconds"]
        ntk[kern] = row
        print(f"eNTK look-ahead ({kern:6s}): kernel {row['kernel_seconds']:.2f}s + solve "
              f"{row['solve_seconds']:.3f}s + scoring {row['score_seconds']:.3f}s = "
              f"{row['total_seconds']:.2f}s  ->  {row['speedup_vs_sgd']:.1f}x faster than SGD "
              "(extrapolated)", flush=True)
    result = {"benchmark": "lookahead_speed", "args": vars(args), "machine": machine_info(),
              "params": n_params, "num_labelled": len(xl), "num_candidates": m,
              "num_classes": k, "train_seconds": train_seconds, "sgd": sgd, "ntk": ntk,
              "note": "SGD total extrapolated from a timed sample of candidates; the machine "
                      "may have been shared with other jobs (see machine.loadavg)."}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"lookahead_speed_{args.tag}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
