"""The REST API, push stream and dashboard of ``m99 serve``: a thin FastAPI layer over
``ControlPlane``.  Every error is a JSON body ``{"error": {"code", "message"}}`` with a 4xx
status for bad input, never a stack trace.
"""

# Annotations are evaluated eagerly here: FastAPI resolves the local `Who` dependency from them.

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..control import ControlPlane, Principal
from ..errors import ControlPlaneError, M99Error
from .stream import EventStream, PushHub

log = logging.getLogger("m99.server")

MAX_BODY = 64 * 1024
MAX_ACKS = 1000  # per batch; in practice MAX_BODY holds about 250
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CredentialIn(Strict):
    label: str = Field(min_length=1, max_length=128)
    fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    kind: str = Field(default="secret", pattern=r"^(env|secret|attribute)$")


class RegisterIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    kind: str = Field(default="agent", min_length=1, max_length=128)
    framework: str | None = Field(default=None, max_length=128)
    pid: int | None = Field(default=None, ge=0)
    host: str | None = Field(default=None, max_length=255)
    public_key: str = Field(min_length=40, max_length=64)
    read_only_tools: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=1000)
    credentials: list[CredentialIn] = Field(default_factory=list, max_length=1000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class SignedIn(Strict):
    seq: int = Field(ge=1)
    ts: float
    signature: str = Field(min_length=1, max_length=200)


class AckIn(SignedIn):
    version: int = Field(ge=0)
    applied_at: float


class AgentAckIn(AckIn):
    agent_id: str = Field(min_length=1, max_length=100)


class AckBatchIn(Strict):
    acks: list[AgentAckIn] = Field(min_length=1, max_length=MAX_ACKS)


class ArmIn(Strict):
    by: str = Field(min_length=1, max_length=320)
    reason: str = Field(min_length=1, max_length=2000)
    level: int = Field(default=3, ge=1, le=6)
    scope: str = Field(default="global", max_length=200)
    window: float = Field(default=300.0)


class ExecuteIn(Strict):
    authorization_id: str = Field(min_length=1, max_length=100)
    confirm: str | None = Field(default=None, max_length=300)
    force: bool = True


class DisarmIn(Strict):
    authorization_id: str | None = Field(default=None, max_length=100)
    by: str | None = Field(default=None, max_length=320)
    reason: str | None = Field(default=None, max_length=2000)


class ScopeActIn(Strict):
    scope: str = Field(max_length=200)
    by: str = Field(min_length=1, max_length=320)
    reason: str = Field(min_length=1, max_length=2000)


class TokenIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    role: str = Field(max_length=20)


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


FLUSH_PERIOD = 0.1


def validation_response(errors: Sequence[Any]) -> JSONResponse:
    """One readable 4xx for a body that failed its model: 400 for bad JSON, 422 otherwise."""
    problems = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if err.get("type") == "json_invalid":
            return _error(400, "malformed_json", f"the request body is not valid JSON: {err.get('msg')}")
        problems.append(
            f"{where}: unknown field" if err.get("type") == "extra_forbidden" else f"{where}: {err.get('msg')}"
        )
    return _error(422, "invalid", "; ".join(problems) or "invalid request", fields=problems)


def error_response(exc: M99Error) -> JSONResponse:
    status = exc.status_code if isinstance(exc, ControlPlaneError) else 500
    code = exc.code if isinstance(exc, ControlPlaneError) and exc.code else type(exc).__name__
    return _error(status, code, exc.message)


class HeartbeatFastPath:
    """``POST /api/agents/{id}/heartbeat`` without the framework's routing and dependency
    machinery: the same model validates the body and the same errors come back, at a third of
    the cost, because every agent sends one of these every interval."""

    PREFIX, SUFFIX = "/api/agents/", "/heartbeat"

    def __init__(self, app: ASGIApp, cp: ControlPlane, counters: dict[str, int]) -> None:
        self.app, self.cp, self.counters = app, cp, counters

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.startswith(self.PREFIX)
            or not path.endswith(self.SUFFIX)
        ):
            await self.app(scope, receive, send)
            return
        agent_id = path[len(self.PREFIX) : -len(self.SUFFIX)]
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        response: Response
        try:
            body = SignedIn.model_validate_json(b"".join(chunks))
            agent = self.cp.heartbeat(agent_id, body.model_dump())
            response = Response(self.cp.heartbeat_answer(agent), media_type="application/json")
            self.counters["heartbeats"] += 1
        except ValidationError as exc:
            response = validation_response(exc.errors())
            self.counters["heartbeats_rejected"] += 1
        except M99Error as exc:
            response = error_response(exc)
            self.counters["heartbeats_rejected"] += 1
        await response(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before anything parses them.

    Bodies are small here, so the whole body is read first (chunked ones too) and handed to
    the app in one piece; a refusal can then never be mistaken for a parse error inside it.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = _error(413, "too_large", f"request body over {self.limit} bytes")
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await too_large(scope, receive, send)
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(cp: ControlPlane, *, deadman_period: float | None = None) -> FastAPI:
    hub = PushHub()
    cp.subscribe(hub.publish)
    # One thread checks acknowledgement signatures (they release the GIL): a flood of them after a
    # fleet-wide change then takes one core at most, never every core the next kill needs.
    ack_checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m99-ack-check")
    counters = {"heartbeats": 0, "heartbeats_rejected": 0, "requests_refused": 0, "acks": 0, "ack_requests": 0}
    period = deadman_period or max(0.05, min(1.0, cp.settings.heartbeat_interval / 4))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        cp.serving()

        async def deadman() -> None:
            next_check = time.monotonic() + period
            while True:
                await asyncio.sleep(FLUSH_PERIOD)
                try:
                    cp.flush_heartbeats()
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + period
                        cp.check_deadman()
                except Exception:  # keep watching: one failed round must not disable the switch
                    log.exception("heartbeat flush or dead man's switch check failed")

        tasks = [asyncio.create_task(deadman()), asyncio.create_task(hub.keep_alive())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            ack_checker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="M99 control plane",
        version=__version__,
        lifespan=lifespan,
        description="An emergency stop for AI agents: two-phase ARM/EXECUTE, six levels, audit chain.",
    )
    app.state.cp = cp
    app.state.hub = hub
    app.state.counters = counters

    @app.exception_handler(M99Error)
    async def m99_error(request: Request, exc: M99Error) -> JSONResponse:
        response = error_response(exc)
        if 400 <= response.status_code < 500:
            counters["requests_refused"] += 1
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal error: see the server log")

    app.add_middleware(HeartbeatFastPath, cp=cp, counters=counters)
    app.add_middleware(BodyLimit)

    def principal(authorization: Annotated[str | None, Header()] = None) -> Principal:
        token = None
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        return cp.authenticate(token)

    Who = Annotated[Principal, Depends(principal)]

    def viewer(who: Who) -> Principal:
        return who

    # ---------------------------------------------------------------- operator API
    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/status")
    async def status(who: Who) -> dict[str, Any]:
        return cp.status()

    @app.post("/api/arm")
    async def arm(body: ArmIn, who: Who) -> dict[str, Any]:
        return cp.arm(who, body.model_dump())

    @app.post("/api/execute")
    async def execute(body: ExecuteIn, who: Who) -> dict[str, Any]:
        result = cp.execute(who, body.authorization_id, body.confirm)
        # Yield once before answering: every push stream the kill woke writes its event first, and
        # only then is the operator's answer (thousands of agent names, for a fleet) serialised.
        await asyncio.sleep(0)
        return result

    @app.post("/api/disarm")
    async def disarm(who: Who, body: DisarmIn | None = None) -> dict[str, Any]:
        return cp.disarm(who, (body or DisarmIn()).model_dump())

    @app.post("/api/restore")
    async def restore(body: ScopeActIn, who: Who) -> dict[str, Any]:
        return cp.restore(who, body.model_dump())

    @app.post("/api/lift")
    async def lift(body: ScopeActIn, who: Who) -> dict[str, Any]:
        return cp.lift(who, body.model_dump())

    @app.get("/api/authorizations")
    async def authorizations(who: Who, status: str | None = None) -> list[dict[str, Any]]:
        return cp.list_authorizations(status)

    @app.get("/api/authorizations/{auth_id}")
    async def authorization(auth_id: str, who: Who) -> dict[str, Any]:
        return cp.get_authorization(auth_id)

    @app.get("/api/executions")
    async def executions(who: Who) -> list[dict[str, Any]]:
        return cp.list_executions()

    @app.get("/api/executions/{execution_id}")
    async def execution(execution_id: str, who: Who) -> dict[str, Any]:
        return cp.get_execution(execution_id)

    @app.get("/api/agents")
    async def agents(who: Who) -> list[dict[str, Any]]:
        return cp.list_agents()

    @app.get("/api/agents/{name}")
    async def agent(name: str, who: Who) -> dict[str, Any]:
        return cp.get_agent(name)

    @app.get("/api/audit")
    async def audit_entries(who: Who, after: int = -1, limit: int = 100) -> list[dict[str, Any]]:
        rows = cp.store.audit_page(after, max(1, min(limit, 1000)))
        return [{"seq": r["seq"], "hash": r["hash"], **json.loads(r["body"])} for r in rows]

    @app.get("/api/audit/verify")
    async def audit_verify(who: Who) -> dict[str, Any]:
        return cp.verify_audit().to_dict()

    @app.get("/api/audit/export")
    async def audit_export(who: Who) -> StreamingResponse:
        from .. import audit

        checkpoints = [
            audit.Checkpoint(r["seq"], r["hash"], r["ts"], r["signature"]) for r in cp.store.list_checkpoints()
        ]
        lines = audit.export_jsonl(cp.store.iter_audit(), checkpoints, cp.key.public_b64)
        return StreamingResponse((line + "\n" for line in lines), media_type="application/x-ndjson")

    @app.post("/api/tokens")
    async def token_create(body: TokenIn, who: Who) -> dict[str, Any]:
        return cp.create_token(who, body.name, body.role)

    @app.get("/api/tokens")
    async def token_list(who: Who) -> list[dict[str, Any]]:
        return cp.list_tokens(who)

    @app.delete("/api/tokens/{token_id}")
    async def token_revoke(token_id: str, who: Who) -> dict[str, Any]:
        return cp.revoke_token(who, token_id)

    # ---------------------------------------------------------------- agent API (signed, no operator token)
    @app.post("/api/agents/register")
    async def register(body: RegisterIn) -> dict[str, Any]:
        return cp.register(body.model_dump())

    @app.post("/api/agents/{agent_id}/heartbeat")
    async def heartbeat(agent_id: str, body: SignedIn) -> Response:
        # Served by HeartbeatFastPath; this route documents it in the OpenAPI schema.
        return Response(cp.heartbeat_answer(cp.heartbeat(agent_id, body.model_dump())), media_type="application/json")

    @app.post("/api/agents/{agent_id}/deregister")
    async def deregister(agent_id: str, body: SignedIn) -> dict[str, Any]:
        return cp.deregister(agent_id, body.model_dump())

    @app.post("/api/agents/{agent_id}/ack")
    async def ack(agent_id: str, body: AckIn) -> dict[str, Any]:
        counters["ack_requests"] += 1
        result = cp.acknowledge(agent_id, body.model_dump())
        counters["acks"] += 1
        return result

    @app.post("/api/acks")
    async def acks(body: AckBatchIn) -> dict[str, Any]:
        """Signed acknowledgements of several agents at once (each ``{agent_id, seq, ts, version,
        applied_at, signature}``); the answer lists each one's outcome."""
        acks = [ack.model_dump() for ack in body.acks]
        counters["ack_requests"] += 1
        checked = await asyncio.get_running_loop().run_in_executor(ack_checker, cp.ack_signatures, acks)
        result = cp.acknowledge_batch(acks, checked)
        counters["acks"] += sum(1 for r in result["results"] if r["ok"])
        return result

    @app.get("/api/agents/{agent_id}/state")
    async def agent_state(agent_id: str) -> dict[str, Any]:
        return cp.agent_state(agent_id)

    @app.get("/api/agents/{agent_id}/events", response_class=EventStream)
    async def events(agent_id: str) -> EventStream:
        """The agent's push stream (Server-Sent Events): its signed state document, then each signed
        directive event that concerns it, and a keep-alive comment every 15 s."""
        return EventStream(cp, hub, cp.agent_by_id(agent_id))

    # ---------------------------------------------------------------- metrics and dashboard
    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        agents = cp.list_agents()
        lines = [
            "# TYPE m99_agents gauge",
            *(
                f'm99_agents{{status="{s}"}} {sum(1 for a in agents if a["status"] == s)}'
                for s in ("active", "stopped", "silent", "tombstoned")
            ),
            "# TYPE m99_agents_held gauge",
            f"m99_agents_held {sum(1 for a in agents if a['level'] > 0)}",
            "# TYPE m99_state_version gauge",
            f"m99_state_version {cp.version}",
            "# TYPE m99_active_directives gauge",
            f"m99_active_directives {len(cp.directives)}",
            "# TYPE m99_heartbeats_total counter",
            f"m99_heartbeats_total {counters['heartbeats']}",
            "# TYPE m99_heartbeats_rejected_total counter",
            f"m99_heartbeats_rejected_total {counters['heartbeats_rejected']}",
            "# TYPE m99_requests_refused_total counter",
            f"m99_requests_refused_total {counters['requests_refused']}",
            "# TYPE m99_acks_total counter",
            f"m99_acks_total {counters['acks']}",
            "# TYPE m99_ack_requests_total counter",
            f"m99_ack_requests_total {counters['ack_requests']}",
            "# TYPE m99_push_connections gauge",
            f"m99_push_connections {hub.connections}",
            "# TYPE m99_audit_head_seq gauge",
            f"m99_audit_head_seq {cp.status()['audit_head']['seq']}",
            "# TYPE m99_uptime_seconds gauge",
            f"m99_uptime_seconds {time.time() - cp.started_at:.1f}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def dashboard() -> Response:
        page = resources.files("m99.server").joinpath("static/dashboard.html").read_text()
        return HTMLResponse(page)

    return app
