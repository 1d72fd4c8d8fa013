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
from ..evidence.receipts import receipt_problems
from ..levels import Level, Scope, fleet_confirmation_phrase
from ..store import Store
from ..store.records import DirectiveRecord, ExecutionRecord
from .agents import Agent, Registry, iso
from .evidence import server_snapshot
from .ledger import SYSTEM_ACTOR, Ledger, Unit
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
        self.level_of: Callable[[Agent], int] = lambda agent: 0  # set by the facade: an agent's level now
        self._summary: tuple[float, list[dict[str, Any]]] = (0.0, [])

    def in_scope(self, scope: Scope) -> list[str]:
        """The agents a kill on ``scope`` would reach now: running ones (not stopped or tombstoned)."""
        return sorted(a.name for a in self.registry.all() if a.live and scope.matches(a.name, a.kind, a.frameworks))

    # -- execute ------------------------------------------------------------------------------------
    def execute(self, who: Principal, auth_id: str, confirm: str | None, origin: str = "execute") -> dict[str, Any]:
        try:
            with self.ledger.unit() as unit:
                return self._execute(unit, who, auth_id, confirm, origin)
        except (BadRequest, Conflict, NotFound) as exc:
            self.ledger.record(
                "execution.refused", who.actor(), {"authorization_id": auth_id, "reason": exc.message, "code": exc.code}
            )
            raise

    def _execute(self, unit: Unit, who: Principal, auth_id: str, confirm: str | None, origin: str) -> dict[str, Any]:
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
        if self.settings.two_person and (who.token_id == row.token_id or who.name == row.token_name):
            raise Conflict(
                f"two-person rule: authorisation {auth_id} was armed with token {row.token_name!r}; another "
                "person's token must execute it",
                code="two_person",
            )
        if level == Level.FLEET_KILL:
            phrase = fleet_confirmation_phrase(scope)
            if (confirm or "").strip() != phrase:
                raise BadRequest(f"L6 needs the typed confirmation {phrase!r}", code="confirm")
        return self.fire(
            unit,
            origin=origin,
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
        in_scope = [a for a in self.registry.all() if a.live and scope.matches(a.name, a.kind, a.frameworks)]
        in_scope.sort(key=lambda a: a.name)
        levels = {a.name: self.level_of(a) for a in in_scope}  # before this execution's directive
        targets = {a.name: a.agent_id for a in in_scope}
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
        tx.insert_evidence(
            server_snapshot(
                self.ledger.key,
                self.settings,
                in_scope,
                levels,
                execution={
                    "execution_id": execution_id,
                    "origin": origin,
                    "level": int(level),
                    "scope": str(scope),
                    "by": by,
                    "reason": reason,
                    "started_at": started,
                    "directive_id": directive.id,
                    "version": version,
                    "audit_after": self.ledger.head[0],  # the case pack's audit slice starts after it
                    **(extra or {}),
                },
                authorization=tx.get_authorization(auth_id) if auth_id is not None else None,
                actor=actor,
                token_name=token_name,
                at=finished,
            )
        )
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
        out["time_to_halt"] = self.halts(row, acks)
        return out

    def halts(self, row: ExecutionRecord, acks: list[Any]) -> dict[str, Any]:
        """Per agent in scope: confirmed halted (an acknowledgement of its registration whose signed
        receipt shows every check of the level fired) with its time-to-halt, or not confirmed and why."""
        slo_ms = self.settings.halt_slo * 1000
        waiting_ms = (time.time() - row.started_at) * 1000
        mine = {a.agent: a for a in acks if row.targets.get(a.agent) == a.agent_id}
        confirmed: dict[str, float] = {}
        why: dict[str, str] = {}
        receipts: dict[str, Any] = {}
        for name in row.agents:
            ack = mine.get(name)
            if ack is None:
                agent = self.registry.get(name)
                heard = (
                    agent is not None and agent.agent_id == row.targets.get(name) and agent.last_seen > row.started_at
                )
                why[name] = (
                    "heard from since the kill, but never acknowledged it"
                    if heard
                    else "never acknowledged: not heard from since the kill (frozen, unreachable or gone)"
                )
                continue
            receipts[name] = ack.receipt.get("receipt") if isinstance(ack.receipt, dict) else None
            problems = receipt_problems(receipts[name], row.level)
            if problems:
                why[name] = "acknowledged, but its receipt does not confirm the halt: " + "; ".join(problems)
            else:
                confirmed[name] = round(ack.time_to_halt_ms, 3)
        times = sorted(confirmed.values())
        not_confirmed = sorted(why)
        return {
            "confirmed": len(confirmed),
            "acknowledged": len(mine),
            "in_scope": len(row.agents),
            "p50_ms": times[len(times) // 2] if times else None,
            "max_ms": times[-1] if times else None,
            "per_agent": dict(sorted(confirmed.items())),
            "not_confirmed": not_confirmed,
            "not_confirmed_why": {n: why[n] for n in not_confirmed},
            "receipts": dict(sorted(receipts.items())),
            "slo_ms": slo_ms,
            "breaches": sorted(
                [n for n, ms in confirmed.items() if ms > slo_ms] + (not_confirmed if waiting_ms > slo_ms else [])
            ),
        }

    def check_slo(self, now: float | None = None) -> list[str]:
        """Audit, once, every execution whose agents were not all confirmed within the time-to-halt SLO
        (``execution.slo_breach``); a watermark in the store says up to when executions were judged."""
        now = time.time() if now is None else now
        due_before = now - self.settings.halt_slo
        breached: list[str] = []
        with self.store.snapshot() as tx:  # usually nothing is due: no write at all
            mark = float(tx.get_meta("slo_checked_until") or 0)
            if not any(mark < r.started_at <= due_before and r.agents for r in tx.list_executions(200)):
                return []
        with self.ledger.unit() as unit:
            tx = unit.tx
            # Again, in the write and under the audit chain's lock: replicas judging at once take turns,
            # and the second reads the first one's mark: judged once.
            tx.audit_head(lock=True)
            mark = float(tx.get_meta("slo_checked_until") or 0)
            for row in tx.list_executions(200):
                if not mark < row.started_at <= due_before or not row.agents:
                    continue
                halts = self.halts(row, tx.list_acks(row.id))
                if not halts["breaches"]:
                    continue
                breached.append(row.id)
                slo_ms = halts["slo_ms"]
                unit.audit(
                    "execution.slo_breach",
                    SYSTEM_ACTOR,
                    {
                        "execution_id": row.id,
                        "slo_ms": slo_ms,
                        "agents": halts["breaches"],
                        "not_confirmed": halts["not_confirmed"],
                        "confirmed_late": {n: ms for n, ms in halts["per_agent"].items() if ms > slo_ms},
                    },
                )
            tx.set_meta("slo_checked_until", repr(due_before))
            if breached:
                unit.after(
                    lambda: log.warning("m99: time-to-halt SLO breached by execution(s) %s", ", ".join(breached))
                )
        return breached

    def summary(self, limit: int = 5, ttl: float = 1.0) -> list[dict[str, Any]]:
        """The newest executions of the last day, with what is not confirmed (``m99 status``); cached
        for ``ttl`` seconds so a status poll costs no store work."""
        at, cached = self._summary
        now = time.time()
        if now - at < ttl:
            return cached
        out = []
        with self.store.snapshot() as tx:
            for row in tx.list_executions(limit):
                if now - row.started_at > 86400:
                    break
                halts = self.halts(row, tx.list_acks(row.id))
                out.append(
                    {
                        "id": row.id,
                        "origin": row.origin,
                        "level": row.level,
                        "scope": row.scope,
                        "started_at": iso(row.started_at),
                        "in_scope": halts["in_scope"],
                        "confirmed": halts["confirmed"],
                        "max_ms": halts["max_ms"],
                        "not_confirmed": halts["not_confirmed"][:20],
                        "slo_breaches": halts["breaches"][:20],
                    }
                )
        self._summary = (now, out)
        return out

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            rows = tx.list_executions(limit)
        return [self.view(r) for r in rows]
