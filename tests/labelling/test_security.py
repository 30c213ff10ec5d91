"""What another web site, a rebinding name, a hostile body or a second server can do: nothing.

Each case is the request an attacker (or a careless script) sends, and the test asserts both the
answer (4xx with a one-line message, never a traceback) and that nothing was stored.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from ntkal.data.dataset import Dataset
from ntkal.labelling import LabellingSession
from ntkal.labelling.security import MAX_DEPTH, host_name
from ntkal.labelling.server import create_app
from ntkal.labelstore import LabelStore, LabelStoreError, claim_store
from ntkal.models import build_model
from ntkal.training import TrainConfig

QUICK = TrainConfig(epochs=2, batch_size=32, schedule="constant", loss="mse", seed=0)
BASE = "http://127.0.0.1:8765"


def _dataset(classes=("1", "2", "3"), n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return Dataset(
        "tiny",
        x,
        torch.full((n,), -1, dtype=torch.int64),
        x[:6].clone(),
        torch.arange(6) % len(classes),
        tuple(classes),
    )


def _app(tmp_path, store=None, **kwargs):
    data = _dataset()
    torch.manual_seed(0)
    model = build_model("mlp", data.in_shape, data.num_classes, width=8)
    session = LabellingSession(
        data,
        store if store is not None else str(tmp_path / "l.sqlite"),
        model,
        train_config=QUICK,
        subset=20,
        warmup=10_000,
    )
    app = create_app(session, **kwargs)
    return app, session


@pytest.fixture
def served(tmp_path):
    app, session = _app(tmp_path)
    client = TestClient(app, base_url=BASE, headers={"X-Ntkal-Csrf": app.state.csrf})
    return client, session, app.state.csrf


def test_cross_origin_writes_are_refused_and_store_nothing(served):
    client, session, _csrf = served
    # <form enctype="text/plain" action="http://127.0.0.1:8765/api/labels"> on another site
    form = client.post(
        "/api/labels",
        content=b'{"index":1,"label":2}',
        headers={"Origin": "http://evil.example", "Content-Type": "text/plain", "X-Ntkal-Csrf": ""},
    )
    assert form.status_code == 403 and "cross-origin" in form.json()["detail"]
    # the same with a correct-looking JSON type and even the token (a page cannot, but say it did)
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        res = client.post("/api/labels", json={"index": 1, "label": 2}, headers={"Origin": origin})
        assert res.status_code == 403, origin
    res = client.post(
        "/api/labels", json={"index": 1, "label": 2}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert res.status_code == 403
    assert len(session.store) == 0
    # a no-cors fetch to /api/undo from another site removes nobody's label
    assert client.post("/api/labels", json={"index": 3, "label": 0}).status_code == 200
    undo = client.post(
        "/api/undo",
        content=b"{}",
        headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
    )
    assert undo.status_code == 403 and len(session.store) == 1
    # and a same-origin write from the page itself goes through
    ok = client.post(
        "/api/labels",
        json={"index": 4, "label": 1},
        headers={"Origin": BASE, "Sec-Fetch-Site": "same-origin"},
    )
    assert ok.status_code == 200 and len(session.store) == 2


def test_writes_need_json_and_the_csrf_header(served):
    client, session, csrf = served
    plain = client.post(
        "/api/labels", content=b'{"index":1,"label":2}', headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415 and "application/json" in plain.json()["detail"]
    csv_import = client.post(
        "/api/import", content=b"index,label\n1,2\n", headers={"Content-Type": "text/csv"}
    )
    assert csv_import.status_code == 415
    for header in ("", "wrong-token"):
        res = client.post(
            "/api/labels", json={"index": 1, "label": 2}, headers={"X-Ntkal-Csrf": header}
        )
        assert res.status_code == 403 and "X-Ntkal-Csrf" in res.json()["detail"]
    assert len(session.store) == 0
    page = client.get("/").text
    assert csrf in page and "__NTKAL_CSRF__" not in page  # the page carries its token
    assert client.get("/api/session").json()["csrf"] == csrf


def test_a_foreign_host_is_refused_everywhere(served):
    client, _session, _ = served
    client.post("/api/labels", json={"index": 1, "label": 2})
    for path in ("/api/export?format=csv", "/", "/api/stats", "/api/session"):
        res = client.get(path, headers={"Host": "evil.example:8765"})
        assert res.status_code == 421 and "evil.example" in res.json()["detail"], path
    for host in ("localhost:8765", "[::1]:8765", "127.0.0.1"):
        assert client.get("/api/stats", headers={"Host": host}).status_code == 200, host


def test_remote_hosts_only_with_allow_remote(tmp_path):
    app, _ = _app(tmp_path, host="0.0.0.0", allow_remote=True, token="long-enough-token")
    client = TestClient(app, base_url="http://192.168.1.5:8765")
    assert (
        client.get("/api/stats", headers={"X-Ntkal-Token": "long-enough-token"}).status_code == 200
    )
    assert client.get("/api/stats").status_code == 401
    local, _ = _app(tmp_path, store=":memory:")
    assert (
        TestClient(local, base_url="http://192.168.1.5:8765").get("/api/stats").status_code == 421
    )
    assert host_name("[::1]:80") == "::1" and host_name("LocalHost:1") == "localhost"


def test_body_size_and_nesting_caps(served):
    client, _session, _ = served
    big = b'{"index": 1, "label": 2, "pad": "' + b"x" * (10 << 20) + b'"}'
    res = client.post("/api/labels", content=big, headers={"Content-Type": "application/json"})
    assert res.status_code == 413 and "larger than 1 MiB" in res.json()["detail"]
    for depth in (MAX_DEPTH + 1, 100_000):  # the second overflowed json's recursion before
        body = b'{"index": 1, "label": ' + b"[" * depth + b"]" * depth + b"}"
        res = client.post("/api/labels", content=body, headers={"Content-Type": "application/json"})
        assert res.status_code == 400 and "nested" in res.json()["detail"], depth
    # an import may be larger than a label (up to 16 MiB)
    rows = [{"index": i, "label": i % 3} for i in range(30)]
    res = client.post("/api/import", json={"labels": rows, "pad": "x" * (2 << 20)})
    assert res.status_code == 200 and res.json()["added"] == 30


@pytest.mark.parametrize(
    "body, match",
    [
        (b'{"index": 1, "label": Infinity}', "Infinity"),
        (b'{"index": 1, "label": NaN}', "NaN"),
        (b'{"index": 1e400, "label": 1}', "whole number"),
        (b'{"index": 614.7, "label": 1}', "whole number"),
        (b'{"index": 1.0, "label": 1}', "whole number"),
        (b'{"index": true, "label": 1}', "whole number"),
        (b'{"index": "\xd9\xa3", "label": 1}', "whole number"),
        (b'{"index": 1, "label": 2.9}', "class name or a class index"),
        (b'{"index": 1, "label": false}', "class name or a class index"),
        (b'{"index": 1, "label": "\xd9\xa3"}', "unknown class"),
        (b'{"index": 1, "label": null}', "class name or a class index"),
        (b'{"index": 1, "label": [1]}', "class name or a class index"),
        (b'{"index": 1, "label": 1, "client": 5}', "client must be a string"),
        (b'{"index": ' + b"9" * 5000 + b', "label": 1}', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
    ],
)
def test_bad_values_are_4xx_with_a_message_and_store_nothing(served, body, match):
    client, session, _ = served
    res = client.post("/api/labels", content=body, headers={"Content-Type": "application/json"})
    assert res.status_code == 400 and match in res.json()["detail"]
    assert "Traceback" not in res.text and len(session.store) == 0


@pytest.mark.parametrize(
    "payload",
    [{"index": None}, {"index": []}, {"index": "x"}, {"index": 1.5}, {"index": 1, "skip": "yes"}],
)
def test_release_refuses_bad_indices(served, payload):
    client, _, _ = served
    res = client.post("/api/release", json={**payload, "client": "a"})
    assert res.status_code == 400 and res.json()["detail"]


def test_class_names_win_over_indices(served):
    client, session, _ = served
    assert session.classes == ("1", "2", "3")
    client.post("/api/labels", json={"index": 5, "label": "1"})
    client.post("/api/labels", json={"index": 6, "label": 1})
    client.post("/api/labels", json={"index": 7, "label": "0"})  # not a name: index 0
    assert [session.store.label_of(i) for i in (5, 6, 7)] == [0, 1, 0]


def test_csv_export_escapes_formulas(served):
    client, _session, _ = served
    for i, who in enumerate(
        ['=HYPERLINK("http://evil.example","x")', "+1", "-2", "@SUM(A1)", "ana"]
    ):
        assert (
            client.post("/api/labels", json={"index": i, "label": 0, "client": who}).status_code
            == 200
        )
    text = client.get("/api/export?format=csv").text
    cells = [line.split(",")[3] for line in text.splitlines()[1:]]
    assert cells[0].startswith("\"'=HYPERLINK") and cells[1:] == ["'+1", "'-2", "'@SUM(A1)", "ana"]
    doc = client.get("/api/export?format=json").json()  # JSON keeps the exact text
    assert doc["labels"][1]["annotator"] == "+1"


def test_a_locked_store_fails_that_request_quickly_and_only_it(tmp_path):
    path = tmp_path / "l.sqlite"
    data = _dataset()
    store = LabelStore(path, pool_size=data.num_train, num_classes=3, timeout=0.2)
    app, _session = _app(tmp_path, store=store)
    client = TestClient(app, base_url=BASE, headers={"X-Ntkal-Csrf": app.state.csrf})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        res = client.post("/api/labels", json={"index": 1, "label": 2})
        assert res.status_code == 503
        assert "stayed locked by another writer for 0.2 s" in res.json()["detail"]
        assert "x 5 tries" not in res.json()["detail"]
        assert client.get("/api/stats").status_code == 200  # reads go on (WAL)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert client.post("/api/labels", json={"index": 1, "label": 2}).status_code == 200


def test_a_second_server_on_one_store_is_refused(tmp_path):
    from typer.testing import CliRunner

    from ntkal.cli import app

    path = tmp_path / "digits.sqlite"
    with claim_store(path):
        with pytest.raises(LabelStoreError, match="already being served by another ntkal label"):
            claim_store(path)
        res = CliRunner().invoke(app, ["label", "digits", "--store", str(path), "--port", "1"])
        assert res.exit_code == 2 and "already being served" in res.output
    claim_store(path).release()  # released: the next server may start


def test_api_undo_without_a_client_leases_to_nobody(served):
    client, session, _ = served
    client.post("/api/labels", json={"index": 2, "label": 1, "client": "a"})
    res = client.post("/api/undo", json={}).json()
    assert res["undone"]["index"] == 2
    assert session.leases.holder(2) is None and session.leases.held("default") is None
    assert client.post("/api/open", json={"index": 2, "client": "b"}).status_code == 200


def test_unknown_strategy_and_its_options_fail_at_start(tmp_path):
    data = _dataset()
    model = build_model("mlp", data.in_shape, 3, width=8)
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        LabellingSession(data, ":memory:", model, strategy="nope")
    with pytest.raises(TypeError, match=r"unknown .*parameter"):
        LabellingSession(data, ":memory:", model, strategy="vr", strategy_params={"bogus": 1})
    assert json.loads(json.dumps(np.int64(3).item())) == 3


def test_a_slow_import_does_not_stall_other_requests(served, monkeypatch):
    """The import runs in the thread pool: while it is stuck, /api/stats still answers."""
    import threading

    client, session, _ = served
    release, entered = threading.Event(), threading.Event()
    real = session.import_labels

    def slow(indices, labels):
        entered.set()
        release.wait(30)
        return real(indices, labels)

    monkeypatch.setattr(session, "import_labels", slow)
    results = {}
    client.__enter__()  # one event loop for every request, as under uvicorn
    importer = threading.Thread(
        target=lambda: results.setdefault(
            "import", client.post("/api/import", json={"labels": [{"index": 1, "label": 0}]})
        )
    )
    importer.start()
    assert entered.wait(30)
    stats = threading.Thread(target=lambda: results.setdefault("stats", client.get("/api/stats")))
    stats.start()
    stats.join(20)
    answered = not stats.is_alive()
    release.set()
    importer.join(30)
    client.__exit__(None, None, None)
    assert answered and results["stats"].status_code == 200  # answered while the import waited
    assert results["import"].json() == {"added": 1, "skipped": 0}
