"""The HTTP side of ``ntkal label``: a FastAPI app over a :class:`LabellingSession`.

JSON API (every route also takes the token, when one is set, as ``X-Ntkal-Token`` header or
``?token=``):

======================  =====================================================================
``GET /api/next``       the item for ``?client=ID`` (kept for that client until labelled,
                        released or the lease times out)
``POST /api/labels``    ``{"index", "label" (index or class name), "client"}``; stored before
                        the answer; answers ``{"duplicate", "latency", "next"}``; 409 if the item
                        already has a different label
``POST /api/release``   ``{"index", "client"}``: give an item back (skip)
``POST /api/undo``      ``{"client"}``: remove that client's last label and show it again
``GET /api/stats``      counts per class, phase, latencies, retraining, learning curve
``POST /api/retrain``   start SGD in the background (202; 409 while one runs)
``GET /api/export``     ``?format=csv|json``
``POST /api/import``    JSON ``{"labels": [{"index", "label"}]}`` or CSV text with ``index`` and
                        ``label`` (or ``class``) columns
``GET /api/items/N/image.png``  an image item rendered as PNG
======================  =====================================================================
"""
# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.

import csv
import hmac
import io
import ipaddress
import json
from importlib import resources
from typing import Any, Optional

__all__ = ["create_app", "check_bind", "serve", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool, token: Optional[str]) -> None:
    """Refuse a non-loopback address unless both ``allow_remote`` and a token are given."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ValueError(f"refusing to listen on {host}: anyone on the network could label and "
                         "export your data. Use 127.0.0.1, or pass --allow-remote together with "
                         "--token")
    if not token or len(token) < 8:
        raise ValueError(f"listening on {host} needs --token with at least 8 characters")


def _static(name: str) -> bytes:
    return resources.files("ntkal.labelling").joinpath("static", name).read_bytes()


def _parse_import(body: bytes, content_type: str) -> tuple[list[int], list[Any]]:
    text = body.decode("utf-8-sig", errors="replace")
    if "json" in content_type or text.lstrip().startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"the import is not valid JSON ({err})") from None
        rows = doc.get("labels") if isinstance(doc, dict) else doc
        if not isinstance(rows, list):
            raise ValueError('a JSON import must be {"labels": [{"index": i, "label": y}, ...]}')
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            raise ValueError("the CSV import has no rows (expected a header with index,label)")
    indices, labels = [], []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "index" not in row or \
                (row.get("label") in (None, "") and row.get("class") in (None, "")):
            raise ValueError(f"import row {n} needs 'index' and 'label' (or 'class'), got {row!r}")
        try:
            indices.append(int(row["index"]))
        except (TypeError, ValueError):
            raise ValueError(f"import row {n}: index {row['index']!r} is not an integer") from None
        labels.append(row["label"] if row.get("label") not in (None, "") else row["class"])
    return indices, labels


def create_app(session, *, token: Optional[str] = None):
    """The FastAPI application serving ``session`` (a :class:`LabellingSession`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    from ntkal.labelling.engine import LabelConflict
    from ntkal.labelstore import LabelStoreError

    app = FastAPI(title="ntkal label", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if token:
            given = request.headers.get("x-ntkal-token") or request.query_params.get("token") or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"detail": "missing or wrong token"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(LabelConflict)
    async def conflict(request: Request, err: LabelConflict):
        return JSONResponse({"detail": str(err)}, status_code=409)

    @app.exception_handler(ValueError)
    async def bad_request(request: Request, err: ValueError):
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.exception_handler(LabelStoreError)
    async def store_failed(request: Request, err: LabelStoreError):
        return JSONResponse({"detail": str(err)}, status_code=503)

    async def body_json(request: Request) -> dict:
        try:
            doc = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"the request body is not valid JSON ({err})") from None
        if not isinstance(doc, dict):
            raise ValueError("the request body must be a JSON object")
        return doc

    def client_of(value: Any) -> str:
        client = str(value or "default")
        if len(client) > 100:
            raise ValueError("client id is too long (at most 100 characters)")
        return client

    @app.get("/")
    def index():
        return Response(_static("index.html"), media_type="text/html; charset=utf-8")

    @app.get("/static/{name}")
    def static(name: str):
        types = {".js": "text/javascript", ".css": "text/css"}
        suffix = name[name.rfind("."):] if "." in name else ""
        if suffix not in types or "/" in name or name.startswith("."):
            return JSONResponse({"detail": "not found"}, status_code=404)
        try:
            return Response(_static(name), media_type=types[suffix])
        except FileNotFoundError:
            return JSONResponse({"detail": "not found"}, status_code=404)

    @app.get("/api/next")
    def next_item(client: str = "default"):
        return session.next_item(client_of(client))

    @app.post("/api/labels")
    async def add_label(request: Request):
        doc = await body_json(request)
        if "index" not in doc or "label" not in doc:
            raise ValueError('POST /api/labels needs {"index": ..., "label": ...}')
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(session.add_label, doc["index"], doc["label"],
                                       client_of(doc.get("client")))

    @app.post("/api/release")
    async def release(request: Request):
        doc = await body_json(request)
        return {"released": session.release(int(doc.get("index", -1)), client_of(doc.get("client")))}

    @app.post("/api/undo")
    async def undo(request: Request):
        doc = await body_json(request)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(session.undo, client_of(doc.get("client")) if
                                       doc.get("client") else None)

    @app.get("/api/stats")
    def stats():
        return session.stats()

    @app.post("/api/retrain")
    def retrain():
        if session.start_retrain():
            return JSONResponse({"started": True}, status_code=202)
        reason = "a retrain is already running" if session.retraining else "no labels yet"
        return JSONResponse({"started": False, "detail": reason}, status_code=409)

    @app.get("/api/export")
    def export(format: str = "csv"):
        if format == "csv":
            return Response(session.store.export_csv(session.classes), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="labels.csv"'})
        if format == "json":
            return Response(session.store.export_json(session.classes),
                            media_type="application/json",
                            headers={"Content-Disposition": 'attachment; filename="labels.json"'})
        raise ValueError(f"format must be csv or json, got {format!r}")

    @app.post("/api/import")
    async def import_labels(request: Request):
        indices, labels = _parse_import(await request.body(),
                                        request.headers.get("content-type", ""))
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(session.import_labels, indices, labels)

    @app.get("/api/items/{index}/image.png")
    def image(index: int):
        return Response(session.image_png(index), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    return app


def serve(session, *, host: str = "127.0.0.1", port: int = 8765, token: Optional[str] = None,
          allow_remote: bool = False, log_level: str = "warning") -> None:
    """Run the app with uvicorn until interrupted (binding checked by :func:`check_bind`)."""
    import uvicorn

    check_bind(host, allow_remote, token)
    uvicorn.run(create_app(session, token=token), host=host, port=int(port), log_level=log_level,
                access_log=False)
