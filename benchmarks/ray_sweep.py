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
    python benchmarks/ray_sweep.py --quick                   # random only, 1 seed, 1 cycle

A sweep is training runs, not one GEMM, so its floor is perfect scaling: the local runner's
median time divided by the workers (``× floor`` = time / (local / W)). The load average is
recorded before and after every run; a mode with W workers uses W × ``threads`` cores. Writes
``benchmarks/results/ray_sweep_<hostname>.json`` (machine info, per-mode seconds, speed-ups;
``_loaded.json`` when a run was loaded) and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common

ROOT = _common.ROOT

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
                    "same_records": all(r["same_records"] for r in mine),
                    "loaded": any(r["loaded"] for r in mine),
                    "loadavg_before": mine[0]["loadavg_before"],
                    "loadavg_after": mine[-1]["loadavg_after"]})
    local = next((r for r in out if r["mode"] == "local"), None)
    for r in out:
        r["floor_seconds"] = local["sweep_seconds"] / r["workers"] if local else None
        r["times_floor"] = _common.times_floor(r["sweep_seconds"], r["floor_seconds"])
    return out


def table(summary: list[dict]) -> str:
    base = next((r for r in summary if r["mode"] == "local"), None)
    one = next((r for r in summary if r["mode"] == "ray1"), None)
    body = []
    for r in summary:
        vs_local = f"{base['sweep_seconds'] / r['sweep_seconds']:.2f}×" if base else ""
        vs_one = f"{one['sweep_seconds'] / r['sweep_seconds']:.2f}×" if one else ""
        body.append([r["mode"], r["workers"], f"{r['startup_seconds']:.1f}",
                     f"{r['sweep_seconds']:.1f}", _common.fmt(r.get("times_floor")), vs_local,
                     vs_one, "same" if r["same_records"] else "DIFFER",
                     ", ".join(map(str, r["rounds"])), _common.load_mark(r)])
    return _common.markdown_table(
        ["mode", "workers", "start-up s", "sweep s (median)", "× floor (local / W)", "vs local",
         "vs ray1", "records", "every round (s)", "load 1-min before/after"], body,
        align="lrrrrrrllll")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_common_args(ap, "smoke run: random only, seed 0, 1 cycle, 2 epochs, local and ray1")
    ap.add_argument("--config", default=str(ROOT / "configs" / "digits.yml"))
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1; quick 0)")
    ap.add_argument("--cycles", type=int, default=None, help="override the config's cycles")
    ap.add_argument("--strategies", default=None,
                    help="comma-separated strategy labels to keep (default all; quick: random)")
    ap.add_argument("--modes", default=None,
                    help="comma-separated: local, rayW (a private Ray of W CPUs); default "
                         "local,ray1,ray2 (quick: local,ray1)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the modes this many times, in alternating order (default 1)")
    ap.add_argument("--out", default=None,
                    help="JSON path (default benchmarks/results/ray_sweep_<hostname>.json)")
    args = ap.parse_args(argv)
    _common.one_at_a_time(args.quick)

    from ntkal.experiments import load_config

    if args.quick:
        args.seeds, args.cycles = args.seeds or "0", 1 if args.cycles is None else args.cycles
        args.strategies, args.modes = args.strategies or "random", args.modes or "local,ray1"
    cfg = load_config(args.config).with_overrides(
        seeds=[int(s) for s in (args.seeds or "0,1").split(",")])
    if args.cycles is not None:
        cfg = dataclasses.replace(cfg, cycles=args.cycles)
    if args.quick:
        cfg = dataclasses.replace(cfg, trainer={**cfg.trainer, "epochs": 2})
    if args.strategies:
        keep = args.strategies.split(",")
        cfg = dataclasses.replace(cfg, strategies=[s for s in cfg.strategies if s.label in keep])
        if not cfg.strategies:
            ap.error(f"--strategies {args.strategies!r} keeps none of the config's strategies")
    modes = [m.strip() for m in (args.modes or "local,ray1,ray2").split(",") if m.strip()]
    for m in modes:
        if m != "local" and not (m.startswith("ray") and m[3:].isdigit() and int(m[3:]) >= 1):
            ap.error(f"unknown mode {m!r}; use local or rayW, e.g. ray2")
    info = _common.machine_info("cpu")
    runs = len(cfg.strategies) * len(cfg.seeds)
    print(f"{cfg.name}: {len(cfg.strategies)} strategies x {len(cfg.seeds)} seeds = {runs} runs, "
          f"{cfg.cycles} cycles, threads {cfg.threads}; modes {', '.join(modes)}", flush=True)
    rows, reference = [], None
    order = [(r, m) for r in range(max(1, args.rounds))
             for m in (modes if r % 2 == 0 else modes[::-1])]
    with tempfile.TemporaryDirectory(prefix="ntkal-sweep-") as tmp:
        for r, m in order:
            print(f"  round {r} {m} ...", flush=True)
            before = _common.loadavg()
            row = run_mode(m, cfg, Path(tmp) / f"{m}-{r}")
            row.update(_common.case_load(before, row["workers"] * cfg.threads))
            row["round"] = r
            records = row.pop("records")
            if reference is None:
                reference = _strip(records)
            row["same_records"] = _strip(records) == reference
            row["num_records"] = len(records)
            rows.append(row)
            print(f"  round {r} {m}: {row['sweep_seconds']:.1f} s "
                  f"(+{row['startup_seconds']:.1f} s start-up)", flush=True)
    summary = summarise(rows, modes)
    text = table(summary)
    print()
    print(text)
    out = Path(args.out) if args.out else (
        _common.results_dir(args)
        / f"ray_sweep_{socket.gethostname()}{'_quick' if args.quick else ''}.json")
    payload = {"benchmark": "ray_sweep", "machine": info, "config": args.config, "seeds": list(cfg.seeds),
               "cycles": cfg.cycles, "strategies": [s.label for s in cfg.strategies],
               "runs": runs, "threads_per_run": cfg.threads, "rounds": args.rounds,
               "note": "modes run one after another in one invocation on the same machine; "
                       "same_records compares every mode's records with the first mode's, "
                       "timing fields aside",
               "summary": summary, "results": rows, "table": text}
    _common.write_result(out, payload, rows, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
