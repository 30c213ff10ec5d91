"""Bad config and results files: each fails with a message naming the file, key or record."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

from ntkal.cli import app
from ntkal.experiments.config import MAX_CONFIG_BYTES, ConfigError, load_config, parse_config
from ntkal.experiments.plots import auc_table, load_records
from ntkal.experiments.runner import run_experiment

RAW = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "train_size": 100, "test_size": 40},
    "model": {"name": "mlp", "width": 8},
    "trainer": {"epochs": 1, "batch_size": 16},
    "strategies": ["random"],
    "initial_size": 8,
    "budget": 4,
    "cycles": 1,
    "seeds": [0],
    "threads": 1,
}


def _write(tmp_path, text, name="c.yml"):
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_stratified_initial_must_be_a_real_boolean(value):
    with pytest.raises(ConfigError, match="stratified_initial must be true or false"):
        parse_config({**RAW, "stratified_initial": value})
    assert parse_config({**RAW, "stratified_initial": False}).stratified_initial is False


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 9)
    ]
    body = yaml.safe_dump({**RAW, "strategies": [{"name": "bald", "params": {}}]})
    text = "\n".join(lines) + "\n" + body.replace("params: {}", "params: {num_samples: *a8}")
    assert len(text) < 2048
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"c.yml: line 2: YAML aliases \(\*a0\) are not allowed"):
        load_config(_write(tmp_path, text))
    assert time.perf_counter() - start < 5  # refused, not expanded (it used to take minutes)


def test_oversized_and_binary_configs_name_the_file(tmp_path):
    big = _write(tmp_path, "# " + "x" * MAX_CONFIG_BYTES + "\n", "big.yml")
    with pytest.raises(ConfigError, match=r"big.yml is \d+ bytes, more than"):
        load_config(big)
    binary = _write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "image.yml")
    with pytest.raises(ConfigError, match=r"image.yml is not UTF-8 text \(byte \d+\)"):
        load_config(binary)


@pytest.mark.parametrize(
    "params, match",
    [
        (
            {"kernel": "bogus"},
            r"strategy 'mlmoc': params.kernel must be one of .*'pseudo', 'trace'",
        ),
        (
            {"implementation": "fast"},
            r"strategy 'mlmoc': params.implementation must be one of .*'auto'",
        ),
    ],
)
def test_bad_strategy_parameters_fail_at_parse_time(params, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({**RAW, "strategies": [{"name": "mlmoc", "params": params}]})


@pytest.mark.parametrize(
    "name, params, match",
    [
        (
            "batchbald",
            {"max_configurations": "many"},
            r"'batchbald': max_configurations must be a "
            r"positive integer, got 'many'",
        ),
        ("ll4al", {"hidden": "wide"}, r"'ll4al': hidden must be a positive integer, got 'wide'"),
        ("ll4al", {"margin": "one"}, r"'ll4al': margin must be a finite number"),
        ("ll4al", {"feature_layers": "layer1"}, r"'ll4al': feature_layers must be a list"),
    ],
)
def test_strategy_parameter_types_are_named(name, params, match):
    raw = {
        **RAW,
        "model": {"name": "mlp", "width": 8, "dropout": 0.2},
        "strategies": [{"name": name, "params": params}],
    }
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_results_that_are_not_json_text_name_the_file(tmp_path):
    binary = _write(tmp_path, b"\x00\xff\xfe results", "results.json")
    with pytest.raises(ValueError, match=r"results file .*results.json is not UTF-8 text"):
        load_records(binary)
    cli = CliRunner().invoke(app, ["plot", str(binary)])
    assert cli.exit_code != 0 and "results.json is not UTF-8 text" in cli.output
    cfg = parse_config(RAW)
    with pytest.raises(ConfigError, match=r"results.json exists but cannot be read"):
        run_experiment(cfg, tmp_path, quiet=True)


def _results_doc(records):
    return {"format": "ntkal.results", "records": records}


def test_records_missing_fields_name_the_record_and_field(tmp_path):
    good = {"strategy": "random", "seed": 0, "cycle": 0, "labelled": 8, "accuracy": 0.5}
    broken = {"strategy": "random", "cycle": 1, "labelled": 12, "accuracy": 0.6}
    path = _write(tmp_path, json.dumps(_results_doc([good, broken])), "results.json")
    match = r"results.json: record 1 \(strategy='random', cycle=1\) lacks field\(s\) 'seed'"
    with pytest.raises(ValueError, match=match):
        load_records(path)
    with pytest.raises(
        ValueError, match=r"records: record 0 \(strategy='a', seed=0\) lacks field\(s\) 'accuracy'"
    ):
        auc_table([{"strategy": "a", "seed": 0, "labelled": 1}])
    cli = CliRunner().invoke(app, ["plot", str(path)])
    assert cli.exit_code != 0 and "lacks field(s) 'seed'" in cli.output
    with pytest.raises(ValueError, match=r"record 0 is a list, not a mapping"):
        load_records(_write(tmp_path, json.dumps(_results_doc([[1, 2]])), "r2.json"))


def test_resuming_from_records_missing_fields_is_a_clear_error(tmp_path):
    cfg = parse_config(RAW)
    run_experiment(cfg, tmp_path, quiet=True)
    doc = json.loads((tmp_path / "results.json").read_text())
    del doc["records"][0]["seed"]
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(
        ConfigError,
        match=r"record 0 \(strategy='random', cycle=0\) lacks "
        r"field\(s\) 'seed'; use another output directory",
    ):
        run_experiment(cfg, tmp_path, quiet=True)
