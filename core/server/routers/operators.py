"""The operators' REST API: every route needs a token, and its role decides what it may do.

Routes that touch the store are plain functions, run off the event loop (the web framework's
thread pool), so the loop that serves agents' heartbeats and pushes never waits on the database.
Large answers are serialised once, straight to JSON.
"""

# Annotations are evaluated eagerly here: FastAPI reads the routes' types (and the local `Who`) from them.

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ...control import ControlPlane, Principal
from ...errors import RateLimited
from ...levels import Role
from ...protocol import MAX_INT
from ..schemas import (
    ArmIn,
    BreakGlassAckIn,
    BreakGlassIn,
    DisarmIn,
    DrillIn,
    DrillScheduleIn,
    ExecuteIn,
    ForgetIn,
    PolicyCommandIn,
    ScopeActIn,
    TokenIn,
)
from ..stream import OperatorHub, OperatorStream

__all__ = ["operator_router", "principal_dependency"]


def source_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def principal_dependency(cp: ControlPlane) -> Any:
    def principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
        who = cp.tokens.authenticate(bearer(authorization), source_of(request))
        # An enrolment (agent-role) token registers agents and does nothing else.
        cp.tokens.require(who, Role.VIEWER, f"{request.method} {request.url.path}")
        cp.breakglass.gate(who, request.method, request.url.path)
        return who

    return principal


