"""Evidence of every halt: the control plane's own signed snapshot at execute, and the agents' signed
snapshots, checked against their registered keys and kept per execution.

The server's snapshot is written in the execution's unit of work (it commits with the kill, or not at
all): the authorisation, and every agent in scope with its last heartbeat, lease and level.  An
agent's snapshot arrives after its kill (the freeze never waits for it): it is accepted only when
signed by the key of a registration the execution put in scope, for executions that exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..crypto import SigningKey
from ..errors import BadRequest, Conflict, ControlPlaneError, NotFound
from ..protocol import sign_document
from ..store import Store
from ..store.records import AuthorizationRecord, EvidenceRecord
from .agents import Agent, Registry, iso
from .liveness import Liveness
from .settings import Settings

__all__ = ["MAX_EXECUTION_IDS", "EvidenceKeeper", "server_snapshot"]

MAX_EXECUTION_IDS = 16
MAX_SLICE = 200_000  # audit entries scanned for an execution's slice


def server_snapshot(
    key: SigningKey,
    settings: Settings,
    agents: list[Agent],
    levels: dict[str, int],
    *,
    execution: dict[str, Any],
    authorization: AuthorizationRecord | None,
    actor: dict[str, Any],
    token_name: str,
    at: float,
) -> EvidenceRecord:
    """The control plane's signed snapshot of an execution as it fires."""
    auth = None
    if authorization is not None:
        auth = {
            "id": authorization.id,
            "armed_by": authorization.by_email,
            "armed_with_token": authorization.token_name,
            "armed_token_id": authorization.token_id,
            "armed_role": authorization.role,
            "armed_at": iso(authorization.created_at),
            "expires_at": iso(authorization.expires_at),
            "reason": authorization.reason,
        }
    lease = settings.lease
    document = {
        "type": "server.snapshot",
        **execution,
        "taken_at": at,
        "authorization": auth,
        "executed_by": {"actor": actor, "token_name": token_name},
        "halt_slo_seconds": settings.halt_slo,
        "agents": [
            {
                "name": a.name,
                "agent_id": a.agent_id,
                "kind": a.kind,
                "frameworks": list(a.frameworks),
                "host": a.host,
                "pid": a.pid,
                "public_key": a.public_key,
                "status": a.status,
                "last_heartbeat": iso(a.last_seen),
                "last_heartbeat_ts": a.last_seen,
                "seconds_since_heartbeat": round(max(0.0, at - a.last_seen), 3),
                "lease_expires": iso(a.last_seen + lease),
                "level_before": levels.get(a.name, 0),
            }
            for a in agents
        ],
    }
    signed = sign_document(key, document)
    return EvidenceRecord(str(execution["execution_id"]), "server", "", "", at, signed)


