"""The strategy suite's bookkeeping (benchmarks/al_suite.py): configs, statistics, plan, smoke run."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "al_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("al_suite", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(cells: dict) -> dict:
    """cells[cell][strategy] = (seeds x steps) accuracies -> runner-style records."""
    out = {}
    for cell, by in cells.items():
        recs = []
        for name, acc in by.items():
            for seed, row in enumerate(acc):
                for c, a in enumerate(row):
                    recs.append(
                        {
                            "strategy": name,
                            "seed": seed,
                            "cycle": c,
                            "labelled": 10 * (c + 1),
                            "accuracy": float(a),
                            "train_seconds": 0.1,
                            "query_seconds": None if c == len(row) - 1 else 0.5 + c,
                        }
                    )
        out[cell] = recs
    return out


def _toy(seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.6, size=(5, 3)).cumsum(axis=1) / 3

    def noise():
        return rng.normal(scale=0.002, size=(5, 3))

    good = base + 0.05 + noise()
    return {"random": base, "good": good, "bad": base - 0.05 + noise(), "twin": good + noise()}


def test_counts_penalty_matrix_and_query_time_from_records(suite):
    cells = _records({"a": _toy(0), "b": {**_toy(1), "late": _toy(1)["random"] + 0.01}})
    s = suite.analyse_cells(cells)
    assert s["num_cells"] == 2
    assert s["below_random_cells"]["bad"] == 2 and s["below_random_cells"]["good"] == 0
    assert s["above_random_cells"]["good"] == 2
    assert "bad" not in s["never_below_random"] and {"good", "random"} <= set(
        s["never_below_random"]
    )
    assert s["cells_run"]["late"] == 1 and s["cells_run"]["good"] == 2
    i = {n: k for k, n in enumerate(s["strategies"])}
    pm = np.array(s["penalty_matrix"])
    # good beats bad at both budget steps after the initial one in both cells: 1 per cell
    assert pm[i["good"], i["bad"]] == pytest.approx(2.0)
    assert pm[i["bad"], i["good"]] == 0.0
    assert pm[i["late"], i["random"]] == pytest.approx(1.0)  # only cell b has it
    # query rounds: 0.5 and 1.5 s per seed (the last cycle is not queried)
    assert s["query_seconds"]["good"] == pytest.approx(1.0)
    # AUC as the trapezoid over labelled counts 10, 20, 30 divided by the range
    acc = _toy(0)["twin"]
    auc = ((acc[:, 0] + acc[:, 1]) / 2 + (acc[:, 1] + acc[:, 2]) / 2) * 10 / 20
    assert s["cells"]["a"]["strategies"]["twin"]["auc_mean"] == pytest.approx(auc.mean())
    assert s["cells"]["a"]["best"] in ("good", "twin")
    assert all(s["cells"]["a"]["strategies"][n]["within_noise_of_best"] for n in ("good", "twin"))
    assert s["cells"]["a"]["strategies"]["bad"]["within_noise_of_best"] is False


def test_one_seed_is_never_significant(suite):
    one = {n: acc[:1] for n, acc in _toy(0).items()}
    s = suite.analyse_cells(_records({"a": one}))
    assert s["below_random_cells"]["bad"] == 0 and s["above_random_cells"]["good"] == 0
    assert not np.array(s["penalty_matrix"]).any()
    assert all(e["within_noise_of_best"] for e in s["cells"]["a"]["strategies"].values())


def test_markdown_and_readme_section_carry_the_columns(suite):
    s = suite.analyse_cells(_records({"a": _toy(0), "b": _toy(1)}))
    md = suite._markdown(s)
    assert "| ↓ random | s/query |" in md and "| bad |" in md
    row = next(line for line in md.splitlines() if line.startswith("| bad |"))
    assert row.endswith("| 2/2 | 1.00 |")
    readme = suite.readme_section(s)
    row = next(line for line in readme.splitlines() if line.startswith("| bad |"))
    assert "| 0/2 | 2/2 |" in row  # above random 0 of 2, below random 2 of 2
    assert "`good`" in readme and "`bad`" not in readme.split("Never")[1].split("\n")[0]


def test_unregistered_lines_are_skipped_with_a_warning(suite):
    lines = ["random", "epig", {"name": "mlmoc", "label": "mlmoc_seq", "mode": "sequential"}]
    with pytest.warns(UserWarning, match="'epig'"):
        kept = suite.registered_lines(lines, registered={"random", "mlmoc"})
    assert kept == ["random", lines[2]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert suite.registered_lines(["random"], registered={"random"}) == ["random"]


def test_suite_configs_are_valid_and_regimes_scale_with_classes(suite):
    from ntkal.experiments import parse_config

    cfgs = suite.suite_configs()
    assert len(cfgs) == 3 * len(suite.DATASETS) >= 24
    for name, cfg in cfgs.items():
        k = suite.DATASETS[name.rsplit("_", 1)[0]][2]
        assert cfg["initial_size"] % k == 0 and len(cfg["seeds"]) >= 5
        if name.endswith("_low"):
            assert 1 <= cfg["initial_size"] / k <= 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parse_config({**cfg, "strategies": suite.registered_lines(cfg["strategies"])})
    labels = [suite.line_label(s) for s in suite.STRATEGIES]
    assert len(labels) == len(set(labels))
    assert {"epig", "ntk_epig_greedy", "ntk_bald", "maxherding", "uherding", "auto"} <= set(labels)
    assert {"mlmoc", "mlmoc_seq", "mlmoc_greedy", "vr_greedy", "random"} <= set(labels)


def test_estimate_follows_the_cost_model(suite):
    est = suite.estimate({"random": {"step_s": 0.0, "query_s": 1.0}}, overhead_s=0.0)
    expected = sum(
        suite.COST_FACTOR[n.rsplit("_", 1)[0]]
        * c["cycles"]
        * c["subset"]
        / suite.PROBE["subset"]
        * len(c["seeds"])
        for n, c in suite.suite_configs().items()
    )
    assert est["worker_seconds"] == pytest.approx(expected)
    # sequential lines pay per label of the round as well
    seq = suite.estimate({"mlmoc_seq": {"step_s": 0.0, "query_s": 1.0}}, overhead_s=0.0)
    cfg = suite.suite_configs()["digits_high"]
    assert seq["per_cell"]["digits_high"] == pytest.approx(
        cfg["cycles"]
        * cfg["subset"]
        / suite.PROBE["subset"]
        * cfg["budget"]
        / suite.PROBE["budget"]
        * len(cfg["seeds"])
    )


def test_results_of_another_protocol_are_set_aside(suite, tmp_path):
    out = tmp_path / "quick"
    path = suite.effective_config(suite.QUICK, out)
    from ntkal.experiments import load_config

    (out / "results.json").write_text(json.dumps({"config_hash": load_config(path).shared_hash()}))
    assert suite.set_aside_stale(path, out) is False and (out / "results.json").exists()
    (out / "results.json").write_text(json.dumps({"config_hash": "other"}))
    assert suite.set_aside_stale(path, out) is True
    assert not (out / "results.json").exists() and (out / "config.yml").exists()
    assert (tmp_path / "superseded" / "quick" / "results.json").exists()


def test_quick_smoke_run_writes_the_report(suite, tmp_path):
    suite.main(["run", "--quick", "--out", str(tmp_path)])
    for f in (
        "summary.json",
        "summary.md",
        "README_section.md",
        "penalty_matrix.png",
        "learning_curves.png",
        "timings.json",
    ):
        assert (tmp_path / f).is_file(), f
    s = json.loads((tmp_path / "summary.json").read_text())
    assert list(s["cells"]) == ["quick"] and s["cells"]["quick"]["seeds"] == [0, 1]
    assert s["strategies"] == ["random", "margin"]
    assert s["query_seconds"]["margin"] > 0
    assert s["cells"]["quick"]["labelled"] == [10, 20, 30]
    # resumable: a second run adds nothing and keeps the records
    before = json.loads((tmp_path / "quick" / "results.json").read_text())["records"]
    suite.run(1, [], None, tmp_path, quick=True)
    assert json.loads((tmp_path / "quick" / "results.json").read_text())["records"] == before
