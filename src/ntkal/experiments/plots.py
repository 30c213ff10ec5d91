"""Learning curves and area-under-curve summaries of experiment records.

The normalised AUC of one (strategy, seed) curve is the trapezoidal area under test accuracy
against the number of labels, divided by the width of the label range: the mean accuracy over the
acquisition budget, in ``[0, 1]``, comparable across configs with different sizes. Strategies are
compared by its mean ± standard deviation over seeds (sample std, ``ddof=1``; 0 for one seed).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "load_records",
    "check_records",
    "curves",
    "normalised_auc",
    "auc_table",
    "plot_learning_curves",
    "auc_markdown",
    "auc_rich_table",
    "accuracy_rich_table",
    "write_report",
]

_PathLike = str | Path


#: Fields every record needs for curves and AUCs.
CURVE_FIELDS = ("strategy", "seed", "labelled", "accuracy")


def check_records(records: Any, source: str, fields: tuple[str, ...] = CURVE_FIELDS) -> list[dict]:
    """``records`` if it is a list of mappings holding ``fields``; else a ValueError naming
    ``source``, the record's position and strategy/seed, and the missing field."""
    if not isinstance(records, list):
        raise ValueError(f"{source} has no 'records' list; is it an ntkal results.json?")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{source}: record {i} is a {type(record).__name__}, not a mapping")
        missing = [f for f in fields if f not in record]
        if missing:
            which = ", ".join(
                f"{k}={record[k]!r}" for k in ("strategy", "seed", "cycle") if k in record
            )
            raise ValueError(
                f"{source}: record {i}{f' ({which})' if which else ''} lacks "
                f"field(s) {', '.join(map(repr, missing))}"
            )
    return records


def load_records(path: _PathLike) -> list[dict]:
    """Records of a ``results.json`` written by the runner; every error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"results file {path} is not UTF-8 text (byte {err.start}); is it an "
            "ntkal results.json?"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    return check_records(doc.get("records") if isinstance(doc, dict) else None, str(path))


def _by_run(records: list[dict]) -> dict[str, dict[int, list[tuple[int, float]]]]:
    check_records(records, "records")
    runs: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        runs[r["strategy"]][r["seed"]].append((int(r["labelled"]), float(r["accuracy"])))
    return {
        s: {seed: sorted(points) for seed, points in by_seed.items()} for s, by_seed in runs.items()
    }


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def curves(records: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Per strategy: ``labelled`` counts and the ``mean``/``std``/``n`` of accuracy over seeds."""
    out = {}
    for strategy, by_seed in _by_run(records).items():
        acc: dict[int, list[float]] = defaultdict(list)
        for points in by_seed.values():
            for x, a in points:
                acc[x].append(a)
        xs = np.array(sorted(acc))
        out[strategy] = {
            "labelled": xs,
            "mean": np.array([np.mean(acc[x]) for x in xs]),
            "std": np.array([_std(np.asarray(acc[x])) for x in xs]),
            "n": np.array([len(acc[x]) for x in xs]),
        }
    return out


def normalised_auc(labelled, accuracy) -> float:
    """Trapezoidal area under ``accuracy(labelled)`` over the label range (the accuracy itself
    for a single point)."""
    x = np.asarray(labelled, dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    if x.size == 1 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def auc_table(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per strategy: mean and std of the normalised AUC over seeds, best first."""
    table = {}
    for strategy, by_seed in _by_run(records).items():
        aucs = np.array([normalised_auc(*zip(*pts)) for pts in by_seed.values()])
        table[strategy] = {"mean": float(aucs.mean()), "std": _std(aucs), "seeds": int(aucs.size)}
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["mean"]))


def plot_learning_curves(records: list[dict], path: _PathLike, *, title: str | None = None) -> Path:
    """Mean ± std test accuracy against labels, one line per strategy, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for strategy, c in curves(records).items():
            (line,) = ax.plot(c["labelled"], c["mean"], marker="o", ms=3, label=strategy)
            ax.fill_between(
                c["labelled"],
                c["mean"] - c["std"],
                c["mean"] + c["std"],
                color=line.get_color(),
                alpha=0.15,
                linewidth=0,
            )
        ax.set_xlabel("labelled examples")
        ax.set_ylabel("test accuracy")
        seeds = len({r["seed"] for r in records})
        ax.set_title(
            f"{title or 'learning curves'} (mean ± std over {seeds} seed"
            f"{'s' if seeds != 1 else ''})"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def auc_markdown(table: dict[str, dict[str, float]]) -> str:
    lines = ["| strategy | normalised AUC (mean ± std) | seeds |", "|---|---|---|"]
    lines += [
        f"| {s} | {v['mean']:.4f} ± {v['std']:.4f} | {v['seeds']} |" for s, v in table.items()
    ]
    return "\n".join(lines) + "\n"


def auc_rich_table(table: dict[str, dict[str, float]]):
    from rich.table import Table

    t = Table(title="Normalised area under the learning curve")
    t.add_column("strategy")
    t.add_column("AUC mean", justify="right")
    t.add_column("± std", justify="right")
    t.add_column("seeds", justify="right")
    for s, v in table.items():
        t.add_row(s, f"{v['mean']:.4f}", f"{v['std']:.4f}", str(v["seeds"]))
    return t


def accuracy_rich_table(records: list[dict]):
    """Mean test accuracy by label count (rows) and strategy (columns): a run has more cycles
    than strategies, and rows keep the table within a terminal's width."""
    from rich.table import Table

    cs = curves(records)
    xs = sorted({int(x) for c in cs.values() for x in c["labelled"]})
    t = Table(title="Test accuracy (mean over seeds)")
    t.add_column("labels", justify="right")
    for s in cs:
        t.add_column(s, justify="right", overflow="fold")
    accs = {s: dict(zip(c["labelled"].tolist(), c["mean"].tolist())) for s, c in cs.items()}
    for x in xs:
        t.add_row(str(x), *[f"{accs[s][x]:.3f}" if x in accs[s] else "-" for s in cs])
    return t


def write_report(
    records: list[dict], out_dir: _PathLike, *, title: str | None = None
) -> dict[str, Path]:
    """``learning_curves.png``, ``auc.json`` and ``auc.md`` in ``out_dir``."""
    out = Path(out_dir)
    table = auc_table(records)
    paths = {
        "png": plot_learning_curves(records, out / "learning_curves.png", title=title),
        "auc_json": out / "auc.json",
        "auc_md": out / "auc.md",
    }
    paths["auc_json"].write_text(json.dumps(table, indent=1))
    paths["auc_md"].write_text(auc_markdown(table))
    return paths
