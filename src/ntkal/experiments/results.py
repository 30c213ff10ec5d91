"""What every experiment driver shares: the output directory's records, its state files, the
dataset as a run loads it (with its checks), the device rule and the progress display.

The local runner (:mod:`ntkal.experiments.runner`) and the Ray driver
(:mod:`ntkal.experiments.ray_runner`) both use these, so that the two cannot drift apart: the
same files, the same resuming rules, and the same data checks before any run starts.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

from ntkal.atomic_files import atomic_write_text
from ntkal.experiments.config import ConfigError, ExperimentConfig
from ntkal.progress import environment_is_quiet

__all__ = [
    "Results",
    "RECORD_FIELDS",
    "RESULTS_FORMAT",
    "is_quiet",
    "records_to_csv",
    "resolve_device",
    "state_path",
    "progress_display",
    "load_run_dataset",
]

RESULTS_FORMAT = "ntkal.results"
RECORD_FIELDS = (
    "strategy",
    "seed",
    "cycle",
    "labelled",
    "accuracy",
    "query_seconds",
    "train_seconds",
)


def is_quiet(quiet: bool | None = None) -> bool:
    """Explicit ``quiet`` wins; otherwise quiet when ``NTKAL_QUIET=1`` or ``CI`` is set."""
    if quiet is not None:
        return bool(quiet)
    return environment_is_quiet()


def records_to_csv(records: list[dict]) -> str:
    """The records as ``results.csv`` text (columns :data:`RECORD_FIELDS`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(RECORD_FIELDS), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


class Results:
    """results.json / results.csv of one output directory."""

    def __init__(self, out: Path, config: ExperimentConfig, overwrite: bool) -> None:
        self.out = out
        self.json_path = out / "results.json"
        self.csv_path = out / "results.csv"
        self.config = config
        self.records: list[dict] = []
        self.strategy_hashes: dict[str, str] = {}
        if overwrite:
            for p in (self.json_path, self.csv_path):
                p.unlink(missing_ok=True)
            shutil.rmtree(out / "state", ignore_errors=True)
        if self.json_path.exists():
            self._load_existing()
        for spec in config.strategies:
            self.strategy_hashes[spec.label] = config.strategy_hash(spec)

    def _load_existing(self) -> None:
        try:
            old = json.loads(self.json_path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(
                f"{self.json_path} exists but cannot be read ({err}); use another "
                "output directory or --overwrite"
            ) from err
        if not isinstance(old, dict) or old.get("format") != RESULTS_FORMAT:
            raise ConfigError(
                f"{self.json_path} is not an ntkal results file; use another output "
                "directory or --overwrite"
            )
        if old.get("config_hash") != self.config.shared_hash():
            raise ConfigError(
                f"{self.out} holds results of a different config (dataset, model, "
                "trainer, sizes, mode or retrain changed); use another output "
                "directory (--out) or --overwrite"
            )
        old_hashes = old.get("strategy_hashes", {})
        for spec in self.config.strategies:
            if spec.label in old_hashes and old_hashes[spec.label] != self.config.strategy_hash(
                spec
            ):
                raise ConfigError(
                    f"strategy {spec.label!r} was run in {self.out} with different "
                    "parameters; give the new entry another label, use another "
                    "output directory (--out) or --overwrite"
                )
        self.strategy_hashes.update(old_hashes)
        from ntkal.experiments.plots import check_records

        try:
            self.records = list(
                check_records(old.get("records", []), str(self.json_path), RECORD_FIELDS[:5])
            )
        except ValueError as err:
            raise ConfigError(f"{err}; use another output directory or --overwrite") from None

    def finished(self, label: str, seed: int) -> set[int]:
        return {r["cycle"] for r in self.records if r["strategy"] == label and r["seed"] == seed}

    def drop_from(self, label: str, seed: int, cycle: int) -> None:
        self.records = [
            r
            for r in self.records
            if not (r["strategy"] == label and r["seed"] == seed and r["cycle"] >= cycle)
        ]

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": RESULTS_FORMAT,
            "version": 1,
            "name": self.config.name,
            "config_hash": self.config.shared_hash(),
            "strategy_hashes": self.strategy_hashes,
            "config": self.config.to_dict(),
            "records": self.records,
        }
        atomic_write_text(self.json_path, json.dumps(doc, indent=1))
        atomic_write_text(self.csv_path, records_to_csv(self.records))


def resolve_device(device: str) -> str:
    """The torch device ``device`` names (``"auto"`` resolved), as a :class:`ConfigError`
    naming the command-line fix when it is not usable here."""
    from ntkal.models.devices import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as err:
        raise ConfigError(f"{err} (on the command line: --device cpu)") from None


def state_path(out: Path, label: str, seed: int) -> Path:
    """``state/<label>-seed<seed>.pt`` of ``out``, the label reduced to safe file-name characters."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return out / "state" / f"{safe}-seed{seed}.pt"


def progress_display(quiet: bool, console):
    """A rich progress display, or a context yielding ``None`` when ``quiet``."""
    if quiet:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def load_run_dataset(config: ExperimentConfig):
    """The config's dataset as every driver runs on it, checked: every pool point needs a label
    (the run simulates the annotator with them) and the test split must not be empty; then
    :meth:`ExperimentConfig.validate_against` (sizes against the pool and the classes)."""
    ds = config.dataset
    dataset = ds.load(seed=0)
    where = ds.path or ds.name
    if dataset.num_unlabelled:
        raise ConfigError(
            f"dataset {where!r} has {dataset.num_unlabelled} unlabelled "
            "training points: `ntkal run` simulates the annotator with the known "
            "labels, so every pool point needs one; label them with `ntkal label`"
        )
    if dataset.num_test == 0:
        raise ConfigError(
            f"dataset {where!r} has no labelled test points to score "
            "on; add x_test/y_test or set dataset.test_fraction > 0"
        )
    config.validate_against(dataset.num_train, dataset.num_classes)
    return dataset
