"""The ML backend protocol over HTTP (FastAPI's TestClient: fast, no server, no Label Studio)."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient
from ls_doubles import DIGIT_CONFIG

from ntkal.labelstore import LabelStore
from ntkal.labelstudio.backend import Backend
from ntkal.labelstudio.server import MAX_BODY_BYTES, create_app


@pytest.fixture
def backend(tmp_path, fake_ls):
    b = Backend.from_project(
        fake_ls,
        fake_ls.project_id,
        str(tmp_path / "s.sqlite"),
        warmup=1000,
        epochs=2,
        strategy="vr",
    )
    assert b.wait_scored(60)
    yield b
    b.stop()


def _created(task_id, annotation_id, choice="one", project=3):
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": project},
        "annotation": {
            "id": annotation_id,
            "task": task_id,
            "completed_by": 1,
            "result": [
                {
                    "from_name": "digit",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": [choice]},
                }
            ],
        },
        "task": {"id": task_id},
    }


def test_health_and_setup(backend):
    client = TestClient(create_app(backend))
    for path in ("/health", "/"):
        doc = client.get(path).json()
        assert doc["status"] == "UP" and doc["model_version"] == "ntkal-vr"
    ok = client.post("/setup", json={"project": "3.1700000000", "schema": DIGIT_CONFIG})
    assert ok.status_code == 200 and ok.json() == {"model_version": "ntkal-vr"}
    other = client.post("/setup", json={"project": "4.1700000000"})
    assert other.status_code == 400 and "serves Label Studio project 3" in other.json()["detail"]
    changed = DIGIT_CONFIG.replace('"two"', '"deux"')
    r = client.post("/setup", json={"project": "3.1", "schema": changed})
    assert r.status_code == 400 and "deux" in r.json()["detail"]


def test_webhook_stores_before_answering_and_predict_reflects_it(backend, fake_ls, monkeypatch):
    client = TestClient(create_app(backend))
    add = backend.store.add

    def slow_add(*args, **kwargs):  # a slow disk: the answer must still wait for it
        time.sleep(0.5)
        return add(*args, **kwargs)

    monkeypatch.setattr(backend.store, "add", slow_add)
    tid = fake_ls.tasks[4]["id"]
    r = client.post("/webhook", json=_created(tid, 77, "two"))
    assert r.status_code == 200 and r.json()["stored"] == 1
    with LabelStore(backend.store.path) as other:
        assert other.label_of(4) == 2  # on disk when Label Studio got the answer
    assert backend.wait_scored(60)
    tasks = [{"id": t["id"]} for t in fake_ls.tasks[:6]] + [{"id": 123456}]
    doc = client.post("/predict", json={"tasks": tasks, "project": "3.1"}).json()
    assert doc["model_version"] == "ntkal-vr" and len(doc["results"]) == 7
    first = doc["results"][0]
    assert first["result"][0]["value"]["choices"][0] in ("zero", "one", "two")
    assert 0.0 <= first["score"] <= 1.0
    assert doc["results"][-1] == {"result": [], "score": None, "model_version": "ntkal-vr"}
    by_task = {t["id"]: res["score"] for t, res in zip(tasks, doc["results"])}
    assert by_task[tid] is None  # the labelled task has no acquisition score
    stats = client.get("/ntkal/stats").json()
    assert stats["labelled"] == 1 and stats["events"]["created"] == 1
    # other actions and other projects are acknowledged, not stored
    assert client.post("/webhook", json={"action": "TASKS_CREATED", "tasks": []}).json() == {
        "ignored": "TASKS_CREATED"
    }
    assert "ignored" in client.post("/webhook", json=_created(tid, 78, project=9)).json()
    assert len(backend.store) == 1


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, 400, "nests too deeply|not valid JSON"),
        (
            json.dumps({"action": "ANNOTATION_CREATED", "annotation": {"id": 1}}).encode(),
            400,
            "names no task",
        ),
        (json.dumps(_created(101, 5, "seven")).encode(), 400, "unknown class 'seven'"),
    ],
)
def test_bad_webhooks_get_one_line_400(backend, body, status, message):
    client = TestClient(create_app(backend))
    r = client.post("/webhook", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    detail = r.json()["detail"]
    assert re.search(message, detail) and "\n" not in detail
    assert len(backend.store) == 0


def test_body_cap(backend):
    client = TestClient(create_app(backend))
    r = client.post(
        "/webhook",
        content=b" " * (MAX_BODY_BYTES + 1),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


def test_token_rules(backend):
    client = TestClient(create_app(backend, token="s3cret-token"))
    assert client.get("/health").status_code == 401
    assert client.get("/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        client.get("/health", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    )
    assert client.get("/health", headers={"Authorization": "Token s3cret-token"}).status_code == 200
    assert client.get("/health", headers={"X-Ntkal-Token": "s3cret-token"}).status_code == 200
    basic = base64.b64encode(b"labelstudio:s3cret-token").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.get("/health", headers={"Authorization": "Basic !!"}).status_code == 401
    assert client.post("/webhook", json=_created(101, 1)).status_code == 401
    assert len(backend.store) == 0


def test_unexpected_errors_are_one_json_line(backend, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(backend, "apply", boom)
    client = TestClient(create_app(backend), raise_server_exceptions=False)
    r = client.post("/webhook", json=_created(101, 1))
    assert r.status_code == 500
    assert r.json()["detail"] == "internal error: RuntimeError: disk on fire"


def test_train_starts_a_retrain(backend, fake_ls):
    client = TestClient(create_app(backend))
    client.post("/webhook", json=_created(fake_ls.tasks[0]["id"], 1, "zero"))
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert r.status_code == 201 and r.json() == {"started": True}
    assert backend.session.wait_for_retrain(120)
    assert backend.session.trained


def test_serve_refuses_remote_binding_without_token(backend):
    from ntkal.labelstudio.server import serve

    with pytest.raises(ValueError, match=r"refusing to listen on 0.0.0.0"):
        serve(backend, host="0.0.0.0", port=1)


def test_setup_puts_the_token_on_the_webhook_label_studio_made(backend, fake_ls):
    fake_ls.hooks = [
        {"id": 1, "url": "http://127.0.0.1:9090/webhook", "headers": {}},
        {"id": 2, "url": "http://elsewhere:1/webhook", "headers": {}},
    ]
    client = TestClient(
        create_app(backend, token="s3cret-token", public_url="http://127.0.0.1:9090")
    )
    r = client.post(
        "/setup", json={"project": "3.1"}, headers={"Authorization": "Bearer s3cret-token"}
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 20
    while fake_ls.hooks[0]["headers"] == {}:
        assert time.monotonic() < deadline, "the webhook never got the token"
        time.sleep(0.05)
    assert fake_ls.hooks[0]["headers"] == {"Authorization": "Bearer s3cret-token"}
    assert fake_ls.hooks[1]["headers"] == {}  # not ours: left alone
