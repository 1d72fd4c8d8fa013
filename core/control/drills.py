"""Drills: a real, fully audited invocation marked as one (origin ``drill``), never past L3, and the
schedule that says when the next one is due.

A drill arms and executes on its scope like any kill (the same authorisation, role checks, two-person
rule and audit entries), so it proves the path an emergency would take; the operator's ``m99 drill``
then measures every confirmed time-to-halt, restores, and fetches the case pack.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import BadRequest
from ..store import Store
from .agents import iso
from .authorizations import Authorizations
from .executions import Executions
from .ledger import Ledger
from .tokens import Principal

__all__ = ["MAX_DRILL_LEVEL", "Drills"]

MAX_DRILL_LEVEL = 3  # drills are reversible: L1-L3 only


class Drills:
    def __init__(self, store: Store, ledger: Ledger, authorizations: Authorizations, executions: Executions) -> None:
        self.store = store
        self.ledger = ledger
        self.authorizations = authorizations
        self.executions = executions

    def start(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        level = body.get("level", 3)
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= MAX_DRILL_LEVEL:
            raise BadRequest(
                f"a drill goes up to L{MAX_DRILL_LEVEL} (reversible levels only), not L{level}: "
                "use m99 arm / m99 execute for a real L4-L6",
                code="drill_level",
            )
        auth = self.authorizations.arm(
            who,
            {
                "level": level,
                "scope": body.get("scope"),
                "by": body.get("by"),
                "reason": body.get("reason"),
                "window": 60,
            },
        )
        result = self.executions.execute(who, auth["id"], None, origin="drill")
        with self.ledger.unit() as unit:
            unit.tx.set_meta("drill_last", repr(time.time()))
        return {**result, "drill": True}

    def schedule(self, who: Principal, every: float, by: str) -> dict[str, Any]:
        """Record that a drill is due every ``every`` seconds (0: no schedule)."""
        from ..levels import Role

        self.executions.tokens.require(who, Role.AUTHORITY, "scheduling drills", by)
        if not 0 <= every <= 366 * 86400:
            raise BadRequest("a drill schedule is from 0 (none) to 366 days")
        with self.ledger.unit() as unit:
            unit.tx.set_meta("drill_every", repr(float(every)))
            unit.audit("drill.scheduled", who.actor(by), {"every_seconds": every})
        return self.status()

    def status(self) -> dict[str, Any]:
        with self.store.snapshot() as tx:
            every = float(tx.get_meta("drill_every") or 0)
            last = float(tx.get_meta("drill_last") or 0)
        out: dict[str, Any] = {"every_seconds": every, "last": iso(last) if last else None}
        if every:
            due = (last or 0) + every
            out["due"] = iso(due) if last else "now (no drill yet)"
            out["overdue"] = time.time() > due
        return out
