"""The ``ntkal`` command line, through typer's test runner."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from ntkal import __version__
from ntkal.cli import app

runner = CliRunner()

TINY = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "train_size": 100, "test_size": 40},
    "model": {"name": "mlp", "width": 16},
    "trainer": {"epochs": 2, "batch_size": 16, "lr": 0.05},
    "strategies": ["random", "entropy"],
    "initial_size": 8,
    "budget": 4,
    "cycles": 1,
    "seeds": [0],
    "threads": 1,
}


def _write(tmp_path, raw, name="tiny.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_strategies_and_datasets_tables():
    result = runner.invoke(app, ["strategies"])
    assert result.exit_code == 0
    for name in ("mlmoc", "random", "badge", "bald"):
        assert name in result.output
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0 and "digits" in result.output


def test_run_then_plot(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", str(_write(tmp_path, TINY)), "--out", str(out), "--quiet", "--seeds", "0,1"]
    )
    assert result.exit_code == 0, result.output
    assert "Normalised area under the learning curve" in result.output
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == 2 * 2 * 2 and {r["seed"] for r in records} == {0, 1}
    assert (out / "learning_curves.png").exists()
    png = tmp_path / "again.png"
    result = runner.invoke(app, ["plot", str(out / "results.json"), "--out", str(png)])
    assert result.exit_code == 0 and png.stat().st_size > 0


def test_bad_config_exits_2_with_one_line(tmp_path):
    bad = dict(TINY, strategies=["random", "oracle_magic"])
    result = runner.invoke(app, ["run", str(_write(tmp_path, bad)), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown strategy 'oracle_magic'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["run", str(_write(tmp_path, TINY)), "--seeds", "a,b"])
    assert result.exit_code == 2 and "--seeds" in result.output
    result = runner.invoke(app, ["plot", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_missing_dataset_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKAL_DATA", str(tmp_path / "empty"))
    raw = dict(TINY, dataset={"name": "cifar10"})
    result = runner.invoke(app, ["run", str(_write(tmp_path, raw)), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "NTKAL_DATA" in result.output


def test_data_root_flag_is_where_the_dataset_is_looked_for(tmp_path):
    raw = dict(TINY, dataset={"name": "cifar10"})
    where = tmp_path / "my_cifar"
    where.mkdir()
    result = runner.invoke(
        app,
        [
            "run",
            str(_write(tmp_path, raw)),
            "--out",
            str(tmp_path / "o"),
            "--data-root",
            str(where),
        ],
    )
    assert result.exit_code == 2
    assert str(where) in result.output.replace("\n", "")
