"""How faithful is the eNTK look-ahead to real SGD retraining?

Mohamadi, Bae & Sutherland (NeurIPS 2022) replace "retrain the network with one more labelled
point" by a closed-form update of the network linearised at its trained weights. This benchmark
measures that approximation directly: for each of ``m`` candidates ``x_j`` it compares

* the NTK-predicted change of the outputs on the candidate set ``S``, ``f^{(j,ŷ_j)}(S) − f̄(S)``
  (``ntkal.lookahead.Lookahead``), with
* the change after REAL SGD: a deep copy of the trained network warm-start fine-tuned on
  ``L ∪ {(x_j, ŷ_j)}``, minus a control copy fine-tuned on ``L`` alone with the same seed
  (``ntkal.strategies.lookahead.SGDLookahead``),

and reports Pearson/Spearman correlations of the per-candidate scores (output-change norm and the
MLMOC flip score), the top-k overlap of the two rankings, and the cosine between the predicted
and the real change vectors; for several network widths, ridge values, kernel variants
(pseudo / trace / full) and MSE vs cross-entropy training.

Run ``python benchmarks/fidelity.py`` for the full setting, ``--small`` for the former quick one
(3 widths, both losses, every kernel; about a minute on 2 CPU cores) or ``--quick`` for a smoke run
(seconds). Every row records the load average before and after it, and its eNTK kernel time
beside its floor (``_common``: the symmetric kernel's GEMM FLOPs on ``[L; S]`` at this run's
float64 GEMM rate). Writes ``benchmarks/results/fidelity_<tag>.json`` and ``fidelity_<tag>.png``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import _common
from _common import RESULTS, load_split, machine_info, make_config, train_network  # noqa: F401
# (RESULTS and machine_info stay importable from here for the scripts that import them so.)


# ----------------------------------------------------------------------------- metrics
def _corr(a, b) -> dict:
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return {"pearson": None, "spearman": None, "note": "constant scores"}
    return {"pearson": float(stats.pearsonr(a, b)[0]),
            "spearman": float(stats.spearmanr(a, b)[0])}


def _top(primary, secondary, k):
    from ntkal.strategies.base import top_k

    return set(top_k(primary, k, np.random.default_rng(0), secondary=secondary).tolist())


def compare(ntk_delta, sgd_delta, ntk_flip, sgd_flip, top_k, ntk_flip_base=None,
            sgd_flip_base=None) -> dict:
    """Fidelity metrics between NTK-predicted and SGD output changes, ``(m, m, k)`` each.

    ``flip`` counts flips against the trained network's outputs f0 (the reference's score);
    ``flip_base`` against the retrained-on-L-alone predictions (f̄ for the NTK, the control copy
    for SGD), which removes the flips both sides share from re-fitting L itself."""
    ntk_norm = ntk_delta.norm(dim=-1).sum(-1).numpy()
    sgd_norm = sgd_delta.norm(dim=-1).sum(-1).numpy()
    a, b = ntk_delta.flatten(1), sgd_delta.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    out = {
        "norm": _corr(ntk_norm, sgd_norm),
        "flip": _corr(ntk_flip, sgd_flip),
        "top_k": top_k,
        "topk_overlap_mlmoc_flip": len(_top(ntk_flip, ntk_norm, top_k)
                                       & _top(sgd_flip, sgd_norm, top_k)) / top_k,
        "topk_overlap_norm": len(_top(ntk_norm, None, top_k) & _top(sgd_norm, None, top_k)) / top_k,
        "median_cosine_change": float(cos.median()),
        "median_scale_ratio_ntk_over_sgd": float(np.median(ntk_norm / np.maximum(sgd_norm, 1e-300))),
        "ntk_norm": ntk_norm.tolist(), "ntk_flip": np.asarray(ntk_flip).tolist(),
    }
    if ntk_flip_base is not None:
        out["flip_base"] = _corr(ntk_flip_base, sgd_flip_base)
        out["topk_overlap_mlmoc_flip_base"] = len(_top(ntk_flip_base, ntk_norm, top_k)
                                                  & _top(sgd_flip_base, sgd_norm, top_k)) / top_k
        out["ntk_flip_base"] = np.asarray(ntk_flip_base).tolist()
    return out


# ----------------------------------------------------------------------------- one network
def sgd_ground_truth(model, xl, yl, xs, num_classes, finetune, progress=False) -> dict:
    """Per-candidate outputs on S after real warm-started fine-tuning with (x_j, ŷ_j) added."""
    from ntkal.strategies.base import QueryContext
    from ntkal.strategies.lookahead import SGDLookahead, flip_fraction
    from ntkal.training import predict_logits

    ctx = QueryContext(model=model, x_candidates=xs, x_labelled=xl, y_labelled=yl,
                       num_classes=num_classes)
    strat = SGDLookahead(finetune=finetune)
    f0 = predict_logits(model, xs).to(torch.float64).cpu()
    pseudo = f0.argmax(1)
    t0 = time.perf_counter()
    control = strat.control_predictions(ctx)
    preds = []
    m = xs.shape[0]
    for j in range(m):
        preds.append(strat.sgd_predictions(ctx, j, int(pseudo[j])))
        if progress and (j + 1) % 10 == 0:
            print(f"    SGD look-ahead {j + 1}/{m}", flush=True)
    seconds = time.perf_counter() - t0
    preds = torch.stack(preds)                                             # (m, m, k)
    fit_new = preds[torch.arange(m), torch.arange(m)]                     # f_sgd^{(j)}(x_j)
    onehot = torch.nn.functional.one_hot(pseudo, num_classes).to(torch.float64)
    return {"f0": f0, "control": control, "preds": preds, "delta": preds - control.unsqueeze(0),
            "flip": flip_fraction(preds, pseudo).numpy(),
            "flip_base": flip_fraction(preds, control.argmax(1)).numpy(),
            "seconds": seconds,
            "new_point_residual_before": float((f0 - onehot).norm(dim=1).mean()),
            "new_point_residual_after": float((fit_new - onehot).norm(dim=1).mean()),
            "control_drift": float((control - f0).norm(dim=1).mean())}


def ntk_lookahead(model, xl, yl, xs, num_classes, kernel, ridge) -> dict:
    from ntkal.lookahead import Lookahead
    from ntkal.strategies.lookahead import flip_fraction

    t0 = time.perf_counter()
    la = Lookahead.fit(model, xl, yl, xs, num_classes=num_classes, kernel=kernel, ridge=ridge,
                       engine="dense", eval_size="all")  # change on all of S, batched
    t1 = time.perf_counter()
    m = xs.shape[0]
    f0 = la.f0_candidates
    pseudo = f0.argmax(1)
    preds = la.retrained_predictions_batch(np.arange(m), pseudo)
    t2 = time.perf_counter()
    return {"delta": (preds - la.base_predictions().unsqueeze(0)).cpu(),
            "flip": flip_fraction(preds, pseudo).cpu().numpy(),
            "flip_base": flip_fraction(preds, la.base_predictions().argmax(1)).cpu().numpy(),
            "kernel_seconds": t1 - t0, "score_seconds": t2 - t1, "jitter": la.jitter,
            "num_clamped": la.num_clamped,
            "base_vs_f0": float((la.base_predictions() - f0).norm(dim=1).mean())}


# ----------------------------------------------------------------------------- driver
def run(args) -> dict:
    from ntkal.training import evaluate

    torch.manual_seed(args.seed)
    xl, yl, xs, _, xt, yt, k, in_shape = load_split(args.dataset, args.n_labelled,
                                                    args.n_candidates, args.n_test, args.seed)
    print(f"{args.dataset}: |L| = {len(xl)}, |S| = {len(xs)}, k = {k}, model {args.model}, "
          f"widths {args.widths}, losses {args.losses}", flush=True)
    rates = _common.measure_rates(args.threads or 1, quick=args.quick)
    runs = []
    for loss in args.losses:
        for width in args.widths:
            t0 = time.perf_counter()
            cfg = make_config(args.train_epochs, args.train_batch, args.train_lr, loss, args.seed,
                              weight_decay=args.weight_decay, schedule="cosine")
            model = train_network(args.model, in_shape, k, width, xl, yl, cfg)
            train_seconds = time.perf_counter() - t0
            acc = float(evaluate(model, xt, yt))
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            ft = make_config(args.finetune_epochs, args.finetune_batch, args.finetune_lr, loss,
                             args.seed)
            before = _common.loadavg()
            sgd = sgd_ground_truth(model, xl, yl, xs, k, ft, progress=args.verbose)
            layers = _common.model_layers(model, xl[0])
            print(f"[{loss} width={width} params={n_params}] trained {train_seconds:.1f}s "
                  f"test acc {acc:.3f}; SGD look-ahead {sgd['seconds']:.1f}s; new-point residual "
                  f"{sgd['new_point_residual_before']:.3f} -> {sgd['new_point_residual_after']:.3f}; "
                  f"control drift {sgd['control_drift']:.3f}", flush=True)
            variants = [(kern, r) for kern in args.kernels for r in args.ridges]
            for kern, ridge in variants:
                ntk = ntk_lookahead(model, xl, yl, xs, k, kern, ridge)
                metrics = compare(ntk["delta"], sgd["delta"], ntk["flip"], sgd["flip"], args.top_k,
                                  ntk["flip_base"], sgd["flip_base"])
                row = {"loss": loss, "width": width, "params": n_params, "kernel": kern,
                       "ridge": ridge, "test_acc": acc, "train_seconds": train_seconds,
                       **{key: ntk[key] for key in ("kernel_seconds", "score_seconds", "jitter",
                                                     "num_clamped", "base_vs_f0")},
                       "sgd_seconds": sgd["seconds"],
                       "sgd_new_point_residual_before": sgd["new_point_residual_before"],
                       "sgd_new_point_residual_after": sgd["new_point_residual_after"],
                       "sgd_control_drift": sgd["control_drift"],
                       "sgd_norm": sgd["delta"].norm(dim=-1).sum(-1).tolist(),
                       "sgd_flip": sgd["flip"].tolist(), "sgd_flip_base": sgd["flip_base"].tolist(),
                       **metrics}
                nk = len(xl) + len(xs)
                flops = (_common.gram_flops(layers, nk, nk, kern, k, symmetric=True)["best"]
                         + _common.featurise_flops(layers, nk, kern, k))
                floor = _common.floor_seconds(flops, _common.gemm_rate(rates, "float64",
                                                                       args.threads))
                row.update(kernel_flops=flops, kernel_floor_seconds=floor,
                           kernel_times_floor=_common.times_floor(ntk["kernel_seconds"], floor),
                           **_common.case_load(before, args.threads))
                before = _common.loadavg()
                runs.append(row)
                print(f"    {kern:6s} ridge={ridge:<6g} norm r={_fmt(metrics['norm']['pearson'])} "
                      f"rho={_fmt(metrics['norm']['spearman'])} | flip r={_fmt(metrics['flip']['pearson'])} "
                      f"rho={_fmt(metrics['flip']['spearman'])} | flip-vs-base "
                      f"rho={_fmt(metrics['flip_base']['spearman'])} | top{args.top_k} overlap "
                      f"mlmoc={metrics['topk_overlap_mlmoc_flip']:.2f} "
                      f"(vs-base {metrics['topk_overlap_mlmoc_flip_base']:.2f}) "
                      f"norm={metrics['topk_overlap_norm']:.2f} | cos={metrics['median_cosine_change']:.2f} "
                      f"scale={metrics['median_scale_ratio_ntk_over_sgd']:.2f} | "
                      f"kernel {ntk['kernel_seconds']:.2f}s "
                      f"({_common.fmt(row['kernel_times_floor'], '.1f')}× floor) | load "
                      f"{_common.load_mark(row)}", flush=True)
    return {"benchmark": "fidelity", "args": vars(args), "machine": machine_info(),
            "rates": rates, "runs": runs}


def _fmt(v) -> str:
    return "  n/a" if v is None else f"{v:+.2f}"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["runs"] if r["kernel"] == result["args"]["kernels"][0]
            and r["ridge"] == result["args"]["ridges"][0]]
    fig, axes = plt.subplots(2, len(rows), figsize=(3.2 * len(rows), 6.2), squeeze=False)
    for c, r in enumerate(rows):
        for row, (name, xs, ys) in enumerate([("norm", r["ntk_norm"], r["sgd_norm"]),
                                              ("flip", r["ntk_flip"], r["sgd_flip"])]):
            ax = axes[row, c]
            ax.scatter(xs, ys, s=10, alpha=0.7)
            corr = r[name]
            ax.set_title(f"{r['loss']} w={r['width']} {name}\nr={_fmt(corr['pearson'])} "
                         f"rho={_fmt(corr['spearman'])}", fontsize=8)
            ax.set_xlabel(f"eNTK ({r['kernel']}) {name}", fontsize=7)
            ax.set_ylabel(f"SGD fine-tune {name}", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle("Look-ahead output change on S: eNTK closed form vs real SGD", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(ap, "smoke run: one width, MSE, pseudo, 20 + 10 points (seconds)")
    ap.add_argument("--small", action="store_true",
                    help="small CPU-sized setting (3 widths, both losses, every kernel; ~1 min)")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--widths", type=int, nargs="+")
    ap.add_argument("--losses", nargs="+", choices=["mse", "ce"])
    ap.add_argument("--kernels", nargs="+")
    ap.add_argument("--ridges", type=float, nargs="+")
    ap.add_argument("--n-labelled", type=int)
    ap.add_argument("--n-candidates", type=int)
    ap.add_argument("--n-test", type=int, default=None, help="default 300")
    ap.add_argument("--train-epochs", type=int)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-lr", type=float, default=None, help="default: the loss's default")
    ap.add_argument("--weight-decay", type=float, default=5e-4, help="initial training only")
    ap.add_argument("--finetune-epochs", type=int)
    ap.add_argument("--finetune-batch", type=int, default=32)
    ap.add_argument("--finetune-lr", type=float, default=None,
                    help="default: the loss's default rate (no weight decay, constant schedule)")
    ap.add_argument("--top-k", type=int, default=None, help="default 10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: small networks on a shared CPU run fastest so)")
    ap.add_argument("--tag", default=None, help="results file tag (default quick/full)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    quick = {"widths": [32], "losses": ["mse"], "kernels": ["pseudo"], "ridges": [0.0],
             "n_labelled": 20, "n_candidates": 10, "n_test": 50, "train_epochs": 3,
             "finetune_epochs": 1, "top_k": 5}
    small = {"widths": [32, 128, 512], "losses": ["mse", "ce"], "kernels": ["pseudo", "trace", "full"],
             "ridges": [0.0, 1e-3, 1e-1], "n_labelled": 60, "n_candidates": 50,
             "train_epochs": 60, "finetune_epochs": 20}
    full = {"widths": [32, 128, 512, 2048], "losses": ["mse", "ce"],
            "kernels": ["pseudo", "trace", "full"], "ridges": [0.0, 1e-3, 1e-1],
            "n_labelled": 150, "n_candidates": 100, "train_epochs": 100, "finetune_epochs": 30}
    for preset in (small, full):
        preset.update(n_test=300, top_k=10)
    for key, val in (quick if args.quick else small if args.small else full).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    if args.tag is None:
        args.tag = "smoke" if args.quick else "quick" if args.small else "full"
    if args.n_candidates < args.top_k:
        ap.error("--n-candidates must be >= --top-k")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    _common.one_at_a_time(args.quick)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run(args)
    result["total_seconds"] = time.perf_counter() - t0
    folder = _common.results_dir(args)
    json_path = _common.write_result(folder / f"fidelity_{args.tag}.json", result, result["runs"],
                                     quick=args.quick)
    png_path = json_path.with_suffix(".png")
    plot(result, png_path)
    print(f"total {result['total_seconds']:.1f}s; wrote {png_path}")
    return result


if __name__ == "__main__":
    main()
