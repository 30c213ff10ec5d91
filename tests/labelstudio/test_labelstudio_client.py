"""The Label Studio REST client against a small local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ntkal.labelstudio.client import LabelStudioClient, LabelStudioError, is_personal_access_token

PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0eXAiOiJyZWZyZXNoIn0.c2ln"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else None

    def do_GET(self):
        self.server.seen.append(("GET", self.path, self.headers.get("Authorization")))
        auth = self.headers.get("Authorization")
        if auth not in self.server.valid:
            return self._reply(401, {"detail": "bad token"})
        if self.path.startswith("/api/projects/5/"):
            return self._reply(200, {"id": 5, "label_config": "<View/>"})
        self._reply(404, {"detail": "no such thing"})

    def do_POST(self):
        body = self._body()
        self.server.seen.append(("POST", self.path, self.headers.get("Authorization")))
        if self.path == "/api/token/refresh":
            self.server.refreshes += 1
            access = f"access{self.server.refreshes}"
            self.server.valid = {f"Bearer {access}"}
            return self._reply(200, {"access": access})
        if self.headers.get("Authorization") not in self.server.valid:
            return self._reply(401, {"detail": "expired"})
        if self.path.endswith("/import/predictions"):
            return self._reply(201, {"created": sum(1 for p in body if 0 <= p["score"] <= 1)})
        self._reply(404, {})


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.seen, srv.valid, srv.refreshes = [], {"Token legacy123"}, 0
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv):
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_legacy_token(server):
    client = LabelStudioClient(_url(server), "legacy123")
    assert client.project(5)["id"] == 5
    assert server.seen[-1] == ("GET", "/api/projects/5/", "Token legacy123")


def test_personal_access_token_is_refreshed_and_renewed_on_401(server):
    assert is_personal_access_token(PAT) and not is_personal_access_token("legacy123")
    client = LabelStudioClient(_url(server), PAT)
    assert client.project(5)["id"] == 5
    assert server.refreshes == 1 and server.seen[-1][2] == "Bearer access1"
    server.valid = set()  # the access token expired
    assert client.project(5)["id"] == 5
    assert server.refreshes == 2 and server.seen[-1][2] == "Bearer access2"


def test_refused_predictions_are_an_error(server):
    client = LabelStudioClient(_url(server), "legacy123")
    server.valid = {"Token legacy123"}
    ok = [{"task": 1, "score": 0.5}]
    assert client.import_predictions(5, ok) == {"created": 1}
    with pytest.raises(LabelStudioError, match="stored 1 of 2 predictions"):
        client.import_predictions(5, ok + [{"task": 2, "score": 7.0}])


def test_errors_name_the_request(server):
    client = LabelStudioClient(_url(server), "wrong")
    with pytest.raises(LabelStudioError, match=r"GET /api/projects/5/ answered 401: .*bad token"):
        client.project(5)
    client = LabelStudioClient(_url(server), "legacy123")
    with pytest.raises(LabelStudioError) as info:
        client.request("GET", "/api/nothing")
    assert info.value.status == 404
    with pytest.raises(LabelStudioError, match="refusing to send the Label Studio token"):
        client.file("http://elsewhere.example/a.png")
    down = LabelStudioClient("http://127.0.0.1:9", "legacy123", timeout=2)
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio"):
        down.project(5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="--ls-url"):
        LabelStudioClient("ftp://x", "t")
    with pytest.raises(ValueError, match="API token"):
        LabelStudioClient("http://127.0.0.1:8080", "")
