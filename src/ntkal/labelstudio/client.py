"""A small client for the parts of Label Studio's REST API the backend uses (stdlib HTTP only).

Authentication: a *legacy* API token is sent as ``Authorization: Token KEY``; a *personal access
token* (a JWT refresh token, Label Studio's default since 1.14) is exchanged at
``POST /api/token/refresh`` for a short-lived access token sent as ``Bearer``, refreshed again on a
401. Every failure is a :class:`LabelStudioError` naming the request, never a raw traceback.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["LabelStudioClient", "LabelStudioError", "is_personal_access_token"]

#: Largest response body read (a whole project export with its annotations).
MAX_RESPONSE_BYTES = 512 * 2**20


class LabelStudioError(RuntimeError):
    """A Label Studio request failed; the message names the method, path and status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def is_personal_access_token(token: str) -> bool:
    """A JWT (three base64url parts, header first) rather than a 40-hex legacy key."""
    parts = token.split(".")
    return len(parts) == 3 and parts[0].startswith("eyJ")


class LabelStudioClient:
    """Label Studio at ``url`` with ``token`` (legacy key or personal access token).

    Parameters
    ----------
    url : str
        E.g. ``http://127.0.0.1:8080``.
    token : str
        API token of a user who may edit the project (predictions are written with it).
    timeout : float
        Seconds per request.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"--ls-url must be an http(s) URL such as http://127.0.0.1:8080, got {url!r}"
            )
        if not token or not isinstance(token, str):
            raise ValueError(
                "a Label Studio API token is needed (--ls-token or LABEL_STUDIO_API_KEY)"
            )
        self.url = url.rstrip("/")
        self.origin = f"{parsed.scheme}://{parsed.netloc}"
        self.token = token.strip()
        self.timeout = float(timeout)
        self._access: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ transport
    def _auth(self, refresh: bool = False) -> str:
        if not is_personal_access_token(self.token):
            return f"Token {self.token}"
        with self._lock:
            if self._access is None or refresh:
                doc = self._send("POST", "/api/token/refresh", {"refresh": self.token}, auth=None)
                if not isinstance(doc, dict) or not isinstance(doc.get("access"), str):
                    raise LabelStudioError("POST /api/token/refresh gave no access token")
                self._access = doc["access"]
            return f"Bearer {self._access}"

    def _send(
        self, method: str, path: str, body: Any = None, *, auth: str | None, raw: bool = False
    ) -> Any:
        url = path if path.startswith(("http://", "https://")) else self.url + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", auth)
        short = urllib.parse.urlparse(url).path
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as err:
            detail = err.read(500).decode("utf-8", "replace").strip().replace("\n", " ")
            raise LabelStudioError(
                f"Label Studio {method} {short} answered {err.code}: {detail[:300]}",
                status=err.code,
            ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({method} {short}: {reason})"
            ) from None
        if len(payload) > MAX_RESPONSE_BYTES:
            raise LabelStudioError(
                f"Label Studio {method} {short}: response larger than {MAX_RESPONSE_BYTES} bytes"
            )
        if raw:
            return payload
        if not payload.strip():
            return None
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            raise LabelStudioError(f"Label Studio {method} {short} did not answer JSON") from None

    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        """One authenticated request; JSON in and out (``raw``: the response bytes)."""
        if path.startswith(("http://", "https://")) and not path.startswith(self.origin + "/"):
            raise LabelStudioError(
                f"refusing to send the Label Studio token to {path}: not on {self.origin}"
            )
        try:
            return self._send(method, path, body, auth=self._auth(), raw=raw)
        except LabelStudioError as err:
            if err.status == 401 and is_personal_access_token(self.token):
                return self._send(method, path, body, auth=self._auth(refresh=True), raw=raw)
            raise

    # ------------------------------------------------------------------ API
    def project(self, project: int) -> dict:
        return self.request("GET", f"/api/projects/{int(project)}/")

    def export_tasks(self, project: int) -> list[dict]:
        """Every task of ``project`` with its annotations, in Label Studio's JSON export format."""
        doc = self.request(
            "GET", f"/api/projects/{int(project)}/export?exportType=JSON&download_all_tasks=true"
        )
        if not isinstance(doc, list):
            raise LabelStudioError(f"the export of project {project} is not a list of tasks")
        return doc

    def file(self, url: str) -> bytes:
        """A file Label Studio serves (``/data/upload/...``), by its task URL."""
        return self.request(
            "GET",
            url if url.startswith(("http://", "https://")) else "/" + url.lstrip("/"),
            raw=True,
        )

    def import_predictions(self, project: int, predictions: list[dict]) -> Any:
        """Add predictions; Label Studio answers 201 even when it refuses some (e.g. a score
        outside [0, 1]), so the count it created is checked."""
        doc = self.request("POST", f"/api/projects/{int(project)}/import/predictions", predictions)
        created = doc.get("created") if isinstance(doc, dict) else None
        if created is not None and created != len(predictions):
            raise LabelStudioError(
                f"Label Studio stored {created} of {len(predictions)} "
                "predictions (its log says why)"
            )
        return doc

    def delete_predictions(self, project: int, model_version: str) -> Any:
        """Delete every prediction of ``model_version`` in the project."""
        try:
            return self.request(
                "DELETE",
                f"/api/projects/{int(project)}/model-versions/",
                {"model_version": model_version},
            )
        except LabelStudioError as err:
            if err.status == 404:  # nothing of that version yet
                return None
            raise

    def webhooks(self, project: int) -> list[dict]:
        doc = self.request("GET", f"/api/webhooks/?project={int(project)}")
        return doc if isinstance(doc, list) else []

    def set_webhook_headers(self, webhook_id: int, headers: dict) -> Any:
        return self.request("PATCH", f"/api/webhooks/{int(webhook_id)}/", {"headers": headers})
