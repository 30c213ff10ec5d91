"""``ntkal run`` on a user's .npz, CSV and image folder, and on a user's model factory."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from ntkal.cli import app
from ntkal.experiments import ConfigError, parse_config
from ntkal.models import ModelFactoryError, build_from_factory

runner = CliRunner()

BASE = {
    "name": "files",
    "model": {"name": "mlp", "width": 8},
    "trainer": {"epochs": 2, "batch_size": 16, "lr": 0.05},
    "strategies": ["random", "entropy"],
    "initial_size": 4,
    "budget": 3,
    "cycles": 1,
    "seeds": [0],
    "threads": 1,
}


def _blobs(n=60, k=2, d=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return rng.normal(size=(n, d)) + 3 * y[:, None], y


def _run(tmp_path, dataset, out="out", **changes):
    cfg = dict(BASE, dataset=dataset, **changes)
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / out
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    return result, out


def _records(out):
    return json.loads((out / "results.json").read_text())["records"]


def test_run_on_npz(tmp_path):
    x, y = _blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:20], y_test=y[:20])
    result, out = _run(tmp_path, {"path": str(tmp_path / "d.npz")})
    assert result.exit_code == 0, result.output
    recs = _records(out)
    assert len(recs) == 4 and all(0.0 <= r["accuracy"] <= 1.0 for r in recs)
    assert {r["labelled"] for r in recs} == {4, 7}


def test_run_on_csv(tmp_path):
    x, y = _blobs()
    lines = ["f1,f2,f3,species"] + [
        f"{a:.4f},{b:.4f},{c:.4f},{['ant', 'bee'][t]}" for (a, b, c), t in zip(x, y)
    ]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    result, out = _run(
        tmp_path,
        {"path": str(tmp_path / "t.csv"), "label_column": "species", "test_fraction": 0.25},
    )
    assert result.exit_code == 0, result.output
    assert len(_records(out)) == 4


def test_run_on_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("dark", 40), ("light", 210)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(15):
            arr = np.clip(level + rng.normal(0, 20, size=(9, 7)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
    result, out = _run(
        tmp_path,
        {"path": str(tmp_path / "imgs"), "image_size": [6, 6]},
        model={"name": "cnn", "width": 4},
    )
    assert result.exit_code == 0, result.output
    assert len(_records(out)) == 4


def test_run_refuses_unlabelled_points_and_no_test_set(tmp_path):
    x, y = _blobs()
    y = y.copy()
    y[:5] = -1
    np.savez(tmp_path / "u.npz", x=x, y=y, x_test=x[:10], y_test=_blobs()[1][:10])
    result, _ = _run(tmp_path, {"path": str(tmp_path / "u.npz")})
    assert result.exit_code == 2 and "5 unlabelled training points" in result.output
    assert "ntkal label" in result.output and "Traceback" not in result.output
    np.savez(tmp_path / "n.npz", x=x, y=_blobs()[1])
    result, _ = _run(tmp_path, {"path": str(tmp_path / "n.npz"), "test_fraction": 0.0}, out="o2")
    assert result.exit_code == 2 and "no labelled test points" in result.output


def test_dataset_config_file_keys(tmp_path):
    raw = dict(BASE, dataset={"path": "imgs/", "image_size": 28, "classes": ["a", "b"]})
    cfg = parse_config(raw)
    assert cfg.dataset.name == "imgs" and cfg.dataset.image_size == (28, 28)
    with pytest.raises(
        ConfigError, match=r"label_column apply to a user's files; give dataset.path"
    ):
        parse_config(dict(BASE, dataset={"name": "digits", "label_column": "y"}))
    with pytest.raises(ConfigError, match=r"dataset.normalise must be one of standard, none"):
        parse_config(dict(BASE, dataset={"path": "a.csv", "normalise": "minmax"}))


# ----------------------------------------------------------------------------- model factories
FACTORIES = textwrap.dedent("""
    import torch
    from torch import nn

    def good(in_shape, num_classes, hidden=5):
        d = 1
        for s in in_shape:
            d *= s
        return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def no_shape_args(hidden=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(3, hidden), nn.Linear(hidden, 2))

    def wrong_width(in_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(3, num_classes + 1))

    def not_a_module(in_shape, num_classes):
        return "a string"

    def explodes(in_shape, num_classes):
        raise RuntimeError("boom")
""")


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_nets"
    import sys

    sys.modules.pop("user_nets", None)


def test_factory_builds_checked_model(factory_module):
    model = build_from_factory(f"{factory_module}:good", (3,), 2, {"hidden": 7})
    assert model[1].out_features == 7 and model(torch.zeros(4, 3)).shape == (4, 2)
    assert build_from_factory(f"{factory_module}:no_shape_args", (3,), 2)(
        torch.zeros(1, 3)
    ).shape == (1, 2)


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            "user_nets:wrong_width",
            r"must return logits of shape \(n, num_classes\) = \(2, 2\).*\(2, 3\)",
        ),
        ("user_nets:not_a_module", r"returned str, not a torch.nn.Module"),
        ("user_nets:explodes", r"failed: RuntimeError: boom"),
        ("user_nets:missing", r"has no attribute 'missing'"),
        ("no_such_module_xyz:f", r"cannot import module 'no_such_module_xyz'"),
        ("user_nets.good", r"must look like 'package.module:function'"),
    ],
)
def test_factory_errors_name_the_factory(factory_module, spec, match):
    with pytest.raises(ModelFactoryError, match=match):
        build_from_factory(spec, (3,), 2)


def test_run_with_a_factory_model(tmp_path, factory_module):
    x, y = _blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:20], y_test=y[:20])
    result, out = _run(
        tmp_path,
        {"path": str(tmp_path / "d.npz")},
        model={"factory": "user_nets:good", "kwargs": {"hidden": 6}},
    )
    assert result.exit_code == 0, result.output
    assert len(_records(out)) == 4
    result, _ = _run(
        tmp_path,
        {"path": str(tmp_path / "d.npz")},
        out="out2",
        model={"factory": "user_nets:wrong_width"},
    )
    assert result.exit_code == 2 and "must return logits" in result.output
    with pytest.raises(ConfigError, match="width apply to the built-in models"):
        parse_config(dict(BASE, dataset="digits", model={"factory": "user_nets:good", "width": 3}))
