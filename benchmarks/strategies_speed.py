"""Wall-clock cost of the diversity strategies' selection step on synthetic embeddings.

Coreset's k-center greedy does one distance update per pick; it used to call ``torch.cdist``
for each (``cdist`` baseline below, the same greedy written the plain way) and now uses the direct
squared-distance update ``‖a‖² + ‖b‖² − 2 a·b`` (one matrix-vector product per pick). Both pick
the same points (checked here and in tests/strategies/test_baselines.py). BADGE is timed on the
same embeddings for scale. The model is an identity embedding with a linear classifier, so the
timings are of the selection alone, not of a network's forward passes.

Floors, with rates measured in the same run (``_common``): the k-center greedy must compute the
distances to L once (a GEMM, 2·m·|L|·d FLOPs) and then read the m × d embeddings once per pick
(4·m·d bytes a pick in float32, at the stream bandwidth); BADGE's k-means++ seeding reads its
m × (d·k) gradient embeddings once per pick. Each row has its load average before and after.

Run ``python benchmarks/strategies_speed.py [--quick] [--threads 1]``; prints a table and writes
``benchmarks/results/strategies_speed_<tag>.json`` with machine information.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import _common


class IdentityEmbedding(nn.Module):
    """``embed(x) = x``; a fixed random linear classifier on top."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(d, k)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


def cdist_k_center_greedy(emb: torch.Tensor, labelled: torch.Tensor, budget: int) -> list[int]:
    """The previous implementation: a ``torch.cdist`` call per distance update (float32)."""
    dist = torch.full((emb.shape[0],), float("inf"), dtype=emb.dtype)
    for start in range(0, labelled.shape[0], 4096):
        dist = torch.minimum(dist, torch.cdist(emb, labelled[start:start + 4096]).min(dim=1).values)
    chosen: list[int] = []
    while len(chosen) < budget:
        masked = dist.clone()
        if chosen:
            masked[chosen] = -1.0
        nxt = int(torch.argmax(masked))
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.cdist(emb, emb[nxt:nxt + 1]).squeeze(1))
    return chosen


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def floors(m: int, d: int, n_lab: int, budget: int, k: int, rates: dict, threads: int) -> dict:
    """Roofline floors (seconds) of the k-center greedy and of BADGE's seeding (module doc)."""
    gemm = _common.gemm_rate(rates, "float32", threads)
    bw = _common.bandwidth(rates, threads)
    coreset = (_common.floor_seconds(2.0 * m * n_lab * d, gemm)
               + _common.floor_seconds(nbytes=4.0 * m * d * budget, gbps=bw))
    badge = _common.floor_seconds(nbytes=4.0 * m * d * k * budget, gbps=bw)
    return {"coreset_floor_seconds": coreset, "badge_floor_seconds": badge}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser, "small sizes (a few seconds)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    args = parser.parse_args(argv)
    _common.one_at_a_time(args.quick)
    args.repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    from ntkal.strategies import BADGE, Coreset, QueryContext

    rates = _common.measure_rates(args.threads, quick=args.quick)
    sizes = [(1000, 64, 100, 20)] if args.quick else [(5000, 128, 500, 100),
                                                      (20000, 512, 1000, 100)]
    rows = []
    for m, d, n_lab, budget in sizes:
        before = _common.loadavg()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(m, d, generator=g)
        x_lab = torch.randn(n_lab, d, generator=g)
        model = IdentityEmbedding(d, 10)
        ctx = QueryContext(model=model, x_candidates=x, x_labelled=x_lab,
                           y_labelled=torch.zeros(n_lab, dtype=torch.long), num_classes=10,
                           batch_size=4096)
        t_new, result = best_of(lambda: Coreset().query(ctx, budget), args.repeats)
        # The previous implementation ran on the float32 embeddings the model returns.
        t_old, old = best_of(lambda: cdist_k_center_greedy(x, x_lab, budget), args.repeats)
        t_badge, _ = best_of(lambda: BADGE().query(ctx, budget), args.repeats)
        rows.append({"candidates": m, "dim": d, "labelled": n_lab, "budget": budget,
                     "coreset_seconds": t_new, "coreset_cdist_seconds": t_old,
                     "speedup": t_old / t_new, "same_picks": result.indices.tolist() == old,
                     "badge_seconds": t_badge, **floors(m, d, n_lab, budget, 10, rates,
                                                        args.threads),
                     **_common.case_load(before, args.threads)})
        r = rows[-1]
        r["coreset_times_floor"] = _common.times_floor(t_new, r["coreset_floor_seconds"])
        r["badge_times_floor"] = _common.times_floor(t_badge, r["badge_floor_seconds"])
    print(_common.markdown_table(
        ["m", "d", "labelled", "budget", "coreset s", "× floor", "cdist s", "speed-up", "same",
         "badge s", "× floor", "load 1-min before/after"],
        [[r["candidates"], r["dim"], r["labelled"], r["budget"], f"{r['coreset_seconds']:.3f}",
          _common.fmt(r["coreset_times_floor"], ".1f"), f"{r['coreset_cdist_seconds']:.3f}",
          f"{r['speedup']:.2f}", r["same_picks"], f"{r['badge_seconds']:.3f}",
          _common.fmt(r["badge_times_floor"], ".1f"), _common.load_mark(r)] for r in rows]))
    out = _common.results_dir(args) / f"strategies_speed_{'quick' if args.quick else 'full'}.json"
    _common.write_result(out, {"benchmark": "strategies_speed", "machine": _common.machine_info(),
                               "rates": rates, "threads": args.threads, "repeats": args.repeats,
                               "rows": rows}, rows, quick=args.quick)


if __name__ == "__main__":
    main()
