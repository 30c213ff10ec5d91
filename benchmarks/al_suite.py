"""Active-learning benchmark suite: every strategy on four datasets x two budget regimes.

One command per step::

    python benchmarks/al_suite.py configs          # (re)write configs/suite/*.yml from SUITE below
    python benchmarks/al_suite.py run --jobs 2     # `ntkal run` each config (resumable), 2 at once
    python benchmarks/al_suite.py report           # AUC tables, penalty matrix, plots, summary

Each config is an ordinary experiment config run by the experiment runner (``ntkal run``), so the
initial labelled set of a seed is shared by all strategies and comparisons can be paired over seeds.
Results go to ``benchmarks/results/al_suite/<config>/`` and the report to
``benchmarks/results/al_suite/summary.{md,json}`` plus ``penalty_matrix.png`` and
``learning_curves.png``.

Paired comparisons follow Ash et al. (ICLR 2020, BADGE, Sec. 5 / Fig. 4): in every cell (dataset x
regime) and at every budget step after the initial one, a two-sided paired t-test over seeds
compares the accuracies of strategies A and B; when A is significantly better (p < 0.05) the entry
P[A, B] gains 1 / (steps of that cell), so every cell contributes at most 1 to an entry and the
matrix's maximum is the number of cells. Column sums say how often a strategy is beaten. The AUC
comparisons per cell (paired t-test of normalised AUCs over seeds, as Lüth et al., NeurIPS 2023,
"Navigating the Pitfalls of Active Learning Evaluation", recommend over single-number rankings)
say which strategies are within noise of the best and which are below random.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "suite"
RESULTS = ROOT / "benchmarks" / "results" / "al_suite"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

ALPHA = 0.05

# ----------------------------------------------------------------------------- the suite
DATASETS = {
    # name: (dataset section, model section)
    "digits": ({"name": "digits"}, {"name": "mlp", "width": 128, "dropout": 0.2}),
    "clustered": ({"name": "clustered", "train_size": 3000, "test_size": 1000},
                  {"name": "mlp", "width": 128, "dropout": 0.2}),
    "fashion_mnist": ({"name": "fashion_mnist", "train_size": 3000, "test_size": 1000},
                      {"name": "mlp", "width": 128, "dropout": 0.2}),
    "mnist": ({"name": "mnist", "train_size": 3000, "test_size": 1000},
              {"name": "mlp", "width": 128, "dropout": 0.2}),
}
REGIMES = {
    # low budget: 20 labels to start (2 per class for 10 classes), 20 per round, 20 -> 120
    "low": {"initial_size": 20, "budget": 20, "cycles": 5, "subset": 200},
    # higher budget: 100 -> 500 labels, 100 per round (the regime where batch MLMOC fell below
    # random, 100 -> 600, shortened by one round to fit the compute budget)
    "high": {"initial_size": 100, "budget": 100, "cycles": 4, "subset": 400},
}
# Short training (a 2-core machine shared with others must run the whole suite in < 45 min).
TRAINER = {"epochs": 12, "min_steps": 100, "batch_size": 32, "lr": None, "momentum": 0.9,
           "weight_decay": 0.0005, "schedule": "onecycle", "loss": "mse", "seed": 0}
STRATEGIES = [
    "random", "entropy", "margin", "badge", "coreset",
    {"name": "bald", "params": {"num_samples": 20}},
    "typiclust", "probcover",
    {"name": "mlmoc", "params": {"kernel": "pseudo", "score": "flip"}},
    {"name": "mlmoc", "label": "mlmoc_seq", "params": {"kernel": "pseudo", "score": "flip"},
     "mode": "sequential"},
    {"name": "mlmoc", "label": "mlmoc_greedy",
     "params": {"kernel": "pseudo", "score": "flip", "selection": "greedy"}},
    {"name": "eer", "params": {"temperature": 0.1}},
    {"name": "emoc", "params": {"temperature": 0.1}},
    "vr",
    {"name": "vr", "label": "vr_greedy", "params": {"selection": "greedy"}},
]
SEEDS = [0, 1, 2, 3, 4]
LOOKAHEAD = ("mlmoc", "mlmoc_seq", "mlmoc_greedy", "eer", "emoc", "vr", "vr_greedy")


def suite_configs() -> dict[str, dict]:
    out = {}
    for dname, (dataset, model) in DATASETS.items():
        for rname, sizes in REGIMES.items():
            name = f"{dname}_{rname}"
            out[name] = {"name": name, "dataset": dataset, "model": model, "trainer": TRAINER,
                         "strategies": STRATEGIES, **sizes, "seeds": SEEDS, "mode": "batch",
                         "retrain": "warm", "device": "cpu", "threads": 1}
    return out


def write_configs() -> list[Path]:
    import yaml

    CONFIGS.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, cfg in suite_configs().items():
        path = CONFIGS / f"{name}.yml"
        head = (f"# Written by `python benchmarks/al_suite.py configs` (edit DATASETS, REGIMES, STRATEGIES there).\n"
                f"# {name}: see benchmarks/al_suite.py for the protocol.\n")
        path.write_text(head + yaml.safe_dump(cfg, sort_keys=False))
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- running
def _dataset_available(cfg_path: Path) -> bool:
    from ntkal.data import load_dataset
    from ntkal.experiments import load_config

    cfg = load_config(cfg_path)
    try:
        load_dataset(cfg.dataset.name, cfg.dataset.root, train_size=10, test_size=10)
    except Exception as err:  # noqa: BLE001 - a missing dataset is skipped and said so
        print(f"skip {cfg_path.stem}: {err}")
        return False
    return True


def run(jobs: int, only: list[str], seeds: str | None, out_root: Path) -> None:
    paths = sorted(CONFIGS.glob("*.yml"))
    if only:
        paths = [p for p in paths if p.stem in only]
    paths = [p for p in paths if _dataset_available(p)]
    # the costliest first, so the two workers finish together
    paths.sort(key=lambda p: ("high" not in p.stem, "mnist" not in p.stem, p.stem))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), NTKAL_QUIET="1")
    pending, running, times = list(paths), [], {}
    out_root.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < jobs:
            path = pending.pop(0)
            out = out_root / path.stem
            out.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "ntkal.cli", "run", str(path), "--out", str(out),
                   "--quiet", "--threads", "1"]
            if seeds:
                cmd += ["--seeds", seeds]
            log = open(out / "log.txt", "a")
            print(f"start {path.stem}", flush=True)
            running.append((path, subprocess.Popen(cmd, env=env, stdout=log, stderr=log),
                            time.perf_counter(), log))
        time.sleep(2.0)
        for item in list(running):
            path, proc, t0, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                times[path.stem] = time.perf_counter() - t0
                print(f"done {path.stem} rc={proc.returncode} in {times[path.stem]:.0f} s",
                      flush=True)
    timing = out_root / "timings.json"
    old = json.loads(timing.read_text()) if timing.exists() else {}
    old.update(times)
    timing.write_text(json.dumps(old, indent=1))


# ----------------------------------------------------------------------------- analysis
def _cell_arrays(records: list[dict]) -> tuple[dict, list[int], list[int]]:
    """accuracy[strategy] -> (seeds x steps) array over the seeds and steps every strategy has."""
    by = {}
    for r in records:
        by.setdefault(r["strategy"], {}).setdefault(int(r["seed"]), {})[int(r["labelled"])] = \
            float(r["accuracy"])
    seeds = sorted(set.intersection(*(set(v) for v in by.values())))
    steps = sorted(set.intersection(*(set(v[s]) for v in by.values() for s in seeds)))
    acc = {name: np.array([[v[s][x] for x in steps] for s in seeds]) for name, v in by.items()}
    return acc, seeds, steps


def _auc(acc: np.ndarray, steps: list[int]) -> np.ndarray:
    from ntkal.experiments.plots import normalised_auc

    return np.array([normalised_auc(steps, row) for row in acc])


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import ttest_rel

    d = a - b
    if np.allclose(d, 0.0):
        return 1.0
    if np.allclose(d, d.mean()):  # a constant non-zero difference: as significant as it gets
        return 0.0
    return float(ttest_rel(a, b).pvalue)


def analyse(out_root: Path) -> dict:
    from ntkal.experiments.plots import load_records

    cells = {}
    for path in sorted(out_root.glob("*/results.json")):
        records = load_records(path)
        if records:
            cells[path.parent.name] = records
    if not cells:
        raise SystemExit(f"no results under {out_root}; run `python benchmarks/al_suite.py run`")
    names = sorted(set.intersection(*({r["strategy"] for r in recs} for recs in cells.values())))
    idx = {n: i for i, n in enumerate(names)}
    penalty = np.zeros((len(names), len(names)))
    summary = {"cells": {}, "strategies": names}
    for cell, records in cells.items():
        acc, seeds, steps = _cell_arrays([r for r in records if r["strategy"] in idx])
        aucs = {n: _auc(acc[n], steps) for n in names}
        means = {n: float(aucs[n].mean()) for n in names}
        best = max(names, key=lambda n: means[n])
        rounds = list(range(1, len(steps)))  # budget steps after the initial set
        for a in names:
            for b in names:
                if a == b:
                    continue
                for t in rounds:
                    x, y = acc[a][:, t], acc[b][:, t]
                    if x.mean() > y.mean() and _paired_p(x, y) < ALPHA:
                        penalty[idx[a], idx[b]] += 1.0 / len(rounds)
        entry = {"seeds": seeds, "labelled": steps, "best": best, "strategies": {}}
        for n in names:
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
            }
        summary["cells"][cell] = entry
    summary["penalty_matrix"] = penalty.tolist()
    summary["num_cells"] = len(cells)
    summary["beaten_total"] = dict(zip(names, penalty.sum(axis=0).tolist()))
    summary["wins_total"] = dict(zip(names, penalty.sum(axis=1).tolist()))
    summary["never_below_random"] = [n for n in names if not any(
        c["strategies"][n]["below_random"] for c in summary["cells"].values())]
    summary["within_noise_of_best_cells"] = {n: sum(
        c["strategies"][n]["within_noise_of_best"] for c in summary["cells"].values())
        for n in names}
    return summary


def _markdown(summary: dict) -> str:
    names = summary["strategies"]
    cells = summary["cells"]
    lines = ["# Active-learning suite: normalised AUC (mean ± std over seeds)", "",
             "Bold: best mean in the cell; `~`: within noise of the best (paired t-test on AUC over "
             "seeds, p ≥ 0.05); `↓`/`↑`: significantly below/above random (p < 0.05).", ""]
    cols = list(cells)
    lines.append("| strategy | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    order = sorted(names, key=lambda n: -np.mean([cells[c]["strategies"][n]["auc_mean"]
                                                  for c in cols]))
    for n in order:
        row = []
        for c in cols:
            e = cells[c]["strategies"][n]
            text = f"{e['auc_mean']:.3f} ± {e['auc_std']:.3f}"
            if cells[c]["best"] == n:
                text = f"**{text}**"
            elif e["within_noise_of_best"]:
                text += " ~"
            text += " ↓" if e["below_random"] else (" ↑" if e["above_random"] else "")
            row.append(text)
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines += ["", "Seeds per cell: " + ", ".join(f"{c}: {len(cells[c]['seeds'])}" for c in cols),
              "", f"# Penalty matrix (Ash et al. 2020): row A, column B = how often A is "
              f"significantly better than B (max {summary['num_cells']})", ""]
    lines.append("| A \\ B | " + " | ".join(names) + " | wins |")
    lines.append("|---|" + "---|" * (len(names) + 1))
    pm = np.array(summary["penalty_matrix"])
    for i, a in enumerate(names):
        lines.append(f"| {a} | " + " | ".join(f"{v:.1f}" for v in pm[i]) + f" | {pm[i].sum():.1f} |")
    lines.append("| beaten | " + " | ".join(f"{v:.1f}" for v in pm.sum(axis=0)) + " | |")
    lines += ["", "Never significantly below random (AUC, any cell): "
              + ", ".join(summary["never_below_random"]),
              "", "Cells within noise of the best: " + ", ".join(
                  f"{n} {k}/{summary['num_cells']}" for n, k in sorted(
                      summary["within_noise_of_best_cells"].items(), key=lambda kv: -kv[1]))]
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
    cols = 2
    rows = (len(cells) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.6 * rows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, cell in zip(axes.ravel(), cells):
        cv = curves(load_records(out_root / cell / "results.json"))
        for i, n in enumerate(names):
            style = "-" if n in LOOKAHEAD else "--"
            ax.plot(cv[n]["labelled"], cv[n]["mean"], style, color=cmap(i % 20), label=n, lw=1.2)
        ax.set_title(cell)
        ax.set_xlabel("labels")
        ax.set_ylabel("test accuracy")
    for ax in axes.ravel()[len(cells):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out_root / "learning_curves.png", dpi=100)
    plt.close(fig)


def report(out_root: Path) -> dict:
    from fidelity import machine_info

    summary = analyse(out_root)
    timing = out_root / "timings.json"
    summary["wall_seconds_per_config"] = json.loads(timing.read_text()) if timing.exists() else {}
    summary["machine"] = machine_info()
    (out_root / "summary.json").write_text(json.dumps(summary, indent=1))
    text = _markdown(summary)
    (out_root / "summary.md").write_text(text)
    _plots(summary, out_root)
    print(text)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("configs", help="write configs/suite/*.yml")
    p_run = sub.add_parser("run", help="run the suite's configs with `ntkal run` (resumable)")
    p_run.add_argument("--jobs", type=int, default=2)
    p_run.add_argument("--only", nargs="*", default=[], help="config names (file stems)")
    p_run.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's)")
    p_run.add_argument("--out", type=Path, default=RESULTS)
    p_rep = sub.add_parser("report", help="tables, penalty matrix and plots from the results")
    p_rep.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.command == "configs":
        for p in write_configs():
            print(p.relative_to(ROOT))
    elif args.command == "run":
        run(args.jobs, args.only, args.seeds, args.out)
    else:
        report(args.out)


if __name__ == "__main__":
    main()
