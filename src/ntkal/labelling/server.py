"""The HTTP side of ``ntkal label``: a FastAPI app over a :class:`LabellingSession`.

Every request passes :class:`~ntkal.labelling.security.Guard` first (Host, token, same-origin
JSON writes with the CSRF header, size and nesting caps). Handlers run the session's work in the
thread pool, so a slow import or a locked store never stalls the event loop (and with it every
other tab's ``/api/stats``).

JSON API (writes: ``POST`` with ``Content-Type: application/json`` and ``X-Ntkal-Csrf``):

==============================  ===============================================================
``GET /api/session``            the CSRF token, strategy, classes, kind (for scripts)
``GET /api/next``               the item for ``?client=ID`` (kept for that client until labelled,
                                released or the lease times out)
``POST /api/labels``            ``{"index", "label" (class name or index), "client"}``; stored
                                before the answer; 409 if the item has a different label
``POST /api/relabel``           ``{"index", "label", "client"}``: change an earlier label
``POST /api/release``           ``{"index", "client"}``: skip an item (it goes to the skipped list
                                and the next item differs); ``"skip": false`` only gives it back
``POST /api/open``              ``{"index", "client"}``: take a skipped / grid / history item
``POST /api/undo``              ``{"client"}``: remove that client's last label, show it again
``GET /api/history``            ``?limit=N``: the latest labels, newest first
``GET /api/skipped``            the skipped items
``GET /api/grid``               ``?n=N&client=ID``: upcoming items for triage
``GET /api/stats``              counts per class, phase, strategy, latencies, retraining, curve
``POST /api/retrain``           start SGD in the background (202; 409 while one runs)
``GET /api/export``             ``?format=csv|json`` (with each item's file or data row)
``POST /api/import``            ``{"labels": [{"index", "label"}]}`` or ``{"csv": "index,label..."}``
``GET /api/items/N/image.png``  the model's input rendering of an image item
``GET /api/items/N/original``   the item's source file, at its own resolution
==============================  ===============================================================
"""
# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.

import csv
import io
import secrets
from importlib import resources
from typing import Any

from ntkal.labelling.security import Guard, allowed_hosts, is_loopback

__all__ = ["create_app", "check_bind", "serve", "is_loopback", "parse_import"]


def check_bind(host: str, allow_remote: bool, token: str | None) -> None:
    """Refuse a non-loopback address unless both ``allow_remote`` and a token are given."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ValueError(
            f"refusing to listen on {host}: anyone on the network could label and "
            "export your data. Use 127.0.0.1, or pass --allow-remote together with "
            "--token"
        )
    if not token or len(token) < 8:
        raise ValueError(f"listening on {host} needs --token with at least 8 characters")


def _static(name: str) -> bytes:
    return resources.files("ntkal.labelling").joinpath("static").joinpath(name).read_bytes()


def parse_import(doc: dict) -> tuple[list[Any], list[Any]]:
    """``(indices, labels)`` from an import body: ``{"labels": [{"index", "label" or
    "class"}]}`` or ``{"csv": text}`` with ``index`` and ``label`` (or ``class``) columns."""
    if "csv" in doc:
        if not isinstance(doc["csv"], str):
            raise ValueError('"csv" must be the text of a CSV file')
        rows: Any = list(csv.DictReader(io.StringIO(doc["csv"].lstrip("\ufeff"))))
        if not rows:
            raise ValueError("the CSV import has no rows (expected a header with index,label)")
    else:
        rows = doc.get("labels")
        if not isinstance(rows, list):
            raise ValueError(
                'an import must be {"labels": [{"index": i, "label": y}, ...]} or '
                '{"csv": "index,label\\n..."}'
            )
    indices, labels = [], []
    for n, row in enumerate(rows, start=1):
        if (
            not isinstance(row, dict)
            or "index" not in row
            or (row.get("label") in (None, "") and row.get("class") in (None, ""))
        ):
            raise ValueError(
                f"import row {n} needs 'index' and 'label' (or 'class'), got {str(row)[:200]}"
            )
        indices.append(row["index"])
        labels.append(row["label"] if row.get("label") not in (None, "") else row["class"])
    return indices, labels


def _page(csrf: str) -> bytes:
    return _static("index.html").replace(b"__NTKAL_CSRF__", csrf.encode())


def _error_handlers(app: Any) -> None:
    """Map the session's exceptions to one-line JSON answers (never a traceback)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from ntkal.labelling.engine import LabelConflict
    from ntkal.labelstore import LabelStoreError

    def answer(status: int):
        async def handler(request: Request, err: Exception):
            return JSONResponse({"detail": str(err) or type(err).__name__}, status_code=status)

        return handler

    app.add_exception_handler(LabelConflict, answer(409))
    app.add_exception_handler(ValueError, answer(400))
    app.add_exception_handler(LabelStoreError, answer(503))

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, status_code=400)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception):
        return JSONResponse(
            {"detail": f"the server failed: {type(err).__name__}: {err}"}, status_code=500
        )


