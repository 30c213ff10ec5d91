"""Whole-pool MLMOC on Fashion-MNIST: time and peak memory against the pool size, streaming vs dense.

Mohamadi, Bae & Sutherland (NeurIPS 2022) score look-ahead in closed form with the eNTK; this
measures how that scales to real pools. Pool: the 60 000 Fashion-MNIST training images (the first
``m`` of a seeded permutation); labelled set: 1 000 images of the test split, so that the whole
training split can be the pool. The network (MLP 784-512-512-10 or the small CNN) is trained
briefly on L once, and each case runs in its own subprocess (clean peak RSS, ``ru_maxrss``):

* a batch MLMOC query (pseudo-NTK, flip score, E = 5 000 seeded candidates) for every ``m``,
  with the streaming engine, and with the dense engine (the full ``(n + m)²`` kernel, same E)
  where it fits (``m <= --dense-max``);
* sequential MLMOC steps (propose + observe) at ``--seq-m``, streaming, Σ[E, C] cached.

Every case states its arithmetic and is printed with ``× floor`` against this machine's GEMM rate,
measured in the same run (``_common``): the batch query must do the GEMMs Θ(E, C), V_Eᵀ V_C and
Θ(L, C) (plus the smaller Θ(L, L), Cholesky, triangular solve and featurisation), counted from the
model's layer shapes (``_common.mlmoc_query_flops``; about 2.7 TFLOP for the MLP at m = 60 000,
|L| = 1 000, E = 5 000); a sequential step must do one rank-one update of Σ[E, C] and one rescoring
pass over it, a memory-bound floor at the measured stream bandwidth
(``_common.sequential_step_work``). The load average is recorded before and after every case;
a run with loaded cases is written as ``pool_scale_<tag>_loaded.json``, not as the README's file.

Fits the growth exponent of time in ``m`` per model and engine; prints a table and writes
``benchmarks/results/pool_scale_<tag>.json`` with machine information. Run::

    python benchmarks/pool_scale.py                       # MLP and CNN, m in 2k..60k
    python benchmarks/pool_scale.py --models mlp --sizes 2000 5000 --tag small
    python benchmarks/pool_scale.py --quick               # digits, m = 300, in this process
    python benchmarks/pool_scale.py --models mlp --sizes 60000 --score-precision both

``--score-precision fp32`` runs the streaming batch cases with ``score_precision="fp32"``
(Θ(E, C) and V_Eᵀ V_C in float32, picks certified equal to float64; their floor counts those two
GEMMs at the float32 rate measured in the run and the rest, with the float64 recomputation of
the candidates that could be picked, at the float64 rate); ``both`` runs float64 and fp32 side by
side and writes whether the picks and picked scores agree (``fp32_vs_float64`` in the JSON).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common
from _common import make_config

SIZES = (2000, 5000, 10_000, 20_000, 60_000)
QUICK = {"dataset": "digits", "models": ["mlp"], "sizes": [300], "dense_max": 300, "seq_m": 300,
         "seq_steps": 2, "seq_models": ["mlp"], "eval_size": "100", "n_labelled": 40,
         "budget": 5, "train_epochs": 1}


def load_data(seed: int, n_labelled: int, dataset: str = "fashion_mnist"):
    from ntkal.data import load_dataset

    ds = load_dataset(dataset, seed=seed)
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(ds.x_train.shape[0]))
    test = torch.as_tensor(np.random.default_rng(seed + 1).permutation(ds.x_test.shape[0]))
    li = test[:n_labelled]
    return ds.x_test[li], ds.y_test[li], ds.x_train[perm], ds.num_classes, tuple(ds.in_shape)


def train_models(args, path: Path) -> dict:
    from ntkal.models import build_model
    from ntkal.training import train

    xl, yl, _, k, in_shape = load_data(args.seed, args.n_labelled, args.dataset)
    info = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        model = build_model(name, in_shape, k)
        t0 = time.perf_counter()
        train(model, xl, yl, make_config(args.train_epochs, 64, None, "mse", args.seed),
              num_classes=k)
        info[name] = {"train_seconds": time.perf_counter() - t0,
                      "params": sum(p.numel() for p in model.parameters())}
        torch.save(model.state_dict(), path / f"{name}.pt")
    return info


def run_case(args, model_name: str, m: int, engine: str, mode: str, weights: Path,
             precision: str = "float64") -> dict:
    """Child process: one query (or sequential steps) with ``score_precision=precision``;
    prints one JSON line."""
    from ntkal.models import build_model
    from ntkal.strategies.base import QueryContext
    from ntkal.strategies.lookahead import MLMOC

    torch.set_num_threads(args.threads)
    xl, yl, pool, k, in_shape = load_data(args.seed, args.n_labelled, args.dataset)
    xs = pool[:m].clone()
    del pool
    model = build_model(model_name, in_shape, k)
    model.load_state_dict(torch.load(weights / f"{model_name}.pt"))
    model.eval()
    ctx = QueryContext(model=model, x_candidates=xs, x_labelled=xl, y_labelled=yl,
                       num_classes=k, seed=args.seed)
    strat = MLMOC(kernel="pseudo", score="flip", eval_size=args.eval_size, engine=engine,
                  max_memory=int(args.max_memory), score_precision=precision)
    row: dict = {"model": model_name, "m": m, "engine": engine, "mode": mode,
                 "score_precision": precision}
    t0 = time.perf_counter()
    if mode == "batch":
        res = strat.query(ctx, args.budget)
        row.update(seconds=time.perf_counter() - t0, kernel_seconds=res.info["kernel_seconds"],
                   score_seconds=res.info["score_seconds"],
                   chosen=res.indices[:10].tolist(), picks=res.indices.tolist(),
                   picked_scores=res.scores[res.indices].tolist(),
                   score_precision_used=res.info.get("score_precision"),
                   fp32=res.info.get("fp32"),
                   score_max=float(np.max(res.scores)), score_mean=float(np.mean(res.scores)))
    else:
        session = strat.begin_sequential(ctx)
        setup = time.perf_counter() - t0
        steps = []
        rng = np.random.default_rng(args.seed)
        for _ in range(args.seq_steps):
            t = time.perf_counter()
            pos, _ = session.propose()
            session.observe(pos, int(rng.integers(k)))
            steps.append(time.perf_counter() - t)
        row.update(setup_seconds=setup, step_seconds=steps,
                   step_seconds_mean=float(np.mean(steps)),
                   covariance_cached=bool(getattr(session, "covariance_cached", True)),
                   observed=session.observed)
        row["seconds"] = time.perf_counter() - t0
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def spawn(args, model_name, m, engine, mode, weights, precision="float64") -> dict:
    """One case in its own process (clean peak RSS), or in this one with ``--quick``; with its
    load before and after."""
    load = _common.loadavg()
    t0 = time.perf_counter()
    if args.quick:
        row = run_case(args, model_name, m, engine, mode, weights, precision)
        row["peak_rss_bytes"] = None  # this process's high-water mark is not the case's
        row.update(_common.case_load(load, args.threads), wall_seconds=time.perf_counter() - t0)
        return row
    cmd = [sys.executable, __file__, "--case", model_name, str(m), engine, mode,
           "--weights", str(weights), "--seed", str(args.seed), "--threads", str(args.threads),
           "--eval-size", str(args.eval_size), "--max-memory", str(int(args.max_memory)),
           "--n-labelled", str(args.n_labelled), "--budget", str(args.budget),
           "--seq-steps", str(args.seq_steps), "--dataset", args.dataset,
           "--case-precision", precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"model": model_name, "m": m, "engine": engine, "mode": mode,
                "score_precision": precision, "failed": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}",
                "wall_seconds": wall, **_common.case_load(load, args.threads)}
    row = json.loads(lines[-1])
    row.update(wall_seconds=wall, **_common.case_load(load, args.threads))
    return row


def case_floor(args, layers: list, k: int, row: dict, rates: dict) -> dict:
    """The row's arithmetic and floor: the whole-pool query's GEMM FLOPs at the float64 GEMM
    rate (batch; the set-up of a sequential run), and for a sequential step the roofline of one
    rank-one update plus one rescoring pass (bytes at the stream bandwidth, FLOPs at GEMM rate)."""
    m = row["m"]
    e = m if args.eval_size == "all" else min(int(args.eval_size), m)
    rate = _common.gemm_rate(rates, "float64", args.threads)
    query = _common.mlmoc_query_flops(layers, args.n_labelled, e, m, k)
    floor = _common.floor_seconds(query["total"], rate)
    out = {"eval_points": e, "query_flops": query, "query_floor_seconds": floor,
           "floor_gflops": rate}
    if row.get("score_precision_used") == "fp32":
        # Θ(E, C) and V_Eᵀ V_C at the float32 rate, the rest (and the float64 recomputation of
        # the candidates that could be picked) at the float64 rate
        rate32 = _common.gemm_rate(rates, "float32", args.threads)
        part32 = query["theta_EC"] + query["VtV_EC"]
        redo = (row.get("fp32") or {}).get("recomputed_float64", 0)
        per = _common.gram_flops(layers, 1, 1, "pseudo", k)["best"]
        part64 = query["total"] - part32 + redo * e * (per + 2.0 * args.n_labelled)
        out.update(query_floor_seconds=_common.floor_seconds(part32, rate32)
                   + _common.floor_seconds(part64, rate), floor_gflops_fp32=rate32,
                   fp32_flops=part32, float64_flops=part64)
    if row.get("mode") == "batch":
        out["times_floor"] = _common.times_floor(row.get("seconds"), out["query_floor_seconds"])
    else:
        per_pair = _common.gram_flops(layers, 1, 1, "pseudo", k)["best"]
        step = _common.sequential_step_work(args.n_labelled, e, m, k, per_pair)
        floor = _common.floor_seconds(step["flops"], rate, step["bytes"],
                                      _common.bandwidth(rates, args.threads))
        out.update(step_work=step, step_floor_seconds=floor,
                   setup_times_floor=_common.times_floor(row.get("setup_seconds"),
                                                         out["query_floor_seconds"]),
                   step_times_floor=_common.times_floor(row.get("step_seconds_mean"), floor))
    return out


def growth_exponent(rows, model, engine) -> float | None:
    pts = [(r["m"], r["seconds"]) for r in rows if r.get("model") == model
           and r.get("engine") == engine and r.get("mode") == "batch" and "seconds" in r
           and r.get("score_precision", "float64") == "float64"]
    if len(pts) < 2:
        return None
    ms, ts = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(ms, ts, 1)[0])


def _gib(v) -> str:
    return "-" if v is None else f"{v / 2**30:.2f}"


def table(rows) -> str:
    body = []
    for r in rows:
        if r.get("mode") != "batch":
            continue
        tf = r.get("query_flops", {}).get("total")
        if "failed" in r:
            body.append([r["model"], r["m"], r["engine"], "failed", "", "", "", "", "",
                         _common.load_mark(r)])
            continue
        engine = r["engine"] + (" fp32" if r.get("score_precision_used") == "fp32" else "")
        body.append([r["model"], r["m"], engine, f"{r['seconds']:.1f}",
                     _common.fmt(tf and tf / 1e12, ".3f"),
                     _common.fmt(r.get("query_floor_seconds"), ".3g"),
                     _common.fmt(r.get("times_floor"), ".2f"), f"{r['kernel_seconds']:.1f}",
                     f"{r['score_seconds']:.1f}", _gib(r.get("peak_rss_bytes")),
                     _common.load_mark(r)])
    lines = [_common.markdown_table(
        ["model", "m", "engine", "time (s)", "TFLOP", "floor (s)", "× floor", "kernel+setup (s)",
         "scoring (s)", "peak RSS (GiB)", "load 1-min before/after"], body, align="lrlrrrrrrrl")]
    for r in rows:
        if r.get("mode") == "sequential" and "failed" not in r:
            lines.append(f"\nsequential ({r['model']}, m = {r['m']}, E = {r.get('eval_points')}, "
                         f"{r['engine']}): setup {r['setup_seconds']:.1f}s "
                         f"({_common.fmt(r.get('setup_times_floor'), '.2f')}× the query floor), "
                         f"then {r['step_seconds_mean']:.3f}s per step (propose + observe, mean of "
                         f"{len(r['step_seconds'])}; floor {r['step_floor_seconds']:.3g}s = one "
                         f"rank-one update of Σ[E, C] + one rescoring pass, "
                         f"{_common.fmt(r.get('step_times_floor'), '.1f')}× floor), peak RSS "
                         f"{_gib(r.get('peak_rss_bytes'))} GiB, load {_common.load_mark(r)}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(ap, "digits, m = 300, E = 100, cases in this process (seconds)")
    ap.add_argument("--dataset", default=None, help="default fashion_mnist (--quick: digits)")
    ap.add_argument("--models", nargs="+", default=None, help="default mlp cnn")
    ap.add_argument("--sizes", nargs="*", type=int, default=None,
                    help=f"pool sizes m (default {' '.join(map(str, SIZES))})")
    ap.add_argument("--dense-max", type=int, default=None,
                    help="largest m also run with the dense engine (default 10000)")
    ap.add_argument("--seq-m", type=int, default=None,
                    help="pool size of the sequential case (default 10000)")
    ap.add_argument("--seq-steps", type=int, default=None, help="default 3")
    ap.add_argument("--seq-models", nargs="*", default=None, help="default mlp")
    ap.add_argument("--eval-size", default=None, help="E (default 5000) or all")
    ap.add_argument("--n-labelled", type=int, default=None, help="default 1000")
    ap.add_argument("--budget", type=int, default=None, help="default 100")
    ap.add_argument("--max-memory", type=float, default=3 * 2**30,
                    help="look-ahead engine memory budget in bytes (default 3 GiB)")
    ap.add_argument("--train-epochs", type=int, default=None, help="default 15")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-timeout", type=float, default=3600)
    ap.add_argument("--tag", default=None, help="results file tag (default full / quick)")
    ap.add_argument("--score-precision", choices=("float64", "fp32", "both"), default="float64",
                    help="score_precision of the streaming batch cases; both: each case twice, "
                         "picks compared (default float64)")
    ap.add_argument("--case", nargs=4, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--case-precision", default="float64", help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--merge", nargs="+", default=None,
                    help="only rebuild the JSON and table from the printed rows of these logs")
    args = ap.parse_args(argv)
    full = {"dataset": "fashion_mnist", "models": ["mlp", "cnn"], "sizes": list(SIZES),
            "dense_max": 10_000, "seq_m": 10_000, "seq_steps": 3, "seq_models": ["mlp"],
            "eval_size": "5000", "n_labelled": 1000, "budget": 100, "train_epochs": 15}
    for key, val in (QUICK if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    if args.tag is None:
        args.tag = "quick" if args.quick else "full"
    args.eval_size = args.eval_size if args.eval_size == "all" else int(args.eval_size)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.case is not None:
        model_name, m, engine, mode = args.case
        print(json.dumps(run_case(args, model_name, int(m), engine, mode, Path(args.weights),
                                  args.case_precision)))
        return {}
    if args.merge:
        return merge(args)
    _common.one_at_a_time(args.quick)
    torch.set_num_threads(args.threads)
    rates = _common.measure_rates(args.threads, quick=args.quick)
    print("GEMM GFLOP/s (best size):", {d: {t: round(v["best"], 1) for t, v in per.items()}
                                        for d, per in rates["gemm_gflops"].items()},
          "stream GB/s:", {t: round(v, 1) for t, v in rates["stream_gbps"].items()}, flush=True)
    precisions = (["float64", "fp32"] if args.score_precision == "both"
                  else [args.score_precision])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        trained = train_models(args, weights)
        print(f"trained on |L| = {args.n_labelled}: {trained}", flush=True)
        shapes = model_shapes(args)

        def case(name, m, engine, mode, precision="float64"):
            row = spawn(args, name, m, engine, mode, weights, precision)
            layers, k = shapes[name]
            row.update(case_floor(args, layers, k, row, rates))
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(args, rows, trained, rates)

        for name in args.models:
            for m in args.sizes:
                for precision in precisions:
                    case(name, m, "streaming", "batch", precision)
                if m <= args.dense_max:
                    case(name, m, "dense", "batch")
        for name in args.seq_models:
            case(name, args.seq_m, "streaming", "sequential")
    return write(args, rows, trained, rates, final=True)


def model_shapes(args) -> dict:
    """Per model, its parameterised layers (``_common.model_layers``) and class count."""
    from ntkal.models import build_model

    xl, _, _, k, in_shape = load_data(args.seed, args.n_labelled, args.dataset)
    out = {}
    for name in sorted(set(args.models) | set(args.seq_models)):
        torch.manual_seed(args.seed)
        out[name] = (_common.model_layers(build_model(name, in_shape, k), xl[0]), k)
    return out


def write(args, rows, trained, rates=None, final: bool = False) -> dict:
    """The result JSON (rewritten after every case, so an interrupted run keeps what it did)."""
    models = sorted({r["model"] for r in rows})
    exponents = {f"{name}/{engine}": growth_exponent(rows, name, engine)
                 for name in models for engine in ("streaming", "dense")}
    agree = []
    for r in rows:
        twin = [d for d in rows if d.get("engine") == "dense" and d.get("model") == r.get("model")
                and d.get("m") == r.get("m") and d.get("mode") == "batch" and "score_max" in d]
        if (r.get("engine") == "streaming" and twin and "score_max" in r
                and r.get("score_precision", "float64") == "float64"):
            d = twin[0]
            agree.append({"model": r["model"], "m": r["m"],
                          "same_top10": r["chosen"] == d["chosen"] if "chosen" in r and
                          "chosen" in d else None,
                          "score_max_diff": abs(r["score_max"] - d["score_max"]),
                          "score_mean_diff": abs(r["score_mean"] - d["score_mean"])})
    fp32_check = []
    for r in rows:
        if r.get("score_precision") != "fp32" or "picks" not in r:
            continue
        ref = [d for d in rows if d.get("score_precision") == "float64" and "picks" in d
               and d.get("engine") == "streaming" and d.get("model") == r.get("model")
               and d.get("m") == r.get("m")]
        if ref:
            d = ref[0]
            fp32_check.append({"model": r["model"], "m": r["m"],
                               "same_picks": r["picks"] == d["picks"],
                               "same_picked_scores": r["picked_scores"] == d["picked_scores"],
                               "picked_scores_max_rel_diff": max(
                                   (abs(a - b) / max(abs(b), 1e-300)
                                    for a, b in zip(r["picked_scores"], d["picked_scores"])),
                                   default=0.0),
                               "seconds_float64": d.get("seconds"),
                               "seconds_fp32": r.get("seconds"), "fp32": r.get("fp32")})
    text = table(rows)
    if final:
        print(text)
        print("growth exponents (time ~ m^a):", exponents)
        if fp32_check:
            print("fp32 vs float64:", [{k: c[k] for k in ("model", "m", "same_picks",
                                         "picked_scores_max_rel_diff")} for c in fp32_check])
    result = {"benchmark": "pool_scale", "args": {k: v for k, v in vars(args).items()
                                                  if k not in ("case", "weights")},
              "machine": _common.machine_info(), "rates": rates, "trained": trained,
              "rows": rows, "growth_exponents": exponents, "streaming_vs_dense": agree,
              "fp32_vs_float64": fp32_check,
              "table": text, "complete": final,
              "note": f"L = {args.n_labelled} test-split images, pool = the {args.dataset} "
                      "training split; pseudo-NTK, flip score, E = eval_size seeded candidates; "
                      "each case in its own process (--quick: in this one); load average before "
                      "and after every case; floors at the GEMM rate and stream bandwidth "
                      "measured in this run."}
    path = _common.results_dir(args) / f"pool_scale_{args.tag}.json"
    if not final:  # progress file: overwritten after every case, so an interrupted run keeps it
        partial = path.with_name(path.stem + "_partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(result, indent=1, default=str))
        return result
    _common.write_result(path, result, rows, quick=args.quick)
    partial = path.with_name(path.stem + "_partial.json")
    if partial.exists():
        partial.unlink()
    return result


def merge(args) -> dict:
    """Rebuild one result from the JSON lines of earlier runs' logs (``--merge LOG ...``)."""
    rows = []
    for log in args.merge:
        for line in Path(log).read_text().splitlines():
            if line.startswith("{") and '"mode"' in line:
                rows.append(json.loads(line))
    return write(args, rows, {"note": "merged from " + ", ".join(args.merge)}, final=True)


if __name__ == "__main__":
    main()
