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

Fits the growth exponent of time in ``m`` per model and engine; prints a table and writes
``benchmarks/results/pool_scale_<tag>.json`` with machine information. The machine may be shared
(load averages are recorded before each case). Run::

    python benchmarks/pool_scale.py                       # MLP and CNN, m in 2k..60k
    python benchmarks/pool_scale.py --models mlp --sizes 2000 5000 --tag quick
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import RESULTS, machine_info, make_config  # noqa: E402

SIZES = (2000, 5000, 10_000, 20_000, 60_000)


def load_data(seed: int, n_labelled: int):
    from ntkal.data import load_dataset

    ds = load_dataset("fashion_mnist", seed=seed)
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(ds.x_train.shape[0]))
    test = torch.as_tensor(np.random.default_rng(seed + 1).permutation(ds.x_test.shape[0]))
    li = test[:n_labelled]
    return ds.x_test[li], ds.y_test[li], ds.x_train[perm], ds.num_classes, tuple(ds.in_shape)


def train_models(args, path: Path) -> dict:
    from ntkal.models import build_model
    from ntkal.training import train

    xl, yl, _, k, in_shape = load_data(args.seed, args.n_labelled)
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


def run_case(args, model_name: str, m: int, engine: str, mode: str, weights: Path) -> dict:
    """Child process: one query (or sequential steps); prints one JSON line."""
    from ntkal.models import build_model
    from ntkal.strategies.base import QueryContext
    from ntkal.strategies.lookahead import MLMOC

    torch.set_num_threads(args.threads)
    xl, yl, pool, k, in_shape = load_data(args.seed, args.n_labelled)
    xs = pool[:m].clone()
    del pool
    model = build_model(model_name, in_shape, k)
    model.load_state_dict(torch.load(weights / f"{model_name}.pt"))
    model.eval()
    ctx = QueryContext(model=model, x_candidates=xs, x_labelled=xl, y_labelled=yl,
                       num_classes=k, seed=args.seed)
    strat = MLMOC(kernel="pseudo", score="flip", eval_size=args.eval_size, engine=engine,
                  max_memory=int(args.max_memory))
    row: dict = {"model": model_name, "m": m, "engine": engine, "mode": mode}
    t0 = time.perf_counter()
    if mode == "batch":
        res = strat.query(ctx, args.budget)
        row.update(seconds=time.perf_counter() - t0, kernel_seconds=res.info["kernel_seconds"],
                   score_seconds=res.info["score_seconds"],
                   chosen=res.indices[:10].tolist(),
                   score_max=float(np.max(res.scores)), score_mean=float(np.mean(res.scores)))
    else:
        session = strat.begin_sequential(ctx)
        setup = time.perf_counter() - t0
        la = session.lookahead
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


def spawn(args, model_name, m, engine, mode, weights) -> dict:
    cmd = [sys.executable, __file__, "--case", model_name, str(m), engine, mode,
           "--weights", str(weights), "--seed", str(args.seed), "--threads", str(args.threads),
           "--eval-size", str(args.eval_size), "--max-memory", str(int(args.max_memory)),
           "--n-labelled", str(args.n_labelled), "--budget", str(args.budget),
           "--seq-steps", str(args.seq_steps)]
    load = list(os.getloadavg())
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"model": model_name, "m": m, "engine": engine, "mode": mode,
                "failed": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}",
                "loadavg_before": load, "wall_seconds": wall}
    row = json.loads(lines[-1])
    row.update(loadavg_before=load, wall_seconds=wall)
    return row


def growth_exponent(rows, model, engine) -> float | None:
    pts = [(r["m"], r["seconds"]) for r in rows if r.get("model") == model
           and r.get("engine") == engine and r.get("mode") == "batch" and "seconds" in r]
    if len(pts) < 2:
        return None
    ms, ts = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(ms, ts, 1)[0])


