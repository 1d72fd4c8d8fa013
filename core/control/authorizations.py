"""Two-phase authorisation: ``arm`` makes a time-limited, single-use authorisation for one level on
one scope; ``execute`` (in ``executions``) consumes it; ``disarm`` cancels it.

Reads never write: an authorisation past its window reads as ``expired`` at once, and the
background thread records the expiry (``expire_due``).
"""

from __future__ import annotations

import difflib
import math
import time
from typing import Any

from ..errors import BadRequest, Conflict, NotFound
from ..levels import Level, Role, Scope, fleet_confirmation_phrase
from ..protocol import bad_text
from ..store import Store
from ..store.records import AuthorizationRecord
from .agents import Registry, iso
from .executions import Executions
from .ledger import SYSTEM_ACTOR, Ledger
from .settings import Settings
from .tokens import Principal, Tokens, checked_by_reason, new_id

__all__ = ["Authorizations"]


class Authorizations:
    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        registry: Registry,
        tokens: Tokens,
        executions: Executions,
        settings: Settings,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.registry = registry
        self.tokens = tokens
        self.executions = executions
        self.settings = settings

    def arm(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        try:
            level = Level.parse(body.get("level", 3))
            scope = Scope.parse(body.get("scope", "global"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        window = body.get("window", 300)
        if (
            not isinstance(window, int | float)
            or not math.isfinite(window)
            or not 1 <= window <= self.settings.max_window
        ):
            raise BadRequest(f"bad window {window!r}: expected 1 to {self.settings.max_window:g} seconds")
        by, reason = checked_by_reason(body.get("by"), body.get("reason"), who)
        self.tokens.require(who, level.required_role, f"arming L{int(level)} ({level.title})", by)
        in_scope = self.executions.in_scope(scope)
        if not in_scope and not body.get("allow_empty"):
            raise BadRequest(self._empty_scope(scope), code="empty_scope")
        now = time.time()
        row = AuthorizationRecord(
            new_id("auth"),
            int(level),
            str(scope),
            by,
            reason,
            who.token_id,
            who.name,
            int(who.role),
            now,
            now + float(window),
            "armed",
        )
        with self.ledger.unit() as unit:
            unit.tx.insert_authorization(row)
            unit.audit(
                "authorization.armed",
                who.actor(by),
                {
                    "authorization_id": row.id,
                    "level": int(level),
                    "scope": str(scope),
                    "reason": reason,
                    "expires_at": iso(row.expires_at),
                    "agents_in_scope": len(in_scope),
                    **({"allow_empty": True} if not in_scope else {}),
                },
            )
        return self.view(row, in_scope)

    def _empty_scope(self, scope: Scope) -> str:
        known = self.registry.all()
        if scope.kind == "global":
            return "no agent is registered: nothing to stop (pass --allow-empty to arm a pre-emptive stop anyway)"
        names = {
            "agent": [a.name for a in known],
            "class": [a.kind for a in known],
            "framework": [f for a in known for f in a.frameworks],
        }[scope.kind]
        close = difflib.get_close_matches(scope.value, sorted(set(names)), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(f'{scope.kind}:{c}' for c in close)}?" if close else ""
        return (
            f"no running agent is in scope {scope}{hint} (pass --allow-empty to arm a pre-emptive stop that "
            "holds agents registering later)"
        )

    def view(self, row: AuthorizationRecord, in_scope: list[str] | None = None) -> dict[str, Any]:
        level = Level(row.level)
        status = "expired" if row.status == "armed" and time.time() > row.expires_at else row.status
        out: dict[str, Any] = {
            "id": row.id,
            "status": status,
            "expires_at": iso(row.expires_at),
            "expires_in": round(max(0.0, row.expires_at - time.time()), 1) if status == "armed" else 0.0,
            "level": row.level,
            "level_name": level.title,
            "scope": row.scope,
            "by": row.by_email,
            "reason": row.reason,
            "token": row.token_name,
            "created_at": iso(row.created_at),
            "levels_to_fire": [f"L{n} {Level(n).title}" for n in range(1, level + 1)],
            "requires_confirmation": level == Level.FLEET_KILL,
            "execution_id": row.execution_id,
        }
        if level == Level.FLEET_KILL:
            out["confirmation_phrase"] = fleet_confirmation_phrase(Scope.parse(row.scope))
        if in_scope is not None:
            out["agents_in_scope"] = in_scope
        return out

    def get(self, auth_id: str) -> dict[str, Any]:
        with self.store.snapshot() as tx:
            row = tx.get_authorization(auth_id)
        if row is None:
            raise NotFound(f"unknown authorisation {auth_id!r}")
        return self.view(row, self.executions.in_scope(Scope.parse(row.scope)))

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            rows = tx.list_authorizations("armed" if status in ("armed", "expired") else status)
        views = [self.view(r) for r in rows]
        return [v for v in views if status is None or v["status"] == status]

    def disarm(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        auth_id = body.get("authorization_id")
        every = bool(body.get("all"))
        if not auth_id and not every:
            raise BadRequest(
                "name the authorisation to disarm (authorization_id), or disarm every armed one (all: true)"
            )
        if auth_id and every:
            raise BadRequest("give authorization_id or all, not both")
        by = body.get("by") or who.name
        reason = body.get("reason") or ""
        for label, text in (("by", by), ("reason", reason)):
            problem = bad_text(text) if isinstance(text, str) else "not text"
            if problem:
                raise BadRequest(f"bad {label}: {problem}")
        with self.store.snapshot() as tx:
            rows = [tx.get_authorization(auth_id)] if auth_id else tx.list_authorizations("armed", limit=10_000)
        if auth_id and rows[0] is None:
            raise NotFound(f"unknown authorisation {auth_id!r}")
        armed = [r for r in rows if r is not None and self.view(r)["status"] == "armed"]
        # Disarming undoes an arm: it needs the role that arming that level needs.
        needed = max((Level(r.level).required_role for r in armed), default=Role.OPERATOR)
        self.tokens.require(who, needed, "disarming" + (f" L{max(r.level for r in armed)}" if armed else ""), by)
        disarmed = []
        with self.ledger.unit() as unit:
            for row in armed:
                if unit.tx.close_authorization(row.id, "armed", "disarmed", time.time()):
                    disarmed.append(row.id)
                    unit.audit("authorization.disarmed", who.actor(by), {"authorization_id": row.id, "reason": reason})
        if auth_id and not disarmed:
            first = rows[0]
            status = self.view(first)["status"] if first is not None else "unknown"
            raise Conflict(f"authorisation {auth_id} is {status}, not armed")
        return {"disarmed": disarmed, "status": "disarmed" if disarmed else "nothing armed"}

    def expire_due(self) -> int:
        """Record the expiry of every armed authorisation past its window (the background thread)."""
        now = time.time()
        with self.store.snapshot() as tx:
            due = tx.expired_authorizations(now)
        if not due:
            return 0
        with self.ledger.unit() as unit:
            for auth_id in due:
                if unit.tx.close_authorization(auth_id, "armed", "expired", now):
                    unit.audit("authorization.expired", SYSTEM_ACTOR, {"authorization_id": auth_id})
        return len(due)
