"""Wall-clock cost of the diversity strategies' selection step on synthetic embeddings.

Coreset's k-center greedy does one distance update per pick; it used to call ``torch.cdist``
for each (``cdist`` baseline below, the same greedy written the plain way) and now uses the direct
squared-distance update ``‖a‖² + ‖b‖² − 2 a·b`` (one matrix-vector product per pick). Both pick
the same points (checked here and in tests/strategies/test_baselines.py). BADGE is timed on the
same embeddings for scale. The model is an identity embedding with a linear classifier, so the
timings are of the selection alone, not of a network's forward passes.

Run ``python benchmarks/strategies_speed.py [--quick] [--threads 1]``; prints a table and writes
``benchmarks/results/strategies_speed_<tag>.json`` with machine information.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import RESULTS, machine_info  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from ntkal.strategies import BADGE, Coreset, QueryContext

    sizes = [(2000, 128, 200, 50)] if args.quick else [(5000, 128, 500, 100), (20000, 512, 1000, 100)]
    rows = []
    for m, d, n_lab, budget in sizes:
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
                     "badge_seconds": t_badge})
    header = f"{'m':>6} {'d':>4} {'lab':>5} {'b':>4} {'coreset s':>10} {'cdist s':>9} " \
             f"{'speedup':>8} {'same':>5} {'badge s':>8}"
    print(header)
    for r in rows:
        print(f"{r['candidates']:>6} {r['dim']:>4} {r['labelled']:>5} {r['budget']:>4} "
              f"{r['coreset_seconds']:>10.3f} {r['coreset_cdist_seconds']:>9.3f} "
              f"{r['speedup']:>8.2f} {str(r['same_picks']):>5} {r['badge_seconds']:>8.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"strategies_speed_{'quick' if args.quick else 'full'}.json"
    out.write_text(json.dumps({"machine": machine_info(), "threads": args.threads,
                               "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
