"""The JSON API in-process (FastAPI's TestClient): token, binding, labels, export/import, items."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from ntkal.data import load_dataset, read_file_source
from ntkal.labelling import LabellingSession
from ntkal.labelling.server import check_bind, create_app
from ntkal.models import build_model
from ntkal.training import TrainConfig

QUICK = TrainConfig(epochs=10, batch_size=32, schedule="constant", loss="mse", seed=0)


def _client(dataset, tmp_path, token=None, source=None, store="l.sqlite", **kwargs):
    torch.manual_seed(0)
    model = build_model("mlp", dataset.in_shape, dataset.num_classes, width=8)
    session = LabellingSession(
        dataset,
        str(tmp_path / store),
        model,
        train_config=QUICK,
        subset=100,
        source=source,
        use_dataset_labels=source is not None,
        **kwargs,
    )
    app = create_app(session, token=token)
    client = TestClient(
        app, base_url="http://127.0.0.1:8765", headers={"X-Ntkal-Csrf": app.state.csrf}
    )
    return client, session


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=120, test_size=40)


def test_binding_needs_flag_and_token():
    check_bind("127.0.0.1", False, None)
    check_bind("::1", False, None)
    check_bind("localhost", False, None)
    with pytest.raises(ValueError, match=r"refusing to listen on 0.0.0.0"):
        check_bind("0.0.0.0", False, "a-long-token")
    with pytest.raises(ValueError, match="needs --token"):
        check_bind("0.0.0.0", True, None)
    with pytest.raises(ValueError, match="at least 8 characters"):
        check_bind("192.168.1.5", True, "short")
    check_bind("192.168.1.5", True, "a-long-token")


def test_token_is_required_on_every_route(digits, tmp_path):
    client, _ = _client(digits, tmp_path, token="s3cret-token")
    for path in ("/", "/api/stats", "/api/next", "/api/export", "/static/app.js"):
        assert client.get(path).status_code == 401
    assert client.get("/api/stats", headers={"X-Ntkal-Token": "wrong-one"}).status_code == 401
    assert client.get("/api/stats", headers={"X-Ntkal-Token": "s3cret-token"}).status_code == 200
    assert client.get("/api/stats?token=s3cret-token").status_code == 200


def test_label_flow_duplicates_conflicts_undo_and_errors(digits, tmp_path):
    client, session = _client(digits, tmp_path)
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    for text in (
        page.text,
        client.get("/static/app.js").text,
        client.get("/static/style.css").text,
    ):
        assert "http://" not in text and "https://" not in text  # nothing loaded from elsewhere
    assert client.get("/static/../server.py").status_code == 404
    item = client.get("/api/next", params={"client": "t1"}).json()
    assert item["kind"] == "image" and item["prediction"]["class"] in session.classes
    png = client.get(item["image_url"])
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    res = client.post("/api/labels", json={"index": item["index"], "label": 4, "client": "t1"})
    assert res.status_code == 200 and res.json()["duplicate"] is False
    body = res.json()
    assert set(body["latency"]) >= {"store_ms", "condition_ms", "next_ms", "total_ms"}
    assert body["next"]["index"] != item["index"]
    dup = client.post("/api/labels", json={"index": item["index"], "label": "4", "client": "t2"})
    assert dup.status_code == 200 and dup.json()["duplicate"] is True
    clash = client.post("/api/labels", json={"index": item["index"], "label": 5})
    assert clash.status_code == 409 and "already labelled '4'" in clash.json()["detail"]
    for payload, match in [
        ({"index": 0}, "needs"),
        ({"index": 10**6, "label": 1}, "out of range"),
        ({"index": 1, "label": "zebra"}, "unknown class"),
    ]:
        bad = client.post("/api/labels", json=payload)
        assert bad.status_code == 400 and match in bad.json()["detail"]
    assert (
        client.post(
            "/api/labels", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert len(session.store) == 1
    undo = client.post("/api/undo", json={"client": "t1"}).json()
    assert undo["undone"]["index"] == item["index"] and len(session.store) == 0
    assert client.post("/api/undo", json={"client": "t1"}).json()["undone"] is None
    stats = client.get("/api/stats").json()
    assert stats["labelled"] == 0 and stats["latency"]["count"] == 1 and stats["phase"] == "warm-up"


def test_export_import_round_trip(digits, tmp_path):
    client, _session = _client(digits, tmp_path)
    for i, y in [(3, 1), (8, 2), (21, 9)]:
        assert client.post("/api/labels", json={"index": i, "label": y}).status_code == 200
    csv_text = client.get("/api/export", params={"format": "csv"}).text
    assert csv_text.splitlines()[0] == "index,label,class,annotator,created"
    doc = client.get("/api/export", params={"format": "json"}).json()
    assert [(r["index"], r["label"], r["class"]) for r in doc["labels"]] == [
        (3, 1, "1"),
        (8, 2, "2"),
        (21, 9, "9"),
    ]
    assert client.get("/api/export", params={"format": "xml"}).status_code == 400
    other, other_session = _client(digits, tmp_path, store="other.sqlite")
    res = other.post("/api/import", json={"csv": csv_text})
    assert res.json() == {"added": 3, "skipped": 0}
    res = other.post(
        "/api/import", json={"labels": [{"index": 3, "label": 1}, {"index": 4, "class": "7"}]}
    )
    assert res.json() == {"added": 1, "skipped": 1}
    assert other_session.store.label_of(4) == 7
    bad = other.post(
        "/api/import", json={"labels": [{"index": 5, "label": 1}, {"index": 3, "label": 2}]}
    )
    assert bad.status_code == 400 and "already labelled 1" in bad.json()["detail"]
    assert other_session.store.label_of(5) is None
    assert other_session.learner.labelled_indices.size == 4  # the learner follows the store
    assert other.post("/api/import", json={"csv": "index,label\nx,1\n"}).status_code == 400


def test_retrain_endpoint_and_table_items(tmp_path):
    rows = (
        ["a,b,kind"]
        + [f"{i},{(i * 7) % 5},{'yes' if i % 2 else 'no'}" for i in range(30)]
        + [f"{i},{i % 3}," for i in range(30, 40)]
    )
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    source = read_file_source(tmp_path / "t.csv", label_column="kind", test_fraction=0.2)
    client, session = _client(source.dataset, tmp_path, source=source, warmup=10_000)
    stats = client.get("/api/stats").json()
    assert stats["kind"] == "table" and stats["labelled"] == 24  # the file's labelled rows
    item = client.get("/api/next").json()
    assert item["kind"] == "table" and set(item["row"]) == {"a", "b"}
    raw = source.raw_train[item["index"]]
    assert item["row"] == {"a": raw[0], "b": raw[1]}  # values as in the file
    assert client.post("/api/retrain", json={}).status_code == 202
    assert client.post("/api/retrain", json={}).status_code in (409, 202)  # 409 while it runs
    assert session.wait_for_retrain(60)
    stats = client.get("/api/stats").json()
    assert stats["retrain"]["state"] == "done" and stats["curve"][0]["labels"] == 24
    bad = client.get("/api/items/0/image.png")
    assert bad.status_code == 400 and "table rows have no image" in bad.json()["detail"]


def test_cli_label_refuses_remote_bind_and_bad_data(tmp_path):
    from typer.testing import CliRunner

    from ntkal.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["label", "digits", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "refusing to listen on 0.0.0.0" in res.output
    res = runner.invoke(app, ["label", "digits", "--host", "0.0.0.0", "--allow-remote"])
    assert res.exit_code == 2 and "needs --token" in res.output
    res = runner.invoke(app, ["label", "digits", "--strategy", "mlmocc"])
    assert res.exit_code == 2 and "unknown strategy 'mlmocc'" in res.output and "vr" in res.output
    (tmp_path / "bad.csv").write_text("a,label\n1,x\nfoo,y\n")
    res = runner.invoke(
        app, ["label", str(tmp_path / "bad.csv"), "--store", str(tmp_path / "s.sqlite")]
    )
    assert res.exit_code == 2 and "bad.csv, row 2, column 'a'" in res.output
    assert "Traceback" not in res.output


def test_originals_and_exports_map_back_to_the_files(tmp_path):
    import csv
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)  # 400 x 300 photos
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{cls}{i}.png")
    (tmp_path / "imgs" / "loose.png").write_bytes(
        (tmp_path / "imgs" / "cat" / "cat0.png").read_bytes()
    )
    source = read_file_source(tmp_path / "imgs", image_size=[8, 8], test_fraction=0.2)
    client, _session = _client(source.dataset, tmp_path, source=source, warmup=10_000)
    for index, path in enumerate(source.train_files):
        item = client.get(f"/api/items/{index}/original")
        assert item.status_code == 200 and item.content == open(path, "rb").read()
        assert item.headers["content-type"] == "image/png"
    small = Image.open(io.BytesIO(client.get("/api/items/0/image.png").content))
    assert small.size[0] / small.size[1] == 1.0  # the model input is a separate rendering
    assert client.get("/api/items/999/original").status_code == 400
    assert client.get("/api/items/..%2F..%2Fetc%2Fpasswd/original").status_code in (400, 404)
    item = client.get("/api/next").json()
    assert item["origin"]["file"] == "loose.png"  # the only unlabelled image
    client.post("/api/labels", json={"index": item["index"], "label": "cat"})
    rows = list(csv.DictReader(io.StringIO(client.get("/api/export?format=csv").text)))
    assert len(rows) == len(source.train_files)
    for row in rows:  # every exported label names its file, and the file's folder agrees
        folder = os.path.dirname(row["file"])
        assert os.path.exists(tmp_path / "imgs" / row["file"])
        assert folder in ("", row["class"])


def test_table_exports_carry_the_data_row(tmp_path):
    import csv
    import io

    lines = ["a,b,label"] + [
        f"{i},{i * 2}," + ("x" if i % 3 == 0 else "y" if i % 3 == 1 else "") for i in range(40)
    ]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    source = read_file_source(tmp_path / "t.csv", test_fraction=0.25)
    client, _session = _client(source.dataset, tmp_path, source=source, warmup=10_000)
    item = client.get("/api/next").json()
    row_number = item["origin"]["row"]
    assert lines[row_number].split(",")[:2] == [
        str(int(item["row"]["a"])),
        str(int(item["row"]["b"])),
    ]
    client.post("/api/labels", json={"index": item["index"], "label": "x"})
    rows = list(csv.DictReader(io.StringIO(client.get("/api/export?format=csv").text)))
    for row in rows:  # the exported row holds the same features as the pool point
        raw = source.raw_train[int(row["index"])]
        assert lines[int(row["row"])].split(",")[:2] == [str(int(raw[0])), str(int(raw[1]))]
    assert any(int(r["row"]) != int(r["index"]) + 1 for r in rows)  # held-out rows shift it


def test_release_by_api_advances_four_times_in_a_row(digits, tmp_path):
    """The reported sequence: next, release, next ... gave the same item every time."""
    client, _session = _client(digits, tmp_path)
    seen = []
    for _ in range(4):
        item = client.get("/api/next", params={"client": "s"}).json()
        seen.append(item["index"])
        assert client.post("/api/release", json={"index": item["index"], "client": "s"}).json() == {
            "released": True
        }
    assert len(set(seen)) == 4
    assert [r["index"] for r in client.get("/api/skipped").json()] == seen
    back = client.post("/api/open", json={"index": seen[0], "client": "s"}).json()
    assert back["index"] == seen[0] and client.get("/api/next?client=s").json()["index"] == seen[0]
    plain = client.post("/api/release", json={"index": seen[0], "client": "s", "skip": False})
    assert plain.json() == {"released": True}
    assert seen[0] not in [r["index"] for r in client.get("/api/skipped").json()]
