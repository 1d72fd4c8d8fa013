"""The agents' side of the REST API: every request is signed with the agent's Ed25519 key (the
registration with the key it binds the name to), and an enrolment token is asked for when the
server enrols by token.

Signatures are checked over the JSON the agent sent, exactly as parsed, never over a re-encoded
model: the model only bounds it (and documents it).
"""

# Annotations are evaluated eagerly here: FastAPI reads the routes' types (and the local `Who`) from them.

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ...control import ControlPlane, Principal
from ..schemas import (
    AckBatchIn,
    AckIn,
    BudgetLeaseIn,
    EvidenceIn,
    HeartbeatIn,
    PolicyReportIn,
    RegisterIn,
    SignedIn,
    Timestamp,
)
from ..stream import EventStream, PushHub
from .operators import bearer, source_of

__all__ = ["agent_router"]


async def raw_json(request: Request) -> dict[str, Any]:
    """The body exactly as the agent sent it (the route's model has validated it already)."""
    body: dict[str, Any] = json.loads(await request.body())
    return body


def agent_router(cp: ControlPlane, hub: PushHub, counters: dict[str, int]) -> APIRouter:
    router = APIRouter(prefix="/api")

    def enrolment(request: Request, authorization: str | None) -> Principal | None:
        token = bearer(authorization)
        return cp.tokens.authenticate(token, source_of(request)) if token else None

    @router.post("/agents/register")
    async def register(
        body: RegisterIn, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        """Register an agent (signed with the key the name is bound to).  With ``m99 serve --enrol token``,
        an enrolment token is needed too (``Authorization: Bearer …``)."""
        signed = await raw_json(request)
        principal = await run_in_threadpool(enrolment, request, authorization)
        answer = await run_in_threadpool(cp.register, signed, source=source_of(request), principal=principal)
        return JSONResponse(answer)

    @router.post("/agents/{agent_id}/heartbeat")
    async def heartbeat(agent_id: str, body: HeartbeatIn, request: Request) -> Response:
        """A signed heartbeat; the answer is the agent's signed state.  Most are served by a fast path in
        front of this route; this one takes the rest (an agent registered on another replica a moment
        ago, a change of frameworks), off the event loop."""
        signed = await raw_json(request)

        def slow() -> bytes:
            if cp.lookup(agent_id) is None:
                cp.liveness.agent(agent_id)  # raises the usual 404
            return cp.heartbeat_answer(cp.liveness.heartbeat_slow(agent_id, signed, source_of(request)))

        answer = await run_in_threadpool(slow)
        counters["heartbeats"] += 1
        return Response(answer, media_type="application/json")

    @router.post("/agents/{agent_id}/deregister")
    async def deregister(agent_id: str, body: SignedIn, request: Request) -> JSONResponse:
        signed = await raw_json(request)
        return JSONResponse(await run_in_threadpool(cp.deregister, agent_id, signed, source_of(request)))

    @router.post("/agents/{agent_id}/policy")
    async def policy_report(agent_id: str, body: PolicyReportIn, request: Request) -> JSONResponse:
        """A KILLSWITCH.md transition the agent's Guard already enforced (signed): recorded as an
        execution of origin ``policy`` and audited; a shutdown also fires L3 on ``agent:NAME``."""
        signed = await raw_json(request)
        return JSONResponse(await run_in_threadpool(cp.policy_report, agent_id, signed, source_of(request)))

    @router.post("/agents/{agent_id}/budget")
    async def budget_lease(agent_id: str, body: BudgetLeaseIn, request: Request) -> JSONResponse:
        """A chunk of the fleet-wide daily budget the agent's KILLSWITCH.md shares with its class or with
        every agent (``cost_limit_daily_scope``): granted only within the limit, signed by the server."""
        signed = await raw_json(request)
        return JSONResponse(await run_in_threadpool(cp.budget_lease, agent_id, signed, source_of(request)))

    @router.post("/agents/{agent_id}/ack")
    async def ack(agent_id: str, body: AckIn, request: Request) -> JSONResponse:
        signed = await raw_json(request)
        counters["ack_requests"] += 1
        result = await run_in_threadpool(cp.acknowledge, agent_id, signed, source_of(request))
        counters["acks"] += 1
        return JSONResponse(result)

    @router.post("/acks")
    async def acks(body: AckBatchIn, request: Request) -> JSONResponse:
        """Signed acknowledgements of several agents at once (each ``{agent_id, seq, ts, version,
        applied_at, signature}``); the answer lists each one's outcome."""
        signed = await raw_json(request)
        counters["ack_requests"] += 1
        result = await run_in_threadpool(cp.acknowledge_batch, signed["acks"], source_of(request))
        counters["acks"] += sum(1 for r in result["results"] if r["ok"])
        return JSONResponse(result)

    @router.post("/evidence")
    async def evidence(body: EvidenceIn, request: Request) -> JSONResponse:
        """Agents' signed evidence, taken before their kill and sent after it (each ``{agent_id, ts,
        evidence, signature}``); the answer lists, per document, the executions it was kept for."""
        signed = await raw_json(request)
        return JSONResponse(await run_in_threadpool(cp.evidence.accept, signed["items"], source_of(request)))

    @router.get("/agents/{agent_id}/state")
    def agent_state(agent_id: str) -> JSONResponse:
        return JSONResponse(cp.agent_state(agent_id))

    @router.get(
        "/agents/{agent_id}/events",
        response_class=Response,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    )
    def events(
        agent_id: str,
        request: Request,
        x_m99_timestamp: Annotated[Timestamp, Header()],
        x_m99_signature: Annotated[str, Header(max_length=200)],
    ) -> Response:
        """The agent's push stream (Server-Sent Events): its signed state document, then each signed
        directive event that concerns it, and a keep-alive comment every 15 s.  Opening it is signed
        (headers ``X-M99-Timestamp`` and ``X-M99-Signature``); a newer stream replaces the older."""
        body = {"ts": x_m99_timestamp, "signature": x_m99_signature}
        return EventStream(cp, hub, cp.open_stream(agent_id, body, source_of(request)))

    return router
