"""The HTTP API (FastAPI): enrollment, heartbeats, findings. `create_app(settings)` builds it.

Bodies are read by hand, to a size limit, and decoded with msgspec into the typed records (a
heartbeat is `ringfence.events.Heartbeat`, the agent's own type): the first bad byte gets a 4xx with
one line naming what is wrong. Their schemas are published in /openapi.json all the same.

    POST /api/v1/enroll       {token, hostname, public_key} -> {host_id}       (the token is the proof)
    POST /api/v1/heartbeat    a Heartbeat                   -> {stored, assignments}   (signed by the host)
    POST /api/v1/findings     {batch_id, findings: [...]}   -> {stored, duplicate}  (signed)
    GET  /api/v1/ping         -> {ok, heartbeat_schema_version}                (no auth; for probes)

Backpressure: past `max_inflight` requests at once on this node, or while the database is away, the
answer is 503 with Retry-After; the uplink backs off (and honours Retry-After on 429 too).

Heartbeats, the bulk of the load, take a shorter way: a plain Starlette route (not FastAPI's dependency
machinery; its OpenAPI operation is written by hand, the same as FastAPI's) that checks what it can
without the database, decodes the body, and hands it to the node's one writer thread (_writer.py),
which stores every heartbeat waiting in one transaction and answers each after the commit.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from ringfence import __version__
from ringfence.events import HEARTBEAT_SCHEMA_VERSION, Heartbeat, decode_heartbeat
from ringfence.fleet import _store
from ringfence.fleet._auth import DATE_HEADER, HOST_HEADER, NONCE_HEADER, SIGNATURE_HEADER
from ringfence.fleet._console import add_console
from ringfence.fleet._evaluator import Evaluator
from ringfence.fleet._ingest import Arrival
from ringfence.fleet._writer import UNAVAILABLE, HeartbeatWriter, WriterConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
API = "/api/v1"
BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
INT64 = 1 << 63
AGENT_VERSION_CHARS = 64  # host_status.agent_version's column
STORED_INTEGERS = ("sequence", "sent_at_ns")  # of a Heartbeat: columns of their own, BIGINT


@dataclass(frozen=True)
class ServerSettings:
    engine: Engine
    heartbeat_history: int = 100  # recent heartbeats kept per host (at least 1: the latest document)
    max_heartbeat_bytes: int = 1 << 20
    max_findings_bytes: int = 8 << 20
    max_findings_per_batch: int = 1000
    max_inflight: int = 64  # requests at once on this node; more get 503 + Retry-After
    rollout_interval_s: float = 0.0  # how often this node looks at the rollouts (0: never; the server: 60)
    retry_after_s: int = 5
    heartbeat_batch: int = 256  # heartbeats written in one transaction at most
    heartbeat_linger_s: float = 0.002  # how long a heartbeat waits for others to share its transaction
    now_ns: Callable[[], int] = field(default=time.time_ns)


class EnrollRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    hostname: str
    public_key: str  # Ed25519, 32 bytes, base64


class EnrollResponse(msgspec.Struct):
    host_id: str
    server_version: str


class FindingsBatch(msgspec.Struct, forbid_unknown_fields=True):
    batch_id: str  # the client's; a retry with the same id is stored once
    findings: list[dict[str, Any]]  # OCSF findings, as the agent writes them to findings.jsonl


class Stored(msgspec.Struct):
    stored: int
    duplicate: bool = False


class HeartbeatReply(msgspec.Struct):
    stored: int
    assignments: dict[str, str]  # engine -> the signed content version this host is to run


class Error(msgspec.Struct):
    detail: str


class Ping(msgspec.Struct):
    ok: bool
    heartbeat_schema_version: int
    version: str


_WHY = {
    400: "a Content-Length that is not a number",
    401: "not signed, a bad signature, a replay, a clock outside the window, an unknown host or token",
    403: "the host is revoked",
    413: "the body (or the batch) is too large",
    422: "the body does not decode: the detail names the field",
    503: "the node is busy or its database away: retry after Retry-After seconds",
}


class _Refused(Exception):
    def __init__(self, status: int, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry_after_s = status, detail, retry_after_s


def create_app(settings: ServerSettings) -> FastAPI:
    sessions = sessionmaker(settings.engine, expire_on_commit=False)
    writer = HeartbeatWriter(
        settings.engine,
        WriterConfig(
            history=settings.heartbeat_history,
            max_batch=settings.heartbeat_batch,
            linger_s=settings.heartbeat_linger_s,
        ),
        now_ns=settings.now_ns,
    )
    app = FastAPI(
        title="Ringfence fleet",
        version=__version__,
        openapi_url="/openapi.json",
        docs_url=None,
        lifespan=_lifespan(settings, sessions, writer),
    )

    @app.exception_handler(_Refused)
    async def refused(_request: Request, e: _Refused) -> Response:
        headers = {"Retry-After": str(e.retry_after_s)} if e.retry_after_s is not None else None
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=headers)

    app.add_middleware(
        _InflightLimit, max_inflight=settings.max_inflight, retry_after_s=settings.retry_after_s
    )

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await run_in_threadpool(fn, sessions, settings.now_ns(), *args, **kwargs)
        except _store.Refused as e:
            raise _Refused(e.status, str(e)) from e
        # TimeoutError: no pooled connection came free in 30 s (a node holds PG_POOL_SIZE at most)
        except UNAVAILABLE as e:
            log.warning("database unavailable: %s", e)
            raise _Refused(503, "database unavailable: retry later", settings.retry_after_s) from e

    async def signed(request: Request, limit: int) -> tuple[str, bytes]:
        signed_request = await _signed_request(request, limit)
        host_id = await call(_store.authenticate, signed_request)
        return host_id, signed_request.body

    @app.get(f"{API}/ping", summary="liveness; no authentication", openapi_extra=_doc(None, 200, Ping))
    async def ping() -> Response:
        return _json(Ping(ok=True, heartbeat_schema_version=HEARTBEAT_SCHEMA_VERSION, version=__version__))

    @app.post(
        f"{API}/enroll",
        summary="trade a one-time token for a host id",
        status_code=201,
        openapi_extra=_doc(EnrollRequest, 201, EnrollResponse, 400, 401, 413, 422, 503),
    )
    async def enroll(request: Request) -> Response:
        req = _decode(await _read_body(request, 16 << 10), EnrollRequest, "enroll request")
        if not req.hostname or len(req.hostname) > 255:
            raise _Refused(422, "hostname: 1..255 characters")
        host_id = await call(_store.enroll, req.token, req.hostname, req.public_key)
        log.info("enrolled host %s as %s", req.hostname, host_id)
        return _json(EnrollResponse(host_id=host_id, server_version=__version__), 201)

    async def heartbeat(request: Request) -> Response:
        now_ns = settings.now_ns()
        signed_request = await _signed_request(request, settings.max_heartbeat_bytes)
        try:
            _store.check_headers(signed_request, now_ns)
            assigned = await writer.submit(
                Arrival(signed_request, now_ns, _heartbeat_of(signed_request.body))
            )
        except _store.Refused as e:
            retry_after = settings.retry_after_s if e.status == 503 else None
            raise _Refused(e.status, str(e), retry_after) from e
        except UNAVAILABLE as e:
            raise _Refused(503, "database unavailable: retry later", settings.retry_after_s) from e
        return _json(HeartbeatReply(stored=1, assignments=assigned))

    app.add_route(f"{API}/heartbeat", heartbeat, methods=["POST"], include_in_schema=False)

    @app.post(
        f"{API}/findings",
        summary="a batch of findings (signed)",
        openapi_extra=_doc(FindingsBatch, 200, Stored, 400, 401, 403, 413, 422, 503),
    )
    async def findings(request: Request) -> Response:
        host_id, body = await signed(request, settings.max_findings_bytes)
        batch = _decode(body, FindingsBatch, "findings batch")
        if not BATCH_ID.fullmatch(batch.batch_id):
            raise _Refused(422, "findings batch: batch_id: 1..64 of [A-Za-z0-9_-]")
        if len(batch.findings) > settings.max_findings_per_batch:
            raise _Refused(
                413,
                f"findings batch: {len(batch.findings)} findings, at most {settings.max_findings_per_batch}",
            )
        raws = [msgspec.Raw(msgspec.json.encode(f)) for f in batch.findings]
        new = await call(_store.store_findings, host_id, batch.batch_id, raws)
        return _json(Stored(stored=len(raws) if new else 0, duplicate=not new))

    add_console(app, sessions, settings.now_ns)
    _with_components(app, settings)
    return app


class _InflightLimit:
    """Past `max_inflight` requests at once on this node, a 503 with Retry-After. A plain ASGI middleware:
    Starlette's BaseHTTPMiddleware (`@app.middleware`) runs each request in a task group of its own and
    wraps every receive; it was half the node's CPU per ping (bench/fleet_load_bench.py)."""

    def __init__(self, app: ASGIApp, *, max_inflight: int, retry_after_s: int) -> None:
        self.app, self.max_inflight, self.retry_after_s = app, max_inflight, retry_after_s
        self.inflight = 0  # this node's own load, not state another node needs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            busy = JSONResponse(
                {"detail": "server busy: retry later"},
                status_code=503,
                headers={"Retry-After": str(self.retry_after_s)},
            )
            await busy(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def _lifespan(
    settings: ServerSettings, sessions: sessionmaker[Any], writer: HeartbeatWriter
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: this node's rollout evaluator runs while it serves (when the interval is set);
    at the end the heartbeat writer writes what it holds."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        evaluator = None
        if settings.rollout_interval_s > 0:
            evaluator = Evaluator(sessions, interval_s=settings.rollout_interval_s, now_ns=settings.now_ns)
            evaluator.start()
        try:
            yield
        finally:
            if evaluator is not None:
                evaluator.stop()
            writer.close()
            log.info("heartbeats: %s", writer.statistics())

    return lifespan


async def _signed_request(request: Request, limit: int) -> _store.SignedRequest:
    body = await _read_body(request, limit)
    h = request.headers
    return _store.SignedRequest(
        method=request.method,
        path=request.url.path,
        host_id=h.get(HOST_HEADER, ""),
        date=h.get(DATE_HEADER, ""),
        nonce=h.get(NONCE_HEADER, ""),
        signature=h.get(SIGNATURE_HEADER, ""),
        body=body,
    )


def _heartbeat_of(body: bytes) -> Heartbeat | _store.Refused:
    """The decoded heartbeat, or the 422 to answer once the request is authenticated (not before: an
    unsigned request is a 401 whatever its body): for what does not decode, and for what a column of
    its own cannot hold (a number past BIGINT; schemathesis found the 500; an agent version past its
    column, which PostgreSQL refuses and would fail the heartbeat's whole batch)."""
    try:
        beat = decode_heartbeat(body)
    except ValueError as e:
        return _store.Refused(422, str(e))
    for name in STORED_INTEGERS:
        if not -INT64 <= getattr(beat, name) < INT64:
            return _store.Refused(422, f"heartbeat: {name}: out of the 64-bit range")
    if len(beat.health.version) > AGENT_VERSION_CHARS:
        return _store.Refused(422, f"heartbeat: health.version: more than {AGENT_VERSION_CHARS} characters")
    return beat


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "Content-Length: not a number")
        if int(declared) > limit:
            raise _Refused(413, f"body of {declared} bytes, at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, tp: type[T], what: str) -> T:
    try:
        return msgspec.json.decode(body, type=tp)
    except msgspec.DecodeError as e:
        raise _Refused(422, f"{what}: {e}") from e


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _doc(body: type | None, ok: int, answer: type, *errors: int) -> dict[str, Any]:
    """An operation's request body and answers for /openapi.json, from the msgspec types that decode and
    encode them (their components are merged into the document's by `_with_components`): every status
    the handler can answer, each error an `Error`, 503 with its Retry-After."""
    responses: dict[str, Any] = {str(ok): {"description": "done", "content": _content(answer)}}
    for status in errors:
        responses[str(status)] = {"description": _WHY[status], "content": _content(Error)}
    if 503 in errors:
        responses["503"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "required": True}}
    doc: dict[str, Any] = {"responses": responses}
    if body is not None:
        doc["requestBody"] = {"required": True, "content": _content(body)}
    return doc


def _content(tp: type) -> dict[str, Any]:
    (schema,), _ = msgspec.json.schema_components([tp], ref_template="#/components/schemas/{name}")
    return {"application/json": {"schema": schema}}


def _constraints(components: dict[str, Any], max_findings: int) -> None:
    """What the handlers check beyond the types, said in the schema too (found by schemathesis: the
    types alone published bodies the server refuses)."""
    beat = components["Heartbeat"]
    # decode_heartbeat reads the version first and knows one; the struct's default made it optional
    beat["properties"]["schema_version"] = {"type": "integer", "enum": [HEARTBEAT_SCHEMA_VERSION]}
    beat["required"] = sorted({*beat.get("required", ()), "schema_version"})
    for name in STORED_INTEGERS:  # stored in BIGINT columns
        beat["properties"][name] = {"type": "integer", "minimum": -INT64, "maximum": INT64 - 1}
    components["Health"]["properties"]["version"]["maxLength"] = AGENT_VERSION_CHARS
    batch = components["FindingsBatch"]["properties"]
    batch["batch_id"] = {"type": "string", "pattern": f"^{BATCH_ID.pattern}$"}
    batch["findings"]["maxItems"] = max_findings
    components["EnrollRequest"]["properties"]["hostname"].update(minLength=1, maxLength=255)


def _with_components(app: FastAPI, settings: ServerSettings) -> None:
    """/openapi.json with the msgspec types' components beside FastAPI's own."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            doc["paths"] = _with_heartbeat(doc["paths"])
            _, components = msgspec.json.schema_components(
                [
                    EnrollRequest,
                    EnrollResponse,
                    Heartbeat,
                    HeartbeatReply,
                    FindingsBatch,
                    Stored,
                    Error,
                    Ping,
                ],
                ref_template="#/components/schemas/{name}",
            )
            _constraints(components, settings.max_findings_per_batch)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_heartbeat(paths: dict[str, Any]) -> dict[str, Any]:
    """The paths with the heartbeat's operation after enroll's, as FastAPI would have written it (the
    route is Starlette's, which FastAPI does not document)."""
    operation = {
        "summary": "a host's health (signed)",
        "operationId": "heartbeat_api_v1_heartbeat_post",
        **_doc(Heartbeat, 200, HeartbeatReply, 400, 401, 403, 413, 422, 503),
    }
    out: dict[str, Any] = {}
    for path, item in paths.items():
        out[path] = item
        if path == f"{API}/enroll":
            out[f"{API}/heartbeat"] = {"post": operation}
    return out