class EvidenceKeeper:
    """Accepts the agents' evidence and lists what is kept per execution."""

    def __init__(self, store: Store, registry: Registry, liveness: Liveness, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.liveness = liveness
        self.settings = settings

    def accept(self, items: list[dict[str, Any]], source: str = "") -> dict[str, Any]:
        """Signed evidence documents of one or more agents; per item, the executions it was kept for."""
        results: list[dict[str, Any]] = []
        keep: list[tuple[int, list[EvidenceRecord]]] = []
        for body in items:
            result: dict[str, Any] = {"agent_id": body.get("agent_id"), "ok": True}
            try:
                keep.append((len(results), self._checked(body, source)))
            except ControlPlaneError as exc:
                result.update(ok=False, error={"code": exc.code or type(exc).__name__, "message": exc.message})
            results.append(result)
        if keep:
            with self.store.transaction() as tx:
                for slot, records in keep:
                    kept = []
                    for record in records:
                        if tx.get_execution(record.execution_id) is None:
                            continue
                        if tx.insert_evidence(record):
                            kept.append(record.execution_id)
                    results[slot]["executions"] = kept
        return {"ok": True, "results": results}

    def _checked(self, body: dict[str, Any], source: str) -> list[EvidenceRecord]:
        agent = self.liveness.agent(str(body.get("agent_id", "")))
        signed = {k: v for k, v in body.items() if k != "agent_id"}
        self.liveness.check_signed(agent, "evidence", signed, source=source, sequenced=False)
        doc = signed.get("evidence")
        if not isinstance(doc, dict) or doc.get("type") != "agent.evidence" or doc.get("agent") != agent.name:
            raise BadRequest("evidence refused: not an agent.evidence document about the signing agent", code="bad")
        ids = doc.get("execution_ids")
        if not isinstance(ids, list) or not ids or len(ids) > MAX_EXECUTION_IDS:
            raise BadRequest(f"evidence refused: execution_ids must list 1-{MAX_EXECUTION_IDS} ids", code="bad")
        records = []
        now = time.time()
        for execution_id in ids:
            if not isinstance(execution_id, str) or len(execution_id) > 100:
                raise BadRequest("evidence refused: a bad execution id", code="bad")
            if self.liveness.targets_of(execution_id).get(agent.name) != agent.agent_id:
                continue  # this registration was not in that execution's scope
            records.append(EvidenceRecord(execution_id, "agent", agent.name, agent.agent_id, now, signed))
        if not records:
            raise NotFound("evidence refused: the agent was in the scope of none of these executions", code="scope")
        return records

    def casepack(self, execution_id: str, key: SigningKey, view: Callable[[Any, list[Any]], dict[str, Any]]) -> bytes:
        """The case pack of an execution (``m99.evidence.casepack``), signed with ``key``."""
        from .. import audit
        from ..evidence import casepack

        with self.store.snapshot() as tx:
            row = tx.get_execution(execution_id)
            if row is None:
                raise NotFound(f"unknown execution {execution_id!r}")
            acks = tx.list_acks(execution_id)
            kept = tx.list_evidence(execution_id)
            server = next((e for e in kept if e.kind == "server"), None)
            if server is None:
                raise Conflict(f"execution {execution_id} has no server snapshot (fired before evidence was kept)")
            snapshot = server.document.get("document") or {}
            start = int(snapshot.get("audit_after", -1)) + 1
            rows = self._slice(tx, execution_id, start)
            before = list(tx.iter_audit(rows[0][0] - 1, rows[0][0])) if rows and rows[0][0] > 0 else []
        prev = before[0][2] if before else audit.GENESIS_PREV
        targets = row.targets
        return casepack.build(
            key,
            execution=view(row, acks),
            authorization={"armed": snapshot.get("authorization"), "executed": snapshot.get("executed_by")},
            server_snapshot=server.document,
            receipts=[
                {
                    "agent": a.agent,
                    "agent_id": a.agent_id,
                    "acked_at": iso(a.acked_at),
                    "time_to_halt_ms": round(a.time_to_halt_ms, 3),
                    "signed": a.receipt,
                }
                for a in acks
                if targets.get(a.agent) == a.agent_id and isinstance(a.receipt, dict) and "signature" in a.receipt
            ],
            evidence=[
                {"agent": e.agent, "agent_id": e.agent_id, "signed": e.document} for e in kept if e.kind == "agent"
            ],
            agent_keys={
                a["name"]: {"agent_id": a["agent_id"], "public_key": a["public_key"]}
                for a in snapshot.get("agents", [])
            },
            audit_rows=rows,
            audit_prev=prev,
            created_at=audit.utc_now_iso(),
        )

    @staticmethod
    def _slice(tx: Any, execution_id: str, start: int) -> list[tuple[int, bytes, str]]:
        """The audit entries from the execution's start to the last one that names it (bounded)."""
        needle = f'"execution_id":"{execution_id}"'.encode()
        rows: list[tuple[int, bytes, str]] = []
        last = -1
        for seq, body, hash_ in tx.iter_audit(start, start + MAX_SLICE):
            if not rows and not (needle in body and b'"execution.started"' in body):
                continue
            rows.append((seq, body, hash_))
            if needle in body:
                last = len(rows)
        if not rows:
            raise Conflict(f"the audit entries of execution {execution_id} were not found")
        return rows[:last]

    def list(self, execution_id: str) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            if tx.get_execution(execution_id) is None:
                raise NotFound(f"unknown execution {execution_id!r}")
            rows = tx.list_evidence(execution_id)
        return [
            {
                "execution_id": r.execution_id,
                "kind": r.kind,
                "agent": r.agent or None,
                "agent_id": r.agent_id or None,
                "received_at": iso(r.received_at),
                "signed": r.document,
            }
            for r in rows
        ]
