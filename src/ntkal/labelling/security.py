"""What keeps other web sites and other machines out of a labelling server on 127.0.0.1.

A page on any site the annotator visits can send requests to ``127.0.0.1``: a ``<form
enctype="text/plain">`` or a ``no-cors`` fetch needs no permission, and a DNS-rebinding page (a
name of the attacker's that resolves to 127.0.0.1) can even read the answers. So, in this order:

1. ``Host`` must name the bound address (loopback names only, unless ``--allow-remote``): a
   rebinding page's requests carry its own name and get 421;
2. the shared ``--token`` (when set) on every route, 401 otherwise;
3. writes (``POST``) must be same-origin (``Origin``, when sent, equals ``http://<Host>``; a
   browser's ``Sec-Fetch-Site: cross-site`` is refused): 403, nothing stored;
4. writes must be ``application/json`` (a form or ``no-cors`` fetch cannot send that): 415;
5. writes must carry the per-server CSRF token in ``X-Ntkal-Csrf`` (the page reads it from its
   own HTML): 403;
6. write bodies are capped (:data:`MAX_BODY`, :data:`MAX_IMPORT_BODY`): 413; their JSON must be an
   object nested at most :data:`MAX_DEPTH` deep with no ``NaN``/``Infinity``: 400.

Implemented as plain ASGI middleware, so a refused request never reaches a handler.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Guard",
    "parse_json",
    "allowed_hosts",
    "is_loopback",
    "host_name",
    "MAX_BODY",
    "MAX_IMPORT_BODY",
    "MAX_DEPTH",
]

MAX_BODY = 1 << 20  # 1 MiB: a label is ~60 bytes
MAX_IMPORT_BODY = 16 << 20  # an import of ~250 000 labels
MAX_DEPTH = 16
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(netloc: str) -> str:
    """The host part of ``host[:port]`` / ``[v6]:port``, lower-cased."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.index("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def allowed_hosts(bind: str, allow_remote: bool) -> frozenset | None:
    """Host names requests may carry; ``None`` means any (a wildcard bind with
    ``--allow-remote``, where the token is what protects the server)."""
    names = set(LOOPBACK_NAMES) | {bind.lower()}
    if allow_remote and bind in ("0.0.0.0", "::", ""):
        return None
    return frozenset(names)


def _refuse(status: int, detail: str) -> tuple[int, bytes]:
    return status, json.dumps({"detail": detail}).encode()


def _check_depth(doc: Any) -> None:
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"the JSON body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"the JSON body holds {name}, which is not a number a label can carry")


def parse_json(body: bytes) -> dict:
    """The JSON object in ``body`` (empty: ``{}``); ``ValueError`` with a one-line reason for
    anything else (bad syntax, ``NaN``/``Infinity``, too deep, not an object)."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValueError("the request body is not UTF-8 text") from None
    except RecursionError:
        raise ValueError(f"the JSON body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as err:  # bad syntax, NaN/Infinity, an integer of > 4300 digits
        raise ValueError(f"the request body is not valid JSON ({str(err)[:160]})") from None
    _check_depth(doc)
    if not isinstance(doc, dict):
        raise ValueError("the request body must be a JSON object")
    return doc


class Guard:
    """ASGI middleware applying the checks of the module docstring; a write's parsed JSON
    object is left in ``scope["state"]["json"]`` for the handler."""

    def __init__(
        self,
        app: Callable,
        *,
        hosts: Iterable[str] | None,
        token: str | None,
        csrf: str,
        large_paths: Iterable[str] = ("/api/import",),
    ) -> None:
        self.app = app
        self.hosts = None if hosts is None else frozenset(h.lower() for h in hosts)
        self.token = token
        self.csrf = csrf
        self.large_paths = frozenset(large_paths)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        refusal = self._check_request(scope, headers)
        if refusal is None and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            refusal = await self._read_write(scope, headers, receive)
        if refusal is not None:
            await self._send(send, *refusal)
            return
        await self.app(
            scope,
            receive
            if "body" not in scope.get("state", {})
            else self._replay(scope["state"]["body"]),
            send,
        )

    def _check_request(self, scope: dict, headers: dict) -> tuple[int, bytes] | None:
        host = headers.get("host")
        if not host:
            return _refuse(400, "the request has no Host header")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return _refuse(
                421,
                f"this server answers to {', '.join(sorted(self.hosts))}, not "
                f"{host_name(host)!r} (a page on another site cannot reach it)",
            )
        if self.token:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = headers.get("x-ntkal-token") or (query.get("token") or [""])[0]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _refuse(401, "missing or wrong token")
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return None
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if (
                origin == "null"
                or parts.netloc.lower() != host.lower()
                or parts.scheme not in ("http", "https")
            ):
                return _refuse(
                    403, f"cross-origin write refused (Origin {origin!r}); nothing was stored"
                )
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return _refuse(403, "cross-site write refused; nothing was stored")
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _refuse(415, f"writes must be application/json, got {ctype or 'no type'!r}")
        if not hmac.compare_digest(headers.get("x-ntkal-csrf", "").encode(), self.csrf.encode()):
            return _refuse(
                403,
                "missing or wrong X-Ntkal-Csrf header (reload the page; scripts "
                "read it from GET /api/session)",
            )
        return None

    async def _read_write(
        self, scope: dict, headers: dict, receive: Callable
    ) -> tuple[int, bytes] | None:
        limit = MAX_IMPORT_BODY if scope["path"] in self.large_paths else MAX_BODY
        too_big = _refuse(413, f"the request body is larger than {limit // (1 << 20)} MiB")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _refuse(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            doc = parse_json(body)
        except ValueError as err:
            return _refuse(400, str(err))
        scope.setdefault("state", {})
        scope["state"]["body"] = body
        scope["state"]["json"] = doc
        return None

    @staticmethod
    def _replay(body: bytes) -> Callable:
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return receive

    @staticmethod
    async def _send(send: Callable, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
