"""Wall time of an experiment sweep: the local runner vs ``--ray`` with 1 and 2 workers, side by side.

Every mode runs the same config (default ``configs/digits.yml`` with fewer seeds) into a fresh
output directory, in this one invocation, so that a busy machine slows all of them alike; with
``--rounds R`` the modes run R times, in alternating order (a drifting load then biases no mode),
and the table shows each mode's median. The records of every run are compared with the first
run's (timing fields aside), and the JSON says whether they were identical. Ray start-up (a private loopback-only Ray of ``W`` CPUs, see
:func:`ntkal.experiments.ray_runner.ray_cluster`) is timed apart from the sweep itself.

Usage::

    python benchmarks/ray_sweep.py                           # digits, seeds 0,1: local, ray1, ray2
    python benchmarks/ray_sweep.py --seeds 0 --cycles 3      # a quick look
    python benchmarks/ray_sweep.py --config configs/digits.yml --modes ray1,ray2 --out x.json

Writes ``benchmarks/results/ray_sweep_<hostname>.json`` (machine info, per-mode seconds,
speed-ups) and prints a table. On a machine shared with other jobs, say so when quoting it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import machine_info  # noqa: E402

TIMING = ("query_seconds", "train_seconds")


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def run_mode(mode: str, cfg, out: Path) -> dict:
    from ntkal.experiments import run_experiment

    if mode == "local":
        t0 = time.perf_counter()
        records = run_experiment(cfg, out, quiet=True, plot=False)
        return {"mode": mode, "workers": 1, "startup_seconds": 0.0,
                "sweep_seconds": time.perf_counter() - t0, "records": records}
    from ntkal.experiments.ray_runner import ray_cluster, run_experiment_ray

    workers = int(mode[3:])
    t0 = time.perf_counter()
    with ray_cluster(num_cpus=workers):
        t1 = time.perf_counter()
        records = run_experiment_ray(cfg, out, quiet=True, plot=False)
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    return {"mode": mode, "workers": workers, "startup_seconds": t1 - t0,
            "sweep_seconds": t2 - t1, "shutdown_seconds": t3 - t2, "records": records}


def summarise(rows: list[dict], modes: list[str]) -> list[dict]:
    """Per mode: median sweep and start-up seconds over the rounds, every round's sweep."""
    out = []
    for m in modes:
        mine = [r for r in rows if r["mode"] == m]
        out.append({"mode": m, "workers": mine[0]["workers"],
                    "sweep_seconds": statistics.median(r["sweep_seconds"] for r in mine),
                    "startup_seconds": statistics.median(r["startup_seconds"] for r in mine),
                    "rounds": [round(r["sweep_seconds"], 1) for r in mine],
                    "same_records": all(r["same_records"] for r in mine)})
    return out


def table(summary: list[dict]) -> str:
    base = next((r for r in summary if r["mode"] == "local"), None)
    one = next((r for r in summary if r["mode"] == "ray1"), None)
    head = (f"{'mode':7} {'workers':>7} {'start-up s':>10} {'sweep s':>9} {'vs local':>9} "
            f"{'vs ray1':>8}  {'records':8} every round (s)")
    out = [head, "-" * len(head)]
    for r in summary:
        vs_local = f"{base['sweep_seconds'] / r['sweep_seconds']:.2f}x" if base else ""
        vs_one = f"{one['sweep_seconds'] / r['sweep_seconds']:.2f}x" if one else ""
        same = "same" if r["same_records"] else "DIFFER"
        out.append(f"{r['mode']:7} {r['workers']:>7} {r['startup_seconds']:10.1f} "
                   f"{r['sweep_seconds']:9.1f} {vs_local:>9} {vs_one:>8}  {same:8} "
                   f"{', '.join(map(str, r['rounds']))}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "digits.yml"))
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    ap.add_argument("--cycles", type=int, default=None, help="override the config's cycles")
    ap.add_argument("--modes", default="local,ray1,ray2",
                    help="comma-separated: local, rayW (a private Ray of W CPUs)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the modes this many times, in alternating order (default 1)")
    ap.add_argument("--out", default=None,
                    help="JSON path (default benchmarks/results/ray_sweep_<hostname>.json)")
    args = ap.parse_args(argv)

    from ntkal.experiments import load_config

    cfg = load_config(args.config).with_overrides(
        seeds=[int(s) for s in args.seeds.split(",")])
    if args.cycles is not None:
        cfg = dataclasses.replace(cfg, cycles=args.cycles)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m != "local" and not (m.startswith("ray") and m[3:].isdigit() and int(m[3:]) >= 1):
            ap.error(f"unknown mode {m!r}; use local or rayW, e.g. ray2")
    info = machine_info("cpu")
    runs = len(cfg.strategies) * len(cfg.seeds)
    print(f"{cfg.name}: {len(cfg.strategies)} strategies x {len(cfg.seeds)} seeds = {runs} runs, "
          f"{cfg.cycles} cycles, threads {cfg.threads}; modes {', '.join(modes)}", flush=True)
    rows, reference = [], None
    order = [(r, m) for r in range(max(1, args.rounds))
             for m in (modes if r % 2 == 0 else modes[::-1])]
    with tempfile.TemporaryDirectory(prefix="ntkal-sweep-") as tmp:
        for r, m in order:
            print(f"  round {r} {m} ...", flush=True)
            row = run_mode(m, cfg, Path(tmp) / f"{m}-{r}")
            row["round"] = r
            records = row.pop("records")
            if reference is None:
                reference = _strip(records)
            row["same_records"] = _strip(records) == reference
            row["num_records"] = len(records)
            rows.append(row)
            print(f"  round {r} {m}: {row['sweep_seconds']:.1f} s "
                  f"(+{row['startup_seconds']:.1f} s start-up)", flush=True)
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    summary = summarise(rows, modes)
    text = table(summary)
    print()
    print(text)
    out = Path(args.out) if args.out else (
        Path(__file__).resolve().parent / "results" / f"ray_sweep_{socket.gethostname()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "config": args.config, "seeds": list(cfg.seeds),
               "cycles": cfg.cycles, "strategies": [s.label for s in cfg.strategies],
               "runs": runs, "threads_per_run": cfg.threads, "rounds": args.rounds,
               "note": "modes run one after another in one invocation on the same machine; "
                       "same_records compares every mode's records with the first mode's, "
                       "timing fields aside",
               "summary": summary, "results": rows, "table": text}
    out.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
