"""A real ``ntkal label`` server in a subprocess on a free loopback port, bounded in time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelServer:
    """``python -m ntkal.cli label ARGS`` on 127.0.0.1, with small JSON helpers."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = list(args)
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.csrf = ""

    def start(self, timeout: float = 90.0) -> LabelServer:
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(
                [str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            ),
            NTKAL_QUIET="1",
        )
        cmd = [
            sys.executable,
            "-m",
            "ntkal.cli",
            "label",
            *self.args,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            "1",
        ]
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.proc.returncode}:\n"
                    + self.log.read_text(errors="replace")[-3000:]
                )
            try:
                self.csrf = self.get("/api/session", timeout=2)["csrf"]
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"the server did not answer within {timeout} s:\n"
            + self.log.read_text(errors="replace")[-3000:]
        )

    def request(self, method: str, path: str, body=None, timeout: float = 30.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "X-Ntkal-Csrf": self.csrf},
        )
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return json.loads(res.read())

    def get(self, path: str, timeout: float = 30.0):
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: dict, timeout: float = 30.0):
        return self.request("POST", path, body, timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_fh", None) is not None:
            self._fh.close()


@pytest.fixture
def label_server(tmp_path):
    """Factory: ``label_server(args)`` starts a server; every one started is stopped after."""
    started: list[LabelServer] = []

    def make(args: list[str]) -> LabelServer:
        server = LabelServer(args, tmp_path / f"server{len(started)}.log")
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()
