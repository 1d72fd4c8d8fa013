"""Operator and enrolment tokens: who is calling, and what their role lets them do.

Only SHA-256 hashes of tokens are stored (a token is 256 random bits: its hash cannot be guessed
back).  Each token has its own id; revoking an id revokes exactly that token, and the last live
fleet-role token cannot be revoked, so the fleet can never be locked out.  Should every fleet token
be lost, ``recover`` (``m99 token recover``, on the machine that holds the data) mints a new one.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ..crypto import sha256_hex
from ..errors import BadRequest, Conflict, NotAuthorised, NotFound, Unauthenticated
from ..levels import Role
from ..protocol import NAME_RULE, bad_text, valid_name
from ..store import Store
from ..store.records import TokenRecord
from .ledger import Ledger
from .refusals import Refusals

__all__ = ["Principal", "Tokens", "checked_by_reason", "looks_like_identity", "new_id"]

# An identity a person answers to: an e-mail address.
_EMAIL = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*\Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def looks_like_identity(by: str, principal: Principal | None) -> bool:
    """Whether ``by`` names a person: an e-mail address, or the name of the token used."""
    return bool(_EMAIL.match(by)) or (principal is not None and by == principal.name)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the identity of a token."""

    token_id: str
    name: str
    role: Role
    grants: dict[str, Any] = field(default_factory=dict)

    def actor(self, by: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"token": self.name, "token_id": self.token_id, "role": self.role.label}
        if by:
            out["by"] = by
        return out


def checked_by_reason(by: Any, reason: Any, who: Principal | None) -> tuple[str, str]:
    """``by`` and ``reason`` as they will be recorded, or BadRequest: a named human and a reason, with no
    control characters to hide or forge what an operator reads."""
    if not isinstance(by, str) or not by.strip() or not isinstance(reason, str) or not reason.strip():
        raise BadRequest("--by and --reason must not be empty: a kill needs a named human and a reason")
    for label, text in (("by", by), ("reason", reason)):
        problem = bad_text(text)
        if problem:
            raise BadRequest(f"bad {label}: {problem}")
    by, reason = by.strip(), reason.strip()
    if not looks_like_identity(by, who):
        token = f" or the token's name ({who.name!r})" if who is not None else ""
        raise BadRequest(f"bad by {by!r}: name the person responsible, as an e-mail address{token}")
    return by, reason


class Tokens:
    def __init__(self, store: Store, ledger: Ledger, refusals: Refusals) -> None:
        self.store = store
        self.ledger = ledger
        self.refusals = refusals

    # -- who is calling -----------------------------------------------------------------------------
    def authenticate(self, token: str | None, source: str = "") -> Principal:
        if not token:
            raise Unauthenticated(
                "a token is required: pass --token, set M99_TOKEN, or run on the "
                "machine where `m99 serve` wrote its admin token"
            )
        with self.store.snapshot() as tx:
            row = tx.token_by_hash(sha256_hex(token))
        if row is None or row.revoked_at is not None:
            self.refusals.note("token.refused", {"by": "unknown"}, {"reason": "unknown or revoked token"}, source)
            raise Unauthenticated("unknown or revoked token")
        return Principal(row.id, row.name, Role(row.role), dict(row.grants))

    def require(self, who: Principal, role: Role, action: str, by: str | None = None) -> None:
        """Refuse, and audit as an authority-misuse signal, a call outside the token's role.  The entry is
        written apart from the caller's unit of work (which the refusal rolls back)."""
        if who.role >= role:
            return
        self.refusals.note(
            "authority.refused",
            who.actor(by),
            {"action": action, "required_role": role.label, "token_role": who.role.label},
            who.token_id,
        )
        raise NotAuthorised(f"{action} needs the {role.label} role; token {who.name!r} has {who.role.label}")

    # -- tokens -------------------------------------------------------------------------------------
    def mint(self, name: str, role: Role, created_by: str, grants: dict[str, Any] | None = None) -> tuple[str, str]:
        """A new token's (id, secret value), created and audited in one unit."""
        token = "m99_" + secrets.token_urlsafe(32)
        token_id = new_id("tok")
        record = TokenRecord(token_id, name, int(role), sha256_hex(token), time.time(), created_by, None, grants or {})
        with self.ledger.unit() as unit:
            unit.tx.insert_token(record)
            unit.audit(
                "token.created",
                {"by": created_by},
                {"token_id": token_id, "name": name, "role": role.label, **({"grants": grants} if grants else {})},
            )
        return token_id, token

    def has_tokens(self) -> bool:
        with self.store.snapshot() as tx:
            return bool(tx.list_tokens())

    def create(
        self,
        who: Principal,
        name: str,
        role: str,
        *,
        name_prefix: str | None = None,
        kind: str | None = None,
        rebind: bool = False,
    ) -> dict[str, Any]:
        self.require(who, Role.FLEET, "creating a token")
        if not valid_name(name):
            raise BadRequest(f"bad token name {name!r}: {NAME_RULE}")
        try:
            parsed = Role.parse(role)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        grants: dict[str, Any] = {}
        if parsed == Role.AGENT:
            if name_prefix is not None and not valid_name(name_prefix):
                raise BadRequest(f"bad name prefix {name_prefix!r}: {NAME_RULE}")
            if kind is not None and not valid_name(kind):
                raise BadRequest(f"bad kind {kind!r}: {NAME_RULE}")
            grants = {"name_prefix": name_prefix, "kind": kind, "rebind": bool(rebind)}
        elif name_prefix is not None or kind is not None or rebind:
            raise BadRequest("--name-prefix, --kind and --rebind are for agent (enrolment) tokens")
        token_id, token = self.mint(name, parsed, who.name, grants)
        return {"id": token_id, "name": name, "role": parsed.label, "token": token, "grants": grants}

    def list(self, who: Principal) -> list[dict[str, Any]]:
        self.require(who, Role.FLEET, "listing tokens")
        with self.store.snapshot() as tx:
            rows = tx.list_tokens()
        return [
            {
                "id": t.id,
                "name": t.name,
                "role": Role(t.role).label,
                "created_at": t.created_at,
                "created_by": t.created_by,
                "revoked_at": t.revoked_at,
                "grants": t.grants,
            }
            for t in rows
        ]

    def revoke(self, who: Principal, token_id: str) -> dict[str, Any]:
        self.require(who, Role.FLEET, "revoking a token")
        with self.ledger.unit() as unit:
            tx = unit.tx
            row = tx.get_token(token_id, lock=True)
            if row is None or row.revoked_at is not None:
                raise NotFound(f"no live token with id {token_id!r}")
            # The fleet tokens stay locked for the count: two revocations racing on two replicas must not
            # both go through and leave none.
            if row.role == Role.FLEET and len(tx.live_tokens(int(Role.FLEET), lock=True)) <= 1:
                raise Conflict(
                    f"token {token_id} is the last live fleet token: create another fleet token first "
                    "(or use `m99 token recover` on the server's machine)",
                    code="last_fleet_token",
                )
            tx.revoke_token(token_id, time.time())
            unit.audit("token.revoked", who.actor(), {"token_id": token_id, "name": row.name})
        return {"id": token_id, "revoked": True}

    def recover(self, by: str) -> tuple[str, str]:
        """A new fleet token, for whoever can open the data directory (``m99 token recover``)."""
        token_id, token = self.mint("admin", Role.FLEET, f"recovery by {by}")
        self.ledger.record("token.recovered", {"by": by, "role": "local"}, {"token_id": token_id})
        return token_id, token