def _item_routes(app: Any, session: Any) -> None:
    """Items: next, open, release/skip, grid, skipped, renderings."""
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool as pool

    @app.get("/api/next")
    async def next_item(client: str = "default"):
        return await pool(session.next_item, client)

    @app.post("/api/open")
    async def open_item(request: Request):
        doc = request.state.json
        return await pool(session.open_item, doc.get("index"), doc.get("client"))

    @app.post("/api/release")
    async def release(request: Request):
        doc = request.state.json
        skip = doc.get("skip", True)  # a release from the page is a skip: the next item differs
        if not isinstance(skip, bool):
            raise ValueError(f"skip must be true or false, got {skip!r}")
        released = await pool(session.release, doc.get("index"), doc.get("client"), skip=skip)
        return {"released": released}

    @app.get("/api/grid")
    async def grid(n: int = 12, client: str = "default"):
        return await pool(session.grid, n, client)

    @app.get("/api/skipped")
    async def skipped():
        return await pool(session.skipped)

    @app.get("/api/items/{index}/image.png")
    async def image(index: int):
        data = await pool(session.image_png, index)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/items/{index}/original")
    async def original(index: int):
        data, media = await pool(session.original, index)
        return Response(
            data,
            media_type=media,
            headers={
                "Cache-Control": "max-age=3600",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'",
            },
        )


def _label_routes(app: Any, session: Any) -> None:
    """Labels: add, relabel, undo, history, import, export."""
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool as pool

    @app.post("/api/labels")
    async def add_label(request: Request):
        doc = request.state.json
        if "index" not in doc or "label" not in doc:
            raise ValueError('POST /api/labels needs {"index": ..., "label": ...}')
        return await pool(session.add_label, doc["index"], doc["label"], doc.get("client"))

    @app.post("/api/relabel")
    async def relabel(request: Request):
        doc = request.state.json
        if "index" not in doc or "label" not in doc:
            raise ValueError('POST /api/relabel needs {"index": ..., "label": ...}')
        return await pool(session.relabel, doc["index"], doc["label"], doc.get("client"))

    @app.post("/api/undo")
    async def undo(request: Request):
        return await pool(session.undo, request.state.json.get("client"))

    @app.get("/api/history")
    async def history(limit: int = 50):
        return await pool(session.history, limit)

    @app.get("/api/export")
    async def export(format: str = "csv"):
        text = await pool(session.export, format)
        media = "text/csv" if format == "csv" else "application/json"
        return Response(
            text,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="labels.{format}"'},
        )

    @app.post("/api/import")
    async def import_labels(request: Request):
        indices, labels = await pool(parse_import, request.state.json)
        return await pool(session.import_labels, indices, labels)


def _page_routes(app: Any, session: Any, csrf: str) -> None:
    """The page, its static files, the session description, stats and retraining."""
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool as pool

    @app.get("/")
    def index():
        return Response(
            _page(csrf),
            media_type="text/html; charset=utf-8",
            headers={
                # scripts only from this server; inline style attributes are fine (bar widths)
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY",
                "Cache-Control": "no-store",
            },
        )

    @app.get("/static/{name}")
    def static(name: str):
        types = {".js": "text/javascript", ".css": "text/css"}
        suffix = name[name.rfind(".") :] if "." in name else ""
        if suffix not in types or "/" in name or name.startswith("."):
            return JSONResponse({"detail": "not found"}, status_code=404)
        try:
            return Response(_static(name), media_type=types[suffix])
        except FileNotFoundError:
            return JSONResponse({"detail": "not found"}, status_code=404)

    @app.get("/api/session")
    def describe():
        return {
            "csrf": csrf,
            "strategy": session.strategy,
            "strategy_text": session.picks.description,
            "classes": list(session.classes),
            "kind": session.kind,
            "pool_size": session.pool_size,
        }

    @app.get("/api/stats")
    async def stats():
        return await pool(session.stats)

    @app.post("/api/retrain")
    async def retrain():
        if await pool(session.start_retrain):
            return JSONResponse({"started": True}, status_code=202)
        reason = "a retrain is already running" if session.retraining else "no labels yet"
        return JSONResponse({"started": False, "detail": reason}, status_code=409)


def create_app(
    session,
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    allow_remote: bool = False,
    csrf: str | None = None,
):
    """The FastAPI application serving ``session`` (a :class:`LabellingSession`), answering
    only to the names of ``host`` (loopback names unless ``allow_remote``)."""
    from fastapi import FastAPI

    app = FastAPI(title="ntkal label", docs_url=None, redoc_url=None, openapi_url=None)
    csrf = csrf or secrets.token_urlsafe(32)
    app.state.csrf = csrf
    _error_handlers(app)
    _page_routes(app, session, csrf)
    _item_routes(app, session)
    _label_routes(app, session)
    app.add_middleware(Guard, hosts=allowed_hosts(host, allow_remote), token=token, csrf=csrf)
    return app


def serve(
    session,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allow_remote: bool = False,
    log_level: str = "warning",
) -> None:
    """Run the app with uvicorn until interrupted (binding checked by :func:`check_bind`)."""
    import uvicorn

    check_bind(host, allow_remote, token)
    try:
        uvicorn.run(
            create_app(session, token=token, host=host, allow_remote=allow_remote),
            host=host,
            port=int(port),
            log_level=log_level,
            access_log=False,
        )
    finally:
        session.close()
