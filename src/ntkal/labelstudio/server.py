"""The HTTP side of ``ntkal serve-backend``: Label Studio's ML backend protocol over a
:class:`~ntkal.labelstudio.backend.Backend`.

=====================  ==========================================================================
``GET /health``, ``/``  ``{"status": "UP", "model_class", "model_version"}``
``POST /setup``         ``{"project": "ID.TIMESTAMP", "schema", ...}`` -> ``{"model_version"}``;
                        400 for another project or a config without the pool's classes
``POST /predict``       ``{"tasks": [...]}`` -> ``{"results": [{"result", "score",
                        "model_version"}], "model_version"}`` (one per task, in order)
``POST /webhook``       Label Studio's webhook: ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` /
                        ``ANNOTATIONS_DELETED`` stored before the answer; ``START_TRAINING``
                        starts a retrain; other actions are acknowledged and ignored
``POST /train``         start a background retrain (201)
``GET /ntkal/stats``    labels, the last scores (ntkal's pick), latency, retraining
=====================  ==========================================================================

Safety as in ``ntkal label``: 127.0.0.1 unless ``--allow-remote`` with a token; with a token every
request must carry it (``Authorization: Bearer|Token TOKEN``, HTTP basic auth with it as the
password, as Label Studio's "basic auth" connection setting sends, or ``X-Ntkal-Token``); bodies
over :data:`MAX_BODY_BYTES` get 413; bad JSON or shapes get 400 with one line; Label Studio
unreachable 502; a locked store 503; anything else 500 with one line, never a traceback.
"""
# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.

import base64
import binascii
import hmac
import json
import threading
import time
import traceback
from typing import Any

__all__ = ["create_app", "serve", "MAX_BODY_BYTES"]

#: Largest request body accepted (a webhook carries the task and the project).
MAX_BODY_BYTES = 16 * 2**20


def _token_of(request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token"):
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return request.headers.get("x-ntkal-token", "")


def create_app(backend, *, token: str | None = None, public_url: str | None = None):
    """The FastAPI application serving ``backend``; with ``token`` and ``public_url`` (the
    address Label Studio reaches it at), ``/setup`` also puts the token on the webhook Label
    Studio creates for it."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from ntkal.labelstore import LabelStoreError
    from ntkal.labelstudio.client import LabelStudioError
    from ntkal.labelstudio.protocol import ProtocolError, parse_event, parse_label_config

    app = FastAPI(
        title="ntkal Label Studio backend", docs_url=None, redoc_url=None, openapi_url=None
    )

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message, "error": message}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token and not hmac.compare_digest(_token_of(request).encode(), token.encode()):
            return error(401, "missing or wrong token")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            return await call_next(request)
        except Exception as err:  # noqa: BLE001 - one line, never a traceback, to the caller
            traceback.print_exc()
            return error(500, f"internal error: {type(err).__name__}: {err}".splitlines()[0])

    @app.exception_handler(ValueError)
    async def bad_request(request: Request, err: ValueError):
        return error(400, str(err).splitlines()[0] if str(err) else type(err).__name__)

    @app.exception_handler(LabelStudioError)
    async def upstream(request: Request, err: LabelStudioError):
        return error(502, str(err))

    @app.exception_handler(LabelStoreError)
    async def store_failed(request: Request, err: LabelStoreError):
        return error(503, str(err))

    async def body_json(request: Request) -> Any:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ValueError(f"request body larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"the request body is not valid JSON ({err})") from None
        except RecursionError:
            raise ValueError("the request body nests too deeply") from None

    def health_doc() -> dict:
        return {
            "status": "UP",
            "model_class": "ntkal",
            "model_version": backend.model_version,
            "strategy": backend.strategy,
        }

    @app.get("/")
    def root():
        return health_doc()

    @app.get("/health")
    def health():
        return health_doc()

    def check_project(doc: dict) -> None:
        given = doc.get("project")
        if given is None or isinstance(given, dict):
            return
        head = str(given).split(".", 1)[0]
        if head.isdigit() and int(head) != backend.project:
            raise ValueError(
                f"this ntkal backend serves Label Studio project {backend.project}, "
                f"not {head}; start another backend (its own --store) for it"
            )

    @app.post("/setup")
    async def setup(request: Request):
        doc = await body_json(request)
        if not isinstance(doc, dict):
            raise ValueError("the /setup body must be a JSON object")
        check_project(doc)
        schema = doc.get("schema")
        if isinstance(schema, str) and schema.strip():
            config = parse_label_config(schema, from_name=backend.config.from_name)
            if config.classes != backend.config.classes:
                raise ValueError(
                    f"the project's classes are now {', '.join(config.classes)}; "
                    f"this backend learns {', '.join(backend.config.classes)}: "
                    "restart it on a new --store"
                )
        if token and public_url and backend.client is not None:
            threading.Thread(target=_secure, name="ntkal-webhook-token", daemon=True).start()
        return {"model_version": backend.model_version}

    def _secure() -> None:
        # Label Studio creates the webhook when it saves the connection, after /setup answers
        for _ in range(10):
            time.sleep(1.0)
            try:
                if backend.secure_webhooks(public_url, token):
                    return
            except Exception as err:  # noqa: BLE001 - reported, the backend goes on
                print(
                    f"ntkal: could not set the token on Label Studio's webhook: {err}", flush=True
                )
                return

    @app.post("/predict")
    async def predict(request: Request):
        doc = await body_json(request)
        if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list):
            raise ValueError('the /predict body must be {"tasks": [...]}')
        check_project(doc)
        return {"results": backend.predict(doc["tasks"]), "model_version": backend.model_version}

    @app.post("/webhook")
    async def webhook(request: Request):
        received = time.perf_counter()
        doc = await body_json(request)
        if isinstance(doc, dict) and doc.get("action") == "START_TRAINING":
            return JSONResponse({"started": backend.session.start_retrain()}, status_code=201)
        if (
            isinstance(doc, dict)
            and isinstance(doc.get("project"), dict)
            and doc["project"].get("id") not in (None, backend.project)
        ):
            return {"ignored": "another project"}
        try:
            events = parse_event(doc, backend.config)
        except ProtocolError as err:
            raise ValueError(str(err)) from None
        if not events:
            return {"ignored": doc.get("action")}
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(backend.apply, events, received)  # on disk on return

    @app.post("/train")
    async def train(request: Request):
        await body_json(request)
        return JSONResponse({"started": backend.session.start_retrain()}, status_code=201)

    @app.get("/ntkal/stats")
    def stats():
        return backend.stats()

    return app


def serve(
    backend,
    *,
    host: str = "127.0.0.1",
    port: int = 9090,
    token: str | None = None,
    allow_remote: bool = False,
    public_url: str | None = None,
    log_level: str = "warning",
) -> None:
    """Run the app with uvicorn until interrupted (loopback unless ``allow_remote`` + token).
    ``public_url``: the address Label Studio connects to (default ``http://HOST:PORT``)."""
    import uvicorn

    from ntkal.labelling.server import check_bind

    check_bind(host, allow_remote, token)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    app = create_app(backend, token=token, public_url=public_url or f"http://{shown}:{int(port)}")
    uvicorn.run(app, host=host, port=int(port), log_level=log_level, access_log=False)
