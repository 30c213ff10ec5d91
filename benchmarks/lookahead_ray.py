"""Whole-pool MLMOC on Ray CPU actors: the single-process streaming engine vs 1 and 2 workers.

The candidate blocks of a batch MLMOC query (pseudo-NTK, flip score, top-k) are scored on
``RayBlockExecutor`` actors of one thread each (``ntkal.lookahead.sharded``: every worker builds the
linearised network on L and E once, then scores its parts of the pool), against the same query in
this process (``engine="streaming"``, one thread). Setup as ``pool_scale.py``: Fashion-MNIST, the
first ``m`` of a seeded permutation of the training split as the pool, 1 000 test images as L, the
MLP trained briefly on L. Every case checks that its picks equal the single-process picks.

Arithmetic (FLOPs, counted from the model's layer shapes; ``per`` = FLOPs of one pseudo-NTK pair):
the candidate part, split over N workers, is Θ(E, C) and V_Eᵀ V_C (``(per + 2n) e m``), Θ(L, C)
(``per n m``), the triangular solve for V_C (``n² m``) and the featurisation of C; each worker also
pays a setup (featurise L and E, Θ(L, L), its Cholesky factor, Θ(L, E) and V_E). The floor of a case
is ``(candidate part / N + setup) / rate``, ``rate`` the one-thread float64 GEMM rate measured in the
same run; ``× floor`` = time / floor. The load average is recorded before and after every case.

Run::

    python benchmarks/lookahead_ray.py                        # m = 10 000 and 60 000
    python benchmarks/lookahead_ray.py --sizes 20000 --modes single ray2 --tag m20k
    python benchmarks/lookahead_ray.py --quick                # digits, m = 300, no Ray

Writes ``benchmarks/results/lookahead_ray_<tag>.json``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common
import pool_scale

MODES = ("single", "serial", "ray1", "ray2")
QUICK = {"dataset": "digits", "sizes": [300], "eval_size": 100, "n_labelled": 40, "budget": 5,
         "train_epochs": 1, "modes": ["single", "serial"]}
FULL = {"dataset": "fashion_mnist", "sizes": [10_000, 60_000], "eval_size": 5000,
        "n_labelled": 1000, "budget": 100, "train_epochs": 15, "modes": ["single", "ray1", "ray2"]}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(ap, "digits, m = 300, E = 100, single and serial only (seconds)")
    ap.add_argument("--dataset", default=None, help="default fashion_mnist (--quick: digits)")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--sizes", nargs="*", type=int, default=None, help="pool sizes m")
    ap.add_argument("--modes", nargs="*", default=None, choices=MODES,
                    help="single: this process; serial: SerialBlockExecutor; rayN: N Ray actors")
    ap.add_argument("--eval-size", type=int, default=None, help="E (default 5000)")
    ap.add_argument("--n-labelled", type=int, default=None, help="default 1000")
    ap.add_argument("--budget", type=int, default=None, help="default 100")
    ap.add_argument("--train-epochs", type=int, default=None, help="default 15")
    ap.add_argument("--max-memory", type=float, default=3 * 2**30,
                    help="look-ahead memory budget per process in bytes (default 3 GiB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default=None, help="results file tag (default full / quick)")
    args = ap.parse_args(argv)
    for key, val in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    args.models = [args.model]
    args.threads = 1
    args.tag = args.tag or ("quick" if args.quick else "full")
    return args


def work(layers: list, k: int, n: int, e: int, m: int) -> dict:
    """FLOPs of the sharded query: the part split over workers, and each worker's setup."""
    per = _common.gram_flops(layers, 1, 1, "pseudo", k)["best"]
    cand = {"theta_EC": per * e * m, "VtV_EC": 2.0 * n * e * m, "theta_LC": per * n * m,
            "solve_V_C": float(n) * n * m,
            "featurise_C": _common.featurise_flops(layers, m, "pseudo", k)}
    setup = {"featurise_LE": _common.featurise_flops(layers, n + e, "pseudo", k),
             "theta_LL": per * n * (n + 1) / 2, "cholesky": n ** 3 / 3.0,
             "theta_LE": per * n * e, "solve_V_E": float(n) * n * e}
    return {"candidates": cand, "candidates_total": sum(cand.values()),
            "setup_per_worker": setup, "setup_total": sum(setup.values())}


