"""``ntkal serve-backend``: bad input is one red line (exit 2) before anything is served."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ntkal.cli import app


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ls-token", "x", "--strategy", "margin"], "--strategy must be one of"),
        (["--ls-token", "x", "--host", "0.0.0.0"], "refusing to listen on 0.0.0.0"),
        (["--ls-token", "x", "--port", "0"], "--port must be >= 1"),
        (["--ls-token", "x", "--ls-url", "ftp://x"], "--ls-url must be an http"),
        ([], "API token is needed"),
        (["--ls-token", "x", "--ls-url", "http://127.0.0.1:9"], "cannot reach Label Studio"),
    ],
)
def test_serve_backend_errors(args, message, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    r = CliRunner().invoke(app, ["serve-backend", "--project", "1", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