def operator_router(cp: ControlPlane, operators: OperatorHub) -> APIRouter:
    router = APIRouter(prefix="/api")
    Who = Annotated[Principal, Depends(principal_dependency(cp))]

    @router.get(
        "/events",
        response_class=Response,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    )
    def events(who: Who) -> Response:
        """What changed, as it happens (Server-Sent Events): a ``hello``, then ``change`` events naming
        the kinds that changed (agents, directives, authorizations, executions, tokens, audit) and a
        ``tick`` every 5 s.  Clients fetch what they show when it changes; nothing is polled."""
        if len(operators.queues) >= operators.MAX_CONNECTIONS:
            raise RateLimited("too many operator streams open: close one", retry_after=5.0)
        hello = {"type": "hello", "token": who.name, "role": who.role.label, "version": cp.state.version}
        return OperatorStream(operators, json.dumps(hello).encode())

    @router.get("/status")
    def status(who: Who) -> Response:
        return Response(cp.views.status_json(), media_type="application/json")

    @router.post("/arm")
    def arm(body: ArmIn, who: Who) -> JSONResponse:
        return JSONResponse(cp.arm(who, body.model_dump(exclude_unset=True)))

    @router.post("/execute")
    def execute(body: ExecuteIn, who: Who) -> JSONResponse:
        return JSONResponse(cp.execute(who, body.authorization_id, body.confirm))

    @router.post("/drill")
    def drill(body: DrillIn, who: Who) -> JSONResponse:
        """A drill: arm and execute on ``scope`` at L1-L3, audited as a real invocation with origin
        ``drill`` (``m99 drill`` then measures, restores and fetches the case pack)."""
        return JSONResponse(cp.drill(who, body.model_dump()))

    @router.get("/drills")
    def drills(who: Who) -> JSONResponse:
        return JSONResponse(cp.drills.status())

    @router.post("/drills/schedule")
    def drill_schedule(body: DrillScheduleIn, who: Who) -> JSONResponse:
        return JSONResponse(cp.drills.schedule(who, body.every_seconds, body.by))

    @router.post("/breakglass")
    def breakglass_create(body: BreakGlassIn, who: Who) -> JSONResponse:
        """A sealed, single-use credential that may only arm and execute a kill (shown once)."""
        return JSONResponse(cp.breakglass.create(who, body.by))

    @router.post("/breakglass/ack")
    def breakglass_ack(body: BreakGlassAckIn, who: Who) -> JSONResponse:
        return JSONResponse(cp.breakglass.acknowledge(who, body.token_id, body.by))

    @router.post("/disarm")
    def disarm(who: Who, body: DisarmIn | None = None) -> JSONResponse:
        return JSONResponse(cp.disarm(who, (body or DisarmIn()).model_dump()))

    @router.post("/restore")
    def restore(body: ScopeActIn, who: Who) -> JSONResponse:
        return JSONResponse(cp.restore(who, body.model_dump()))

    @router.post("/lift")
    def lift(body: ScopeActIn, who: Who) -> JSONResponse:
        return JSONResponse(cp.lift(who, body.model_dump()))

    @router.post("/policy/{op}")
    def policy_command(op: Annotated[str, Path(max_length=20)], body: PolicyCommandIn, who: Who) -> JSONResponse:
        """An agent's KILLSWITCH.md: ``resume`` or ``escalate`` (operator role), ``override`` one
        trigger for ``seconds`` (authority role); audited, then pushed signed to the agent."""
        return JSONResponse(cp.policy_commands.command(who, op, body.model_dump(exclude_none=True)))

    @router.get("/authorizations")
    def authorizations(who: Who, status: Annotated[str | None, Query(max_length=20)] = None) -> JSONResponse:
        return JSONResponse(cp.authorizations.list(status))

    @router.get("/authorizations/{auth_id}")
    def authorization(auth_id: str, who: Who) -> JSONResponse:
        return JSONResponse(cp.authorizations.get(auth_id))

    @router.get("/policy/budgets")
    def policy_budgets(who: Who, days: Annotated[int, Query(ge=1, le=31)] = 2) -> JSONResponse:
        """The fleet budgets of the last ``days`` UTC days: each scope's grants and spend, per agent."""
        return JSONResponse(cp.budgets.view(days))

    @router.get("/executions")
    def executions(who: Who, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JSONResponse:
        return JSONResponse(cp.executions.list(limit))

    @router.get("/executions/{execution_id}")
    def execution(execution_id: str, who: Who) -> JSONResponse:
        return JSONResponse(cp.executions.get(execution_id))

    @router.get("/executions/{execution_id}/evidence")
    def execution_evidence(execution_id: str, who: Who) -> JSONResponse:
        """The signed snapshots kept for an execution: the control plane's at execute, and each agent's
        taken before its kill (signed with its registered key)."""
        return JSONResponse(cp.evidence.list(execution_id))

    @router.get(
        "/executions/{execution_id}/casepack",
        response_class=Response,
        responses={200: {"content": {"application/zip": {}}, "description": "the case pack (a zip)"}},
    )
    def execution_casepack(execution_id: str, who: Who) -> Response:
        """The execution's case pack: one signed zip that ``m99 casepack verify`` checks offline."""
        data = cp.evidence.casepack(execution_id, cp.key, cp.executions.view)
        headers = {"Content-Disposition": f'attachment; filename="{execution_id}.casepack.zip"'}
        return Response(data, media_type="application/zip", headers=headers)

    @router.get("/agents")
    def agents(who: Who, all: bool = False) -> Response:
        return Response(cp.views.agents_json(include_stopped=all), media_type="application/json")

    @router.get("/agents/{name:path}")
    def agent(name: str, who: Who) -> JSONResponse:
        return JSONResponse(cp.get_agent(name))

    @router.post("/agents/{name:path}/forget")
    def forget(name: str, body: ForgetIn, who: Who) -> JSONResponse:
        return JSONResponse(cp.forget_agent(who, name, body.model_dump()))

    @router.get("/audit")
    def audit_entries(
        who: Who,
        after: Annotated[int, Query(ge=-1, le=MAX_INT)] = -1,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        return JSONResponse(cp.audit_page(after, limit))

    @router.get("/audit/verify")
    def audit_verify(who: Who) -> JSONResponse:
        return JSONResponse(cp.verify_audit().to_dict())

    @router.get("/audit/anchor")
    def audit_anchor(who: Who) -> JSONResponse:
        return JSONResponse(cp.anchor())

    @router.get("/audit/export")
    def audit_export(who: Who) -> StreamingResponse:
        return StreamingResponse(cp.export_audit(), media_type="application/x-ndjson")

    @router.post("/tokens")
    def token_create(body: TokenIn, who: Who) -> JSONResponse:
        return JSONResponse(
            cp.tokens.create(
                who, body.name, body.role, name_prefix=body.name_prefix, kind=body.kind, rebind=body.rebind
            )
        )

    @router.get("/tokens")
    def token_list(who: Who) -> JSONResponse:
        return JSONResponse(cp.tokens.list(who))

    @router.delete("/tokens/{token_id}")
    def token_revoke(token_id: str, who: Who) -> JSONResponse:
        return JSONResponse(cp.tokens.revoke(who, token_id))

    return router
