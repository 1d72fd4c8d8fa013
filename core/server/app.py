"""The HTTP face of the control plane: middleware, the one error map, and the app that mounts the
operator and agent routers, the push stream, ``/metrics``, the dashboard and the offline API docs.

Every error is a JSON body ``{"error": {"code", "message"}}`` with a 4xx status for bad input,
never a stack trace.  Bodies are bounded in size and in the time they take to arrive.
"""

# Annotations are evaluated eagerly here: FastAPI reads the routes' types from them.

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..control import ControlPlane
from ..control.background import Background
from ..control.drills import Canary
from ..errors import M99Error, NotFound
from ..store import StoreError
from .errors import error_response, json_error, validation_response
from .metrics import Metrics
from .routers.agents import agent_router
from .routers.operators import operator_router
from .schemas import HeartbeatIn
from .stream import OperatorHub, PushHub

log = logging.getLogger("m99.server")

MAX_BODY = 64 * 1024
BODY_TIMEOUT = 10.0  # seconds a request's declared body may take to arrive
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HeartbeatFastPath:
    """``POST /api/agents/{id}/heartbeat`` without the framework's routing and dependency machinery,
    for agents this replica knows: the same model bounds the body and the same errors come back, at a
    third of the cost, because every agent sends one of these every interval.  Anything else (an agent
    registered on another replica, a change of frameworks) goes on to the route, off the loop."""

    PREFIX, SUFFIX = "/api/agents/", "/heartbeat"

    def __init__(self, app: ASGIApp, cp: ControlPlane, counters: dict[str, int]) -> None:
        self.app, self.cp, self.counters = app, cp, counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        message = await receive()  # BodyLimit in front hands over the whole body at once
        raw = message.get("body", b"")
        response: Response
        try:
            body = json.loads(raw)
            HeartbeatIn.model_validate(body)
        except ValidationError as exc:
            response = validation_response(exc.errors())
        except ValueError as exc:
            response = json_error(400, "malformed_json", f"the request body is not valid JSON: {exc}")
        else:
            source = scope["client"][0] if scope.get("client") else ""
            try:
                agent = self.cp.liveness.heartbeat(agent_id, body, source)
            except LookupError:  # the frameworks changed: the route records that, off the loop
                await self.app(scope, _replay(raw, receive), send)
                return
            except NotFound:  # maybe registered on another replica a moment ago: the route looks it up
                await self.app(scope, _replay(raw, receive), send)
                return
            except (M99Error, StoreError) as exc:
                response = error_response(exc)
            else:
                self.counters["heartbeats"] += 1
                await Response(self.cp.heartbeat_answer(agent), media_type="application/json")(scope, receive, send)
                return
        self.counters["heartbeats_rejected"] += 1
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def again() -> Any:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, and bodies that do not arrive within
    ``timeout`` seconds with 408, before anything parses them.  The whole body is handed on in one
    piece, so a refusal can never be mistaken for a parse error inside it."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY, timeout: float = BODY_TIMEOUT) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await json_error(413, "too_large", f"request body over {self.limit} bytes")(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except TimeoutError:
                response = json_error(408, "body_timeout", f"the request body did not arrive within {self.timeout:g} s")
                response.headers["Connection"] = "close"
                await response(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await json_error(413, "too_large", f"request body over {self.limit} bytes")(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


# The dashboard's own files (a fixed list: nothing else under static/ is served), and headers that keep
# anything an agent managed to smuggle into a value from running: scripts only from these files, no
# inline script or handler, no framing (clickjacking the kill switch), no referrer.
DASHBOARD_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# The API docs' pages load only from this server: ReDoc's bundle, for one, fetches its logo from the
# vendor's CDN (it hides the image when that fails).
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _offline(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page


def _docs_assets() -> Path | None:
    """Swagger UI and ReDoc, from a package that ships them (no CDN: the docs work offline)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    path = Path(fastapi_offline.__file__).parent / "static"
    return path if path.is_dir() else None


def start_canary(cp: ControlPlane, hub: PushHub) -> None:
    """The canary on this server's own push path (``m99 serve --canary SECONDS``)."""
    if not cp.settings.canary or not cp.self_url:
        return
    from ..crypto import VerifyKey
    from ..protocol import sign_event

    cp.canary = Canary(
        cp.self_url,
        VerifyKey(cp.key.public_bytes),
        lambda event: sign_event(cp.key, event),
        hub.publish,
        cp.settings.canary,
    )
    cp.canary.start()


def create_app(cp: ControlPlane, *, deadman_period: float | None = None) -> FastAPI:
    hub = PushHub()
    cp.state.subscribe(hub.publish)
    operators = OperatorHub()
    cp.feed.subscribe(operators.publish)
    counters = {"heartbeats": 0, "heartbeats_rejected": 0, "requests_refused": 0, "acks": 0, "ack_requests": 0}
    background = Background(cp, deadman_period=deadman_period)
    gauges = Metrics(cp, hub, counters)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        operators.bind(asyncio.get_running_loop())
        cp.serving()
        background.start()
        gauges.start()
        tasks = [asyncio.create_task(hub.keep_alive()), asyncio.create_task(operators.ticks())]
        start_canary(cp, hub)
        try:
            yield
        finally:
            if cp.canary is not None:
                cp.canary.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            cp.feed.unsubscribe(operators.publish)
            await asyncio.get_running_loop().run_in_executor(None, gauges.stop)
            await asyncio.get_running_loop().run_in_executor(None, background.stop)

    app = FastAPI(
        title="M99 control plane",
        version=__version__,
        lifespan=lifespan,
        description=(
            "An emergency stop for AI agents: two-phase ARM/EXECUTE, six levels, a signed audit chain. "
            "Operator routes take `Authorization: Bearer <token>`; agent routes are Ed25519-signed."
        ),
        docs_url=None,
        redoc_url=None,
    )
    app.state.cp = cp
    app.state.hub = hub
    app.state.counters = counters
    app.state.background = background

    @app.exception_handler(M99Error)
    async def m99_error(request: Request, exc: M99Error) -> JSONResponse:
        response = error_response(exc)
        if 400 <= response.status_code < 500:
            counters["requests_refused"] += 1
        return response

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("m99: store error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        counters["requests_refused"] += 1
        return validation_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return json_error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_error(500, "internal", "internal error: see the server log")

    app.add_middleware(HeartbeatFastPath, cp=cp, counters=counters)
    app.add_middleware(BodyLimit, timeout=cp.settings.body_timeout)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/canary/events", include_in_schema=False)
    async def canary_events(request: Request) -> Response:
        """The canary's stream (its secret only): the server's own pushes to it, as agents get theirs."""
        import hmac

        canary = cp.canary
        given = request.headers.get("x-m99-canary", "")
        if canary is None or not hmac.compare_digest(given.encode(), canary.secret.encode()):
            raise NotFound("no such stream")
        queue = hub.add(Canary.NAME)

        async def frames() -> AsyncIterator[bytes]:
            try:
                yield b": canary\n\n"
                while (frame := await queue.get()) is not None:
                    yield frame
            finally:
                hub.remove(Canary.NAME, queue)

        return StreamingResponse(frames(), media_type="text/event-stream")

    app.include_router(agent_router(cp, hub, counters))
    app.include_router(operator_router(cp, operators))

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text: in-memory counters only, no store work per request (it is unauthenticated)."""
        return Response(gauges.render(), media_type=Metrics.CONTENT_TYPE)

    static = resources.files("m99.server").joinpath("static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> Response:
        return HTMLResponse(static.joinpath("dashboard.html").read_text(), headers=DASHBOARD_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        media = DASHBOARD_ASSETS.get(name)
        if media is None:
            raise NotFound(f"no dashboard asset {name!r}")
        return Response(static.joinpath(name).read_bytes(), media_type=media, headers=DASHBOARD_HEADERS)

    assets = _docs_assets()
    if assets is not None:
        app.mount("/_docs", StaticFiles(directory=assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return _offline(
                get_swagger_ui_html(
                    openapi_url="/openapi.json",
                    title="M99 control plane — API",
                    swagger_js_url="/_docs/swagger-ui-bundle.js",
                    swagger_css_url="/_docs/swagger-ui.css",
                    swagger_favicon_url="/_docs/favicon.png",
                )
            )

        @app.get("/redoc", include_in_schema=False)
        async def redoc() -> HTMLResponse:
            return _offline(
                get_redoc_html(
                    openapi_url="/openapi.json",
                    title="M99 control plane — API",
                    redoc_js_url="/_docs/redoc.standalone.js",
                    redoc_favicon_url="/_docs/favicon.png",
                    with_google_fonts=False,
                )
            )

    return app
