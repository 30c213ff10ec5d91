"""Label Studio's JSON export format to and from a label store, and the two CLI commands."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ntkal.cli import app
from ntkal.labelstore import LabelStore
from ntkal.labelstudio import export_store, import_store
from ntkal.labelstudio.exchange import (
    INDEX_FIELD,
    default_config,
    export_tasks,
    import_tasks,
    read_export,
    task_label,
)
from ntkal.labelstudio.protocol import ProtocolError

CLASSES = ("cat", "dog", "bird")


def _ann(choice, when, aid=1, cancelled=False, name="label"):
    return {
        "id": aid,
        "was_cancelled": cancelled,
        "updated_at": when,
        "result": [
            {
                "from_name": name,
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [choice]},
            }
        ],
    }


def _store(path, labels, pool=10):
    store = LabelStore(str(path), pool_size=pool, num_classes=3)
    for i, y in labels:
        store.add([i], [y], annotator=f"who{i}")
    return store


def test_round_trip_through_a_file(tmp_path):
    src = _store(tmp_path / "a.sqlite", [(7, 2), (0, 1), (3, 0)])
    out = tmp_path / "ls.json"
    assert export_store(src, CLASSES, out) == 3
    tasks = json.loads(out.read_text())
    assert [t["data"][INDEX_FIELD] for t in tasks] == [7, 0, 3]  # order recorded
    assert tasks[0]["annotations"][0]["result"][0]["value"] == {"choices": ["bird"]}
    assert tasks[0]["annotations"][0]["completed_by"] == "who7"
    dst = LabelStore(str(tmp_path / "b.sqlite"), pool_size=10, num_classes=3)
    assert import_store(dst, CLASSES, out) == {"added": 3, "skipped": 0}
    assert sorted(zip(*[a.tolist() for a in dst.labelled()])) == [(0, 1), (3, 0), (7, 2)]
    assert import_store(dst, CLASSES, out) == {"added": 0, "skipped": 3}  # idempotent


def test_task_ids_and_extra_data():
    recs = [{"index": 1, "label": 0, "annotator": None, "created": 0.0}]
    [task] = export_tasks(
        recs,
        default_config(CLASSES),
        task_ids=[50, 51, 52],
        data=lambda i: {"image": f"/data/upload/1/{i}.png"},
    )
    assert task["id"] == 51 and task["data"] == {"image": "/data/upload/1/1.png", INDEX_FIELD: 1}
    assert task["annotations"][0]["created_at"] == "1970-01-01T00:00:00Z"
    with pytest.raises(ProtocolError, match="label 5 of item 1"):
        export_tasks([dict(recs[0], label=5)], default_config(CLASSES))


def test_latest_non_cancelled_annotation_wins():
    cfg = default_config(CLASSES)
    task = {
        "id": 1,
        "annotations": [
            _ann("dog", "2024-01-02", 2),
            _ann("cat", "2024-01-01", 1),
            _ann("bird", "2024-01-03", 3, cancelled=True),
        ],
    }
    assert task_label(task, cfg) == 1
    assert task_label({"id": 2, "annotations": []}, cfg) is None


def test_import_errors_name_the_task():
    cfg = default_config(CLASSES)
    with pytest.raises(ProtocolError, match="list of tasks"):
        import_tasks({"tasks": []}, cfg)
    with pytest.raises(ProtocolError, match=f"task 4 has no data.{INDEX_FIELD}"):
        import_tasks([{"id": 4, "data": {}, "annotations": [_ann("cat", "a")]}], cfg)
    both = [{"id": i, "data": {INDEX_FIELD: 2}, "annotations": [_ann("cat", "a")]} for i in (5, 6)]
    with pytest.raises(ProtocolError, match="tasks 5 and 6 are both item 2"):
        import_tasks(both, cfg)
    with pytest.raises(ProtocolError, match="task 8: unknown class 'fish'"):
        import_tasks([{"id": 8, "data": {INDEX_FIELD: 0}, "annotations": [_ann("fish", "a")]}], cfg)
    # tasks nobody labelled are skipped, and a mapping may skip tasks outside the pool
    assert import_tasks([{"id": 9, "annotations": []}], cfg) == ([], [])
    tasks = [
        {"id": 10, "annotations": [_ann("dog", "a")]},
        {"id": 11, "annotations": [_ann("cat", "a")]},
    ]
    assert import_tasks(tasks, cfg, index_of=lambda t: {10: 4}.get(t["id"])) == ([4], [1])


def test_import_reads_the_control_name_from_the_file(tmp_path):
    path = tmp_path / "e.json"
    path.write_text(
        json.dumps(
            [{"id": 1, "data": {INDEX_FIELD: 3}, "annotations": [_ann("dog", "a", name="species")]}]
        )
    )
    store = LabelStore(":memory:", pool_size=5, num_classes=3)
    assert import_store(store, CLASSES, path)["added"] == 1 and store.label_of(3) == 1


def test_conflicting_import_adds_nothing(tmp_path):
    store = _store(tmp_path / "a.sqlite", [(1, 0)])
    path = tmp_path / "e.json"
    path.write_text(
        json.dumps(
            [
                {"id": 1, "data": {INDEX_FIELD: 2}, "annotations": [_ann("dog", "a")]},
                {"id": 2, "data": {INDEX_FIELD: 1}, "annotations": [_ann("bird", "a")]},
            ]
        )
    )
    with pytest.raises(ValueError, match="already labelled"):
        import_store(store, CLASSES, path)
    assert store.labelled()[0].tolist() == [1]


def test_read_export_errors(tmp_path):
    with pytest.raises(ProtocolError, match="cannot read"):
        read_export(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ProtocolError, match="not a JSON file"):
        read_export(bad)
    bad.write_text("{}")
    with pytest.raises(ProtocolError, match="list of tasks"):
        read_export(bad)


def test_cli_export_then_import(tmp_path):
    _store(tmp_path / "a.sqlite", [(2, 1), (4, 2)]).close()
    runner = CliRunner()
    out = tmp_path / "ls.json"
    r = runner.invoke(
        app,
        ["labelstudio-export", str(tmp_path / "a.sqlite"), str(out), "--classes", "cat,dog,bird"],
    )
    assert r.exit_code == 0, r.output
    assert "wrote 2 labelled tasks" in r.output
    assert json.loads(out.read_text())[0]["annotations"][0]["result"][0]["value"] == {
        "choices": ["dog"]
    }
    new = tmp_path / "b.sqlite"
    r = runner.invoke(
        app,
        [
            "labelstudio-import",
            str(out),
            str(new),
            "--classes",
            "cat,dog,bird",
            "--pool-size",
            "10",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "imported 2 labels" in r.output
    with LabelStore(str(new)) as s:
        assert sorted(zip(*[a.tolist() for a in s.labelled()])) == [(2, 1), (4, 2)]
    r = runner.invoke(app, ["labelstudio-import", str(out), str(tmp_path / "c.sqlite")])
    assert r.exit_code == 2 and "--pool-size" in r.output
    r = runner.invoke(
        app, ["labelstudio-export", str(tmp_path / "a.sqlite"), str(out), "--classes", "cat,dog"]
    )
    assert r.exit_code == 2 and "3 classes" in r.output


def test_cli_export_of_a_backend_store_uses_the_task_ids(tmp_path):
    _store(tmp_path / "a.sqlite", [(1, 0)]).close()
    (tmp_path / "a.sqlite.tasks.json").write_text(
        json.dumps({"project": 1, "task_ids": [30, 31, 32]})
    )
    out = tmp_path / "ls.json"
    r = CliRunner().invoke(app, ["labelstudio-export", str(tmp_path / "a.sqlite"), str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())[0]["id"] == 31
