"""Executions: firing levels L1…LN on every agent in a scope, and what became of each agent.

``fire`` is the one way anything is stopped — an operator's execute, the dead man's switch, later a
policy or a drill (its ``origin``).  It writes the directive, the execution with the registration
of every agent in scope, the credential and tombstone changes, and an audit entry a step, in the
caller's unit of work: all of it commits, or none.  An execution's record then shows, per agent,
either a confirmed halt with its time-to-halt or *not confirmed*; nothing unconfirmed is ever called
halted.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import BadRequest, Conflict, NotFound
from ..levels import Level, Scope, fleet_confirmation_phrase
from ..store import Store
from ..store.records import DirectiveRecord, ExecutionRecord
from .agents import Registry, iso
from .ledger import Ledger, Unit
from .refusals import Refusals
from .settings import Settings
from .tokens import Principal, Tokens, new_id

__all__ = ["Executions"]

log = logging.getLogger("m99.control")


class Executions:
    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        registry: Registry,
        tokens: Tokens,
        refusals: Refusals,
        settings: Settings,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.registry = registry
        self.tokens = tokens
        self.refusals = refusals
        self.settings = settings
        # Told (origin, agents in scope) after each firing commits: /metrics counts them.
        self.on_fired: list[Callable[[str, int], object]] = []

    def in_scope(self, scope: Scope) -> list[str]:
        """The agents a kill on ``scope`` would reach now: running ones (not stopped or tombstoned)."""
        return sorted(a.name for a in self.registry.all() if a.live and scope.matches(a.name, a.kind, a.frameworks))

    # -- execute ------------------------------------------------------------------------------------
    def execute(self, who: Principal, auth_id: str, confirm: str | None) -> dict[str, Any]:
        try:
            with self.ledger.unit() as unit:
                return self._execute(unit, who, auth_id, confirm)
        except (BadRequest, Conflict, NotFound) as exc:
            self.ledger.record(
                "execution.refused", who.actor(), {"authorization_id": auth_id, "reason": exc.message, "code": exc.code}
            )
            raise

    def _execute(self, unit: Unit, who: Principal, auth_id: str, confirm: str | None) -> dict[str, Any]:
        row = unit.tx.get_authorization(auth_id)
        if row is None:
            raise NotFound(f"unknown authorisation {auth_id!r}: arm first", code="unknown")
        status = "expired" if row.status == "armed" and time.time() > row.expires_at else row.status
        if status != "armed":
            verb = {
                "executed": "already executed (an authorisation is single-use)",
                "disarmed": "disarmed",
                "expired": "expired: arm again",
            }.get(status, status)
            raise Conflict(f"authorisation {auth_id} is {verb}", code=status)
        level, scope = Level(row.level), Scope.parse(row.scope)
        self.tokens.require(who, level.required_role, f"executing L{int(level)} ({level.title})", row.by_email)
        if level == Level.FLEET_KILL:
            phrase = fleet_confirmation_phrase(scope)
            if (confirm or "").strip() != phrase:
                raise BadRequest(f"L6 needs the typed confirmation {phrase!r}", code="confirm")
        return self.fire(
            unit,
            origin="execute",
            level=level,
            scope=scope,
            by=row.by_email,
            reason=row.reason,
            actor=who.actor(row.by_email),
            token_name=who.name,
            auth_id=auth_id,
        )

    def fire(
        self,
        unit: Unit,
        *,
        origin: str,
        level: Level,
        scope: Scope,
        by: str,
        reason: str,
        actor: dict[str, Any],
        token_name: str,
        auth_id: str | None,
        extra: dict[str, Any] | None = None,
        log_line: bool = True,
    ) -> dict[str, Any]:
        """Fire L1…level on every agent in scope, in ``unit``, one audit entry a step; the server logs a
        line once it commits (``log_line=False``: the caller logs a batch of them together)."""
        tx = unit.tx
        started = time.time()
        execution_id = new_id("exe")
        if auth_id is not None and not tx.close_authorization(auth_id, "armed", "executed", started, execution_id):
            raise Conflict(f"authorisation {auth_id} was used concurrently", code="executed")
        targets = {
            a.name: a.agent_id for a in self.registry.all() if a.live and scope.matches(a.name, a.kind, a.frameworks)
        }
        names = sorted(targets)
        unit.audit(
            "execution.started",
            actor,
            {
                "execution_id": execution_id,
                "authorization_id": auth_id,
                "origin": origin,
                "level": int(level),
                "scope": str(scope),
                "reason": reason,
                "agents": names,
                **(extra or {}),
            },
        )
        fired: list[str] = []
        for step in range(1, int(level) + 1):
            data: dict[str, Any] = {
                "execution_id": execution_id,
                "level": step,
                "name": Level(step).title,
                "agents": len(names),
            }
            if step == Level.CREDENTIAL_REVOCATION:
                data["credentials_revoked"] = tx.set_credentials_revoked(names, 1, started)
            if step >= Level.TARGETED_TERMINATION:
                data["credentials_revoked_for_good"] = tx.set_credentials_revoked(names, 2, started)
                if names:
                    tx.set_agent_status(names, "tombstoned", f"L{step} {execution_id}", started, tx.next_registry_seq())
                data["tombstoned"] = names
            unit.audit("level.fired", actor, data)
            fired.append(f"L{step}")
        version = tx.next_version()
        directive = DirectiveRecord(
            new_id("dir"), execution_id, int(level), str(scope), origin, started, version, by, reason
        )
        tx.insert_directive(directive)
        finished = time.time()
        tx.insert_execution(
            ExecutionRecord(
                execution_id,
                auth_id,
                origin,
                int(level),
                str(scope),
                by,
                reason,
                token_name,
                started,
                finished,
                tuple(names),
                tuple(fired),
                directive.id,
                version,
                targets,
            )
        )
        unit.audit(
            "execution.completed",
            actor,
            {
                "execution_id": execution_id,
                "levels_fired": fired,
                "agents_terminated": len(names),
                "directive_id": directive.id,
            },
        )
        for listener in self.on_fired:
            unit.after(functools.partial(listener, origin, len(names)))
        if log_line:
            unit.after(
                lambda: log.warning(
                    "m99: %s fired L%d on %s (%d agent%s) by %s: %s [%s]",
                    origin,
                    int(level),
                    scope,
                    len(names),
                    "" if len(names) == 1 else "s",
                    by,
                    reason,
                    execution_id,
                    extra={
                        "m99": {
                            "event": "policy.escalation" if origin == "policy" else "execution",
                            "execution_id": execution_id,
                            "origin": origin,
                            "level": int(level),
                            "scope": str(scope),
                            "agents": len(names),
                            "by": by,
                            "reason": reason,
                            "authorization_id": auth_id,
                        }
                    },
                )
            )
        return {
            "success": True,
            "agents_terminated": len(names),
            "execution_id": execution_id,
            "authorization_id": auth_id,
            "level": int(level),
            "scope": str(scope),
            "levels_fired": fired,
            "agents": names,
            "directive_id": directive.id,
            "version": version,
            "committed_ms": round((finished - started) * 1000, 3),
            "time_to_halt": f"each agent's confirmed halt: GET /api/executions/{execution_id}",
        }

    # -- reading ------------------------------------------------------------------------------------
    def get(self, execution_id: str) -> dict[str, Any]:
        with self.store.snapshot() as tx:
            row = tx.get_execution(execution_id)
            if row is None:
                raise NotFound(f"unknown execution {execution_id!r}")
            acks = tx.list_acks(execution_id)
        return self.view(row, acks)

    def view(self, row: ExecutionRecord, acks: list[Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": row.id,
            "authorization_id": row.authorization_id,
            "origin": row.origin,
            "level": row.level,
            "scope": row.scope,
            "by_email": row.by_email,
            "reason": row.reason,
            "token_name": row.token_name,
            "started_at": iso(row.started_at),
            "finished_at": iso(row.finished_at),
            "agents": list(row.agents),
            "levels_fired": list(row.levels_fired),
            "directive_id": row.directive_id,
            "version": row.version,
            "state": row.state,
        }
        if acks is None:
            return out
        confirmed = {a.agent: a for a in acks if row.targets.get(a.agent) == a.agent_id}
        times = sorted(a.time_to_halt_ms for a in confirmed.values())
        slo_ms = self.settings.halt_slo * 1000
        waiting = time.time() - row.started_at
        not_confirmed = sorted(set(row.agents) - set(confirmed))
        out["time_to_halt"] = {
            "confirmed": len(confirmed),
            "acknowledged": len(confirmed),
            "in_scope": len(row.agents),
            "p50_ms": times[len(times) // 2] if times else None,
            "max_ms": times[-1] if times else None,
            "per_agent": {name: round(a.time_to_halt_ms, 3) for name, a in sorted(confirmed.items())},
            "not_confirmed": not_confirmed,
            "slo_ms": slo_ms,
            "breaches": sorted(
                [n for n, a in confirmed.items() if a.time_to_halt_ms > slo_ms]
                + (not_confirmed if waiting * 1000 > slo_ms else [])
            ),
        }
        return out

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            rows = tx.list_executions(limit)
        return [self.view(r) for r in rows]
