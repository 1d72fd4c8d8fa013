"""Authority beyond one token: break-glass credentials, and the second person a restore needs under the
two-person rule.

Break-glass: a sealed, single-use credential for when normal authentication is down.

``create`` mints it (fleet role needed) and returns it once; only its SHA-256 is stored, like every
token's.  It may arm and execute one kill and nothing else (no restore, no tokens, no reads); its use is
audited loudly (``breakglass.used``), logged as an error, revokes it once its execution has fired, and is
shown by ``m99 status`` until a fleet-role token acknowledges it.

Under ``--two-person`` a restore is two-phase: the first identity's restore of a scope is recorded as a
request (audited ``restore.requested``); another identity's restore of the same scope within
``RESTORE_WINDOW`` seconds carries it out.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..errors import NotAuthorised, NotFound
from ..levels import Role
from ..store import Store
from .agents import iso
from .ledger import Ledger
from .tokens import Principal, Tokens

__all__ = ["ALLOWED", "BreakGlass"]

log = logging.getLogger("m99.control")

ALLOWED = frozenset({("POST", "/api/arm"), ("POST", "/api/execute")})
_META = "breakglass_unacknowledged"
RESTORE_WINDOW = 300.0


class BreakGlass:
    def __init__(self, store: Store, ledger: Ledger, tokens: Tokens) -> None:
        self.store = store
        self.ledger = ledger
        self.tokens = tokens

    @staticmethod
    def holds(who: Principal) -> bool:
        return bool(who.grants.get("breakglass"))

    def create(self, who: Principal, by: str) -> dict[str, Any]:
        self.tokens.require(who, Role.FLEET, "creating a break-glass credential", by)
        token_id, token = self.tokens.mint(f"break-glass-{int(time.time())}", Role.FLEET, by, {"breakglass": True})
        return {"id": token_id, "token": token, "single_use": True, "may": ["arm", "execute"]}

    def gate(self, who: Principal, method: str, path: str) -> None:
        """Refuse (and audit) a break-glass credential anywhere but arm and execute."""
        if self.holds(who) and (method, path) not in ALLOWED:
            self.ledger.record("breakglass.refused", who.actor(), {"action": f"{method} {path}"})
            raise NotAuthorised("a break-glass credential may only arm and execute a kill")

    def used(self, who: Principal, act: str, result: dict[str, Any]) -> None:
        """Audit the use loudly; after the execute, the credential is spent."""
        data: dict[str, Any] = {"token_id": who.token_id, "act": act}
        data.update({k: result[k] for k in ("id", "execution_id") if k in result})
        with self.ledger.unit() as unit:
            unit.audit("breakglass.used", who.actor(), data)
            pending = json.loads(unit.tx.get_meta(_META) or "[]")
            pending.append({**data, "at": iso(time.time())})
            unit.tx.set_meta(_META, json.dumps(pending[-50:]))
            if act == "execute":
                unit.tx.revoke_token(who.token_id, time.time())
                unit.audit("token.revoked", who.actor(), {"token_id": who.token_id, "reason": "break-glass used"})
        log.error("m99: BREAK-GLASS credential %s used to %s %s", who.token_id, act, data)

    def second_person(self, who: Principal, body: dict[str, Any]) -> dict[str, Any] | None:
        """None when this restore is the second person's (go ahead); else the request it records."""
        from .tokens import checked_by_reason

        by, _ = checked_by_reason(body.get("by"), body.get("reason"), who)
        scope = str(body.get("scope", ""))
        key = f"restore_request:{scope}"
        now = time.time()
        with self.ledger.unit() as unit:
            first = json.loads(unit.tx.get_meta(key) or "{}")
            if (
                first
                and now - float(first.get("at", 0)) <= RESTORE_WINDOW
                and first.get("token_id") != who.token_id
                and first.get("name") != who.name
            ):
                unit.tx.set_meta(key, "{}")
                unit.audit("restore.confirmed", who.actor(by), {"scope": scope, "requested_by": first})
                return None
            request = {"token_id": who.token_id, "name": who.name, "by": by, "at": now}
            unit.tx.set_meta(key, json.dumps(request))
            unit.audit("restore.requested", who.actor(by), {"scope": scope, "window_seconds": RESTORE_WINDOW})
        return {
            "pending": True,
            "scope": scope,
            "lifted": [],
            "agents": [],
            "still_held": [],
            "message": f"two-person rule: another identity must restore {scope} within {RESTORE_WINDOW:g} s",
        }

    def pending(self) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            found: list[dict[str, Any]] = json.loads(tx.get_meta(_META) or "[]")
        return found

    def acknowledge(self, who: Principal, token_id: str, by: str) -> dict[str, Any]:
        self.tokens.require(who, Role.FLEET, "acknowledging a break-glass use", by)
        if self.holds(who):
            raise NotAuthorised("a break-glass credential cannot acknowledge its own use")
        with self.ledger.unit() as unit:
            pending = json.loads(unit.tx.get_meta(_META) or "[]")
            left = [p for p in pending if p.get("token_id") != token_id]
            if len(left) == len(pending):
                raise NotFound(f"no unacknowledged break-glass use of {token_id!r}")
            unit.tx.set_meta(_META, json.dumps(left))
            unit.audit("breakglass.acknowledged", who.actor(by), {"token_id": token_id})
        return {"acknowledged": token_id, "pending": left}