def table(rows) -> str:
    lines = ["| model | m | engine | time (s) | kernel+setup (s) | scoring (s) | peak RSS (GiB) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("mode") != "batch":
            continue
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['m']} | {r['engine']} | failed | | | |")
            continue
        lines.append(f"| {r['model']} | {r['m']} | {r['engine']} | {r['seconds']:.1f} | "
                     f"{r['kernel_seconds']:.1f} | {r['score_seconds']:.1f} | "
                     f"{r['peak_rss_bytes'] / 2**30:.2f} |")
    for r in rows:
        if r.get("mode") == "sequential" and "failed" not in r:
            lines.append(f"\nsequential ({r['model']}, m = {r['m']}, {r['engine']}): setup "
                         f"{r['setup_seconds']:.1f}s, then {r['step_seconds_mean']:.2f}s per step "
                         f"(propose + observe, mean of {len(r['step_seconds'])}), peak RSS "
                         f"{r['peak_rss_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    ap.add_argument("--sizes", nargs="*", type=int, default=list(SIZES))
    ap.add_argument("--dense-max", type=int, default=10_000,
                    help="largest m also run with the dense engine")
    ap.add_argument("--seq-m", type=int, default=10_000, help="pool size of the sequential case")
    ap.add_argument("--seq-steps", type=int, default=3)
    ap.add_argument("--seq-models", nargs="*", default=["mlp"])
    ap.add_argument("--eval-size", default="5000")
    ap.add_argument("--n-labelled", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--max-memory", type=float, default=3 * 2**30,
                    help="look-ahead engine memory budget in bytes (default 3 GiB)")
    ap.add_argument("--train-epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-timeout", type=float, default=3600)
    ap.add_argument("--tag", default="full")
    ap.add_argument("--case", nargs=4, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--merge", nargs="+", default=None,
                    help="only rebuild the JSON and table from the printed rows of these logs")
    args = ap.parse_args(argv)
    args.eval_size = args.eval_size if args.eval_size == "all" else int(args.eval_size)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.case is not None:
        model_name, m, engine, mode = args.case
        print(json.dumps(run_case(args, model_name, int(m), engine, mode, Path(args.weights))))
        return {}
    if args.merge:
        return merge(args)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        trained = train_models(args, weights)
        print(f"trained on |L| = {args.n_labelled}: {trained}", flush=True)
        for name in args.models:
            for m in args.sizes:
                engines = ["streaming"] + (["dense"] if m <= args.dense_max else [])
                for engine in engines:
                    row = spawn(args, name, m, engine, "batch", weights)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    write(args, rows, trained)
        for name in args.seq_models:
            row = spawn(args, name, args.seq_m, "streaming", "sequential", weights)
            rows.append(row)
            print(json.dumps(row), flush=True)
        write(args, rows, trained)
    return write(args, rows, trained, final=True)


def write(args, rows, trained, final: bool = False) -> dict:
    """The result JSON (rewritten after every case, so an interrupted run keeps what it did)."""
    models = sorted({r["model"] for r in rows})
    exponents = {f"{name}/{engine}": growth_exponent(rows, name, engine)
                 for name in models for engine in ("streaming", "dense")}
    agree = []
    for r in rows:
        twin = [d for d in rows if d.get("engine") == "dense" and d.get("model") == r.get("model")
                and d.get("m") == r.get("m") and d.get("mode") == "batch" and "score_max" in d]
        if r.get("engine") == "streaming" and twin and "score_max" in r:
            d = twin[0]
            agree.append({"model": r["model"], "m": r["m"],
                          "same_top10": r["chosen"] == d["chosen"] if "chosen" in r and
                          "chosen" in d else None,
                          "score_max_diff": abs(r["score_max"] - d["score_max"]),
                          "score_mean_diff": abs(r["score_mean"] - d["score_mean"])})
    text = table(rows)
    if final:
        print(text)
        print("growth exponents (time ~ m^a):", exponents)
    result = {"benchmark": "pool_scale", "args": {k: v for k, v in vars(args).items()
                                                  if k not in ("case", "weights")},
              "machine": machine_info(), "trained": trained, "rows": rows,
              "growth_exponents": exponents, "streaming_vs_dense": agree, "table": text,
              "complete": final,
              "note": "L = 1000 test-split images, pool = the Fashion-MNIST training split; "
                      "pseudo-NTK, flip score, E = eval_size seeded candidates; each case in its "
                      "own process; the machine may have been shared (loadavg_before per row)."}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"pool_scale_{args.tag}.json"
    path.write_text(json.dumps(result, indent=1))
    if final:
        print(f"wrote {path}")
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