def shipped_bytes(model, x_labelled, x_eval) -> int:
    """What travels to each worker once per map: the weights, L's and E's inputs."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(params + x_labelled.numel() * x_labelled.element_size()
               + x_eval.numel() * x_eval.element_size())


def run(args, model, xl, yl, xs, k, mode, executor, reference) -> dict:
    from ntkal.lookahead import eval_positions_for
    from ntkal.strategies.base import QueryContext
    from ntkal.strategies.lookahead import MLMOC

    ctx = QueryContext(model=model, x_candidates=xs, x_labelled=xl, y_labelled=yl,
                       num_classes=k, seed=args.seed)
    strat = MLMOC(kernel="pseudo", score="flip", eval_size=args.eval_size, engine="streaming",
                  max_memory=int(args.max_memory), executor=executor)
    t0 = time.perf_counter()
    res = strat.query(ctx, args.budget)
    row = {"mode": mode, "m": int(xs.shape[0]), "seconds": time.perf_counter() - t0,
           "kernel_seconds": res.info["kernel_seconds"],
           "score_seconds": res.info["score_seconds"], "chosen": res.indices.tolist(),
           "workers": res.info.get("workers", 1)}
    if reference is not None:
        row["same_picks"] = bool(np.array_equal(res.indices, reference.indices))
        scale = float(np.abs(reference.scores).max()) or 1.0
        row["max_score_diff"] = float(np.abs(res.scores - reference.scores).max() / scale)
    pos = eval_positions_for(int(xs.shape[0]), args.eval_size, args.seed)
    row["shipped_bytes_per_worker"] = shipped_bytes(model, xl, xs[torch.as_tensor(pos)])
    return row, res


def main(argv=None) -> dict:
    from ntkal.kernels.distributed import RayBlockExecutor, SerialBlockExecutor
    from ntkal.models import build_model

    args = parse_args(argv)
    _common.one_at_a_time(args.quick)
    torch.set_num_threads(1)
    rates = _common.measure_rates(1, quick=args.quick)
    rate = _common.gemm_rate(rates, "float64", 1)
    print(f"float64 GEMM, 1 thread: {rate:.1f} GFLOP/s", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        trained = pool_scale.train_models(args, Path(tmp))
        xl, yl, pool, k, in_shape = pool_scale.load_data(args.seed, args.n_labelled, args.dataset)
        model = build_model(args.model, in_shape, k)
        model.load_state_dict(torch.load(Path(tmp) / f"{args.model}.pt"))
        model.eval()
    layers = _common.model_layers(model, pool[0])
    for m in args.sizes:
        xs = pool[:m].clone()
        e = min(args.eval_size, m)
        counts = work(layers, k, args.n_labelled, e, m)
        reference = None
        for mode in args.modes:
            workers = int(mode[3:]) if mode.startswith("ray") else 1
            before = _common.loadavg()
            start = 0.0
            executor = None
            if mode == "serial":
                executor = SerialBlockExecutor()
            elif mode.startswith("ray"):
                t = time.perf_counter()
                executor = RayBlockExecutor(workers=workers, num_cpus=workers,
                                            object_store_memory=1 << 30)
                start = time.perf_counter() - t
            try:
                row, res = run(args, model, xl, yl, xs, k, mode, executor, reference)
            finally:
                if isinstance(executor, RayBlockExecutor):
                    executor.close()
            if mode == "single":
                reference = res
            flops = counts["candidates_total"] / workers + counts["setup_total"]
            if mode == "single":  # one process: the setup once, Θ(E, C) as pool_scale counts it
                flops = counts["candidates_total"] + counts["setup_total"]
            floor = _common.floor_seconds(flops, rate)
            row.update(start_seconds=start, work=counts, floor_seconds=floor, floor_gflops=rate,
                       times_floor=_common.times_floor(row["seconds"], floor),
                       **_common.case_load(before, workers))
            rows.append(row)
            print({key: row[key] for key in ("mode", "m", "seconds", "times_floor",
                                             "same_picks") if key in row}, flush=True)
    table = _common.markdown_table(
        ["m", "mode", "workers", "start s", "query s", "× floor", "same picks", "load"],
        [[r["m"], r["mode"], r["workers"], _common.fmt(r["start_seconds"]),
          _common.fmt(r["seconds"]), _common.fmt(r["times_floor"]),
          r.get("same_picks", "ref"), _common.load_mark(r)] for r in rows])
    print(table)
    bad = [r for r in rows if r.get("same_picks") is False]
    payload = {"benchmark": "lookahead_ray", "args": vars(args) | {"results": None},
               "rates": rates, "trained": trained, "rows": rows, "table": table}
    path = _common.results_dir(args) / f"lookahead_ray_{args.tag}.json"
    _common.write_result(path, payload, rows, quick=args.quick)
    if bad:
        raise SystemExit(f"picks differ from the single-process query: {bad}")
    return payload


if __name__ == "__main__":
    main()
