"""The control plane's logic, independent of HTTP: agents, two-phase authorisation, the
level ladder, directives, the dead man's switch, tokens and the audit chain.

The FastAPI app in ``m99.server`` is a thin layer over ``ControlPlane``; every mutating
method here is one store transaction that also appends its audit entries.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import audit
from .config import HEAD_FILE, SERVER_KEY_FILE, TOKEN_FILE
from .crypto import SigningKey, VerifyKey, canonical_json, fingerprint, sha256_hex, write_private
from .errors import BadRequest, Conflict, ControlPlaneError, NotAuthorised, NotFound
from .levels import Level, Role, Scope, fleet_confirmation_phrase, valid_name
from .link import sign_event
from .store import Store

log = logging.getLogger("m99.control")

SYSTEM_ACTOR = {"by": "m99", "role": "system"}
CHECKPOINT_EVERY = 1000
# What an agent signs in an acknowledgement (``applied_at`` too: the time-to-halt is the agent's word).
ACK_FIELDS = ("seq", "ts", "version", "applied_at")


@dataclass(frozen=True)
class Settings:
    heartbeat_interval: float = 30.0
    missed_heartbeats: int = 3
    deadman_level: int = 3
    clock_skew: float = 60.0
    lease_seconds: float = 0.0  # 0: derived from the heartbeat interval
    max_window: float = 3600.0

    @property
    def lease(self) -> float:
        return self.lease_seconds or self.heartbeat_interval * self.missed_heartbeats


@dataclass(frozen=True)
class Principal:
    """Who is calling: the identity of an operator token."""

    token_id: str
    name: str
    role: Role

    def actor(self, by: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"token": self.name, "token_id": self.token_id, "role": self.role.label}
        if by:
            out["by"] = by
        return out


@dataclass
class Agent:
    """The in-memory view of a registered agent; the store holds the same fields."""

    name: str
    agent_id: str
    kind: str
    framework: str
    pid: int | None
    host: str
    public_key: str
    incarnation: int
    registered_at: float
    last_seen: float
    last_seq: int
    status: str  # active | stopped | silent | tombstoned
    read_only_tools: list[str]
    metadata: dict[str, Any]
    verify_key: VerifyKey = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    # Acks have their own sequence high-water mark: an agent signs them on its push thread while a
    # heartbeat may be in flight, so the two kinds can overtake each other on the wire.  In memory
    # only: a replayed ack can only repeat what the agent already acknowledged.
    last_ack_seq: int = field(repr=False, compare=False, default=0)

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _AGENT_COLUMNS}


_AGENT_COLUMNS = (
    "name",
    "agent_id",
    "kind",
    "framework",
    "pid",
    "host",
    "public_key",
    "incarnation",
    "registered_at",
    "last_seen",
    "last_seq",
    "status",
    "read_only_tools",
    "metadata",
)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


class ControlPlane:
    """Everything the REST API and the dead man's switch do, over one ``Store``."""

    def __init__(self, store: Store, data_dir: Path, settings: Settings | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.settings = settings or Settings()
        self.started_at = time.time()
        # Silence is counted from here at the earliest: ``serving()`` moves it to the moment agents can
        # reach the server (loading the web framework can take longer than a short dead man's window).
        self.deadman_since = self.started_at
        self.key = SigningKey.load_or_create(data_dir / SERVER_KEY_FILE)
        self.head_file = data_dir / HEAD_FILE
        self._pending: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self._in_txn = False
        self._listeners: list[Callable[[bytes, list[str]], None]] = []
        # Per agent: (state version, signed state, heartbeat answer as bytes), made once per version.
        self._state_cache: dict[str, tuple[int, dict[str, Any], bytes]] = {}
        self._dirty: set[str] = set()
        self.admin_token: str | None = None
        self._load()

    # ------------------------------------------------------------------ start-up
    def _load(self) -> None:
        stored_key = self.store.get_meta("server_public_key")
        if stored_key is not None and stored_key != self.key.public_b64:
            raise ControlPlaneError(
                f"the server key in {self.data_dir / SERVER_KEY_FILE} does not match the database "
                f"{self.store.location}: the audit chain could not be verified with it"
            )
        head = self.store.audit_head()
        self._head: tuple[int, str] = head if head else (-1, audit.GENESIS_PREV)
        if stored_key is None:
            with self._txn():
                self.store.set_meta("server_public_key", self.key.public_b64)
                self.store.set_meta("state_version", "0")
                self._audit("genesis", SYSTEM_ACTOR, {"server_public_key": self.key.public_b64})
        self.version = int(self.store.get_meta("state_version") or 0)
        self.agents: dict[str, Agent] = {}
        self.by_id: dict[str, Agent] = {}
        for row in self.store.list_agents():
            agent = Agent(**row)
            agent.verify_key = VerifyKey.from_b64(agent.public_key)
            agent.last_ack_seq = agent.last_seq
            self._index(agent)
        self.directives = self.store.active_directives()
        if not self.store.list_tokens():
            self.admin_token = self._create_token("admin", Role.FLEET, created_by="first start")
            write_private(self.data_dir / TOKEN_FILE, self.admin_token + "\n")

    def _index(self, agent: Agent) -> None:
        old = self.agents.get(agent.name)
        if old is not None:
            self.by_id.pop(old.agent_id, None)
        self.agents[agent.name] = agent
        self.by_id[agent.agent_id] = agent

    # ------------------------------------------------------------------ audit
    def _audit(self, kind: str, actor: dict[str, Any], data: dict[str, Any]) -> None:
        self._pending.append((kind, actor, data))

    @contextmanager
    def _txn(self) -> Iterator[None]:
        """One store transaction; the audit entries recorded inside are appended in it and
        a signed checkpoint of the new head is written with them."""
        if self._in_txn:  # nested: the outer transaction appends and checkpoints
            yield
            return
        self._in_txn = True
        self._pending = []
        checkpoint = None
        try:
            with self.store.transaction():
                yield
                checkpoint = self._append_pending()
        finally:
            self._in_txn = False
            self._pending = []
        if checkpoint is not None:
            self._head = (checkpoint.seq, checkpoint.hash)
            try:
                audit.write_head_file(self.head_file, checkpoint, self.key.public_b64)
            except OSError as exc:  # the chain itself is committed; the head file is a second copy
                log.error("could not write %s: %s", self.head_file, exc)

    def _append_pending(self) -> audit.Checkpoint | None:
        if not self._pending:
            return None
        seq, prev = self._head
        rows = []
        for kind, actor, data in self._pending:
            seq += 1
            ts = audit.utc_now_iso()
            body, digest = audit.make_entry(prev, seq, ts, kind, actor, data)
            rows.append((seq, ts, kind, body, digest))
            prev = digest
        self.store.append_audit(rows)
        checkpoint = audit.sign_checkpoint(self.key, seq, prev, audit.utc_now_iso())
        self.store.insert_checkpoint(checkpoint.seq, checkpoint.hash, checkpoint.ts, checkpoint.signature)
        # Keep the newest checkpoint and one per CHECKPOINT_EVERY entries: each kept one costs a
        # signature check at verification, and the hash links already cover everything before
        # the newest.  The head file outside the database is rewritten every time regardless.
        previous = self._head[0]
        if previous > 0 and previous // CHECKPOINT_EVERY == seq // CHECKPOINT_EVERY:
            self.store.delete_checkpoint(previous)
        return checkpoint

    def record_refusal(self, kind: str, actor: dict[str, Any], data: dict[str, Any]) -> None:
        """Audit something that was refused, in its own transaction (the refused one rolled back)."""
        with self._txn():
            self._audit(kind, actor, data)

    # ------------------------------------------------------------------ tokens
    def _create_token(self, name: str, role: Role, created_by: str) -> str:
        token = "m99_" + secrets.token_urlsafe(32)
        with self._txn():
            token_id = _new_id("tok")
            self.store.insert_token(
                {
                    "id": token_id,
                    "name": name,
                    "role": int(role),
                    "token_hash": sha256_hex(token),
                    "created_at": time.time(),
                    "created_by": created_by,
                }
            )
            self._audit("token.created", {"by": created_by}, {"token_id": token_id, "name": name, "role": role.label})
        return token

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise NotAuthorised(
                "a token is required: pass --token, set M99_TOKEN, or run on the "
                "machine where `m99 serve` wrote its admin token",
                status_code=401,
            )
        row = self.store.token_by_hash(sha256_hex(token))
        if row is None or row["revoked_at"] is not None:
            raise NotAuthorised("unknown or revoked token", status_code=401)
        return Principal(row["id"], row["name"], Role(row["role"]))

    def require(self, who: Principal, role: Role, action: str, by: str | None = None) -> None:
        """Refuse, and audit as an authority-misuse signal, a call outside the token's role."""
        if who.role >= role:
            return
        self.record_refusal(
            "authority.refused",
            who.actor(by),
            {
                "action": action,
                "required_role": role.label,
                "token_role": who.role.label,
            },
        )
        raise NotAuthorised(
            f"{action} needs the {role.label} role; token {who.name!r} has {who.role.label}", status_code=403
        )

    def create_token(self, who: Principal, name: str, role: str) -> dict[str, Any]:
        self.require(who, Role.FLEET, "creating a token")
        if not valid_name(name):
            raise BadRequest(f"bad token name {name!r}: use 1-128 letters, digits or ._:@/+-")
        try:
            parsed = Role.parse(role)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        token = self._create_token(name, parsed, created_by=who.name)
        row = next(t for t in self.store.list_tokens() if t["name"] == name and t["revoked_at"] is None)
        return {"id": row["id"], "name": name, "role": parsed.label, "token": token}

    def list_tokens(self, who: Principal) -> list[dict[str, Any]]:
        self.require(who, Role.FLEET, "listing tokens")
        return [{**t, "role": Role(t["role"]).label} for t in self.store.list_tokens()]

    def revoke_token(self, who: Principal, token_id: str) -> dict[str, Any]:
        self.require(who, Role.FLEET, "revoking a token")
        with self._txn():
            if not self.store.revoke_token(token_id, time.time()):
                raise NotFound(f"no live token with id {token_id!r}", status_code=404)
            self._audit("token.revoked", who.actor(), {"token_id": token_id})
        return {"id": token_id, "revoked": True}

    # ------------------------------------------------------------------ agents
    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        name, kind = body["name"], body.get("kind") or "agent"
        framework = body.get("framework") or "none"
        for label, value in (("name", name), ("kind", kind), ("framework", framework)):
            if not valid_name(value):
                raise BadRequest(f"bad agent {label} {value!r}: use 1-128 letters, digits or ._:@/+-")
        try:
            verify_key = VerifyKey.from_b64(body["public_key"])
        except ValueError as exc:
            raise BadRequest(f"bad public_key: {exc}") from None
        now = time.time()
        old = self.agents.get(name)
        if old is not None and old.status == "tombstoned":
            self.record_refusal(
                "agent.resurrection_refused",
                {"agent": name},
                {
                    "pid": body.get("pid"),
                    "host": body.get("host"),
                    "public_key": fingerprint(verify_key.raw),
                },
            )
            raise Conflict(
                f"agent {name!r} was terminated and is tombstoned: an authority must lift it "
                "(m99 lift --scope agent:NAME) before it may register again",
                status_code=409,
                code="tombstoned",
            )
        agent = Agent(
            name=name,
            agent_id=_new_id("agt"),
            kind=kind,
            framework=framework,
            pid=body.get("pid"),
            host=body.get("host") or "",
            public_key=body["public_key"],
            incarnation=(old.incarnation + 1) if old else 1,
            registered_at=now,
            last_seen=now,
            last_seq=0,
            status="active",
            read_only_tools=sorted(set(body.get("read_only_tools") or ())),
            metadata=body.get("metadata") or {},
        )
        agent.verify_key = verify_key
        creds = body.get("credentials") or []
        with self._txn():
            self.store.upsert_agent(agent.row())
            if creds:
                self.store.add_credentials(name, creds)
                if self.effective_level(agent) >= Level.CREDENTIAL_REVOCATION:
                    self.store.set_credentials_revoked([name], 1, now)
            self._audit(
                "agent.registered",
                {"agent": name},
                {
                    "agent_id": agent.agent_id,
                    "kind": kind,
                    "framework": framework,
                    "pid": agent.pid,
                    "host": agent.host,
                    "incarnation": agent.incarnation,
                    "public_key": fingerprint(verify_key.raw),
                    "credentials": [c["fingerprint"] for c in creds],
                    "replaces": old.agent_id if old else None,
                },
            )
        self._index(agent)
        return {
            "agent_id": agent.agent_id,
            "name": name,
            "incarnation": agent.incarnation,
            "heartbeat_interval": self.settings.heartbeat_interval,
            "lease_seconds": self.settings.lease,
            "clock_skew": self.settings.clock_skew,
            "server_public_key": self.key.public_b64,
            "state": self.signed_state(agent),
        }

    def agent_by_id(self, agent_id: str) -> Agent:
        agent = self.by_id.get(agent_id)
        if agent is None:
            raise NotFound(f"unknown agent id {agent_id!r}: register first", status_code=404, code="unknown_agent")
        return agent

    def check_signed(
        self,
        agent: Agent,
        kind: str,
        body: dict[str, Any],
        fields: tuple[str, ...],
        last: int | None = None,
        signature_ok: bool | None = None,
    ) -> None:
        """Check an agent's signed request: signature (unless already checked: ``signature_ok``), seq
        above ``last`` (default: the agent's heartbeat sequence), clock skew."""
        if signature_ok is None:
            signature_ok = self.signature_ok(agent, kind, body, fields)
        last = agent.last_seq if last is None else last
        reason = None
        code = ""
        if not signature_ok:
            reason, code = "bad signature", "bad_signature"
        elif body["seq"] <= last:
            reason, code = (
                f"replayed or out-of-order sequence {body['seq']} (last {last})",
                "replayed",
            )
        elif abs(body["ts"] - time.time()) > self.settings.clock_skew:
            reason, code = (
                f"timestamp {body['ts']:.3f} outside the allowed skew of {self.settings.clock_skew:g} s",
                "stale",
            )
        if reason is None:
            return
        self.record_refusal(
            f"{kind}.rejected",
            {"agent": agent.name},
            {
                "agent_id": agent.agent_id,
                "seq": body["seq"],
                "reason": reason,
            },
        )
        raise (NotAuthorised if code == "bad_signature" else Conflict)(
            f"{kind} rejected: {reason}", status_code=401 if code == "bad_signature" else 409, code=code
        )

    @staticmethod
    def signature_ok(agent: Agent, kind: str, body: dict[str, Any], fields: tuple[str, ...]) -> bool:
        """Whether ``body`` carries ``agent``'s signature over ``fields`` (no state: safe on any thread)."""
        message = canonical_json({"type": kind, "agent_id": agent.agent_id, **{f: body[f] for f in fields}})
        return agent.verify_key.verify(message, body["signature"])

    def ack_signatures(self, acks: list[dict[str, Any]]) -> list[bool | None]:
        """The signature check of each ack of a batch (None: unknown agent), for ``acknowledge_batch``.

        Reads only immutable agent fields, so the server runs it on a worker thread: Ed25519 checks
        release the GIL, and a batch of them must not hold up the event loop's pushes.
        """
        results: list[bool | None] = []
        for body in acks:
            agent = self.by_id.get(body["agent_id"])
            results.append(None if agent is None else self.signature_ok(agent, "ack", body, ACK_FIELDS))
        return results

    def heartbeat(self, agent_id: str, body: dict[str, Any]) -> Agent:
        """Accept a signed heartbeat.  It is kept in memory and written by ``flush_heartbeats``
        in one transaction for many agents (a crash loses at most one flush period of
        liveness data; nothing that was audited)."""
        agent = self.agent_by_id(agent_id)
        self.check_signed(agent, "heartbeat", body, ("seq", "ts"))
        agent.last_seq = body["seq"]
        agent.last_seen = time.time()
        self._dirty.add(agent.name)
        if agent.status == "silent":
            agent.status = "active"
            self.store.set_agent_status([agent.name], "active")
        return agent

    def flush_heartbeats(self) -> int:
        if not self._dirty:
            return 0
        names, self._dirty = self._dirty, set()
        with self.store.transaction():
            for name in names:
                agent = self.agents.get(name)
                if agent is not None:
                    self.store.record_heartbeat(name, agent.last_seq, agent.last_seen)
        return len(names)

    def deregister(self, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
        agent = self.agent_by_id(agent_id)
        self.check_signed(agent, "deregister", body, ("seq", "ts"))
        if agent.status == "tombstoned":
            return {"ok": True, "status": "tombstoned"}
        agent.last_seq = body["seq"]
        with self._txn():
            self.store.record_heartbeat(agent.name, agent.last_seq, time.time())
            self.store.set_agent_status([agent.name], "stopped")
            self._audit("agent.stopped", {"agent": agent.name}, {"agent_id": agent.agent_id})
        agent.status = "stopped"
        return {"ok": True, "status": "stopped"}

    def list_agents(self) -> list[dict[str, Any]]:
        now = time.time()
        return [self.describe_agent(a, now) for a in sorted(self.agents.values(), key=lambda a: a.name)]

    def describe_agent(self, agent: Agent, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        return {
            "name": agent.name,
            "agent_id": agent.agent_id,
            "kind": agent.kind,
            "framework": agent.framework,
            "pid": agent.pid,
            "host": agent.host,
            "status": agent.status,
            "level": self.effective_level(agent),
            "incarnation": agent.incarnation,
            "last_seen": _iso(agent.last_seen),
            "seconds_since_heartbeat": round(now - agent.last_seen, 3),
            "last_seq": agent.last_seq,
            "read_only_tools": agent.read_only_tools,
        }

    def get_agent(self, name: str) -> dict[str, Any]:
        agent = self.agents.get(name)
        if agent is None:
            raise NotFound(f"unknown agent {name!r}", status_code=404)
        out = self.describe_agent(agent)
        out["credentials"] = [
            {
                "label": c["label"],
                "fingerprint": c["fingerprint"],
                "kind": c["kind"],
                "revoked": {0: "no", 1: "revoked", 2: "revoked for good"}[c["revoked"]],
            }
            for c in self.store.list_credentials(name)
        ]
        out["directives"] = [self._directive_view(d) for d in self.directives_for(agent)]
        return out

    # ------------------------------------------------------------------ state
    def directives_for(self, agent: Agent) -> list[dict[str, Any]]:
        return [d for d in self.directives if Scope.parse(d["scope"]).matches(agent.name, agent.kind, agent.framework)]

    def effective_level(self, agent: Agent) -> int:
        if agent.status == "tombstoned":
            return int(Level.TARGETED_TERMINATION)
        return max((d["level"] for d in self.directives_for(agent)), default=0)

    @staticmethod
    def _directive_view(d: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": d["id"],
            "level": d["level"],
            "scope": d["scope"],
            "execution_id": d["execution_id"],
            "origin": d["origin"],
            "version": d["version"],
        }

    def state_document(self, agent: Agent) -> dict[str, Any]:
        directives = [self._directive_view(d) for d in self.directives_for(agent)]
        return {
            "type": "state",
            "agent": agent.name,
            "agent_id": agent.agent_id,
            "version": self.version,
            "level": self.effective_level(agent),
            "tombstoned": agent.status == "tombstoned",
            "directives": directives,
            "issued_at": time.time(),
        }

    def _cached_state(self, agent: Agent) -> tuple[int, dict[str, Any], bytes]:
        cached = self._state_cache.get(agent.agent_id)
        if cached is None or cached[0] != self.version:
            doc = self.state_document(agent)
            signed = {"document": doc, "signature": self.key.sign(canonical_json(doc))}
            cached = (self.version, signed, canonical_json({"ok": True, "state": signed}))
            self._state_cache[agent.agent_id] = cached
        return cached

    def signed_state(self, agent: Agent) -> dict[str, Any]:
        """The agent's state signed by the server, cached until the state version changes."""
        return self._cached_state(agent)[1]

    def heartbeat_answer(self, agent: Agent) -> bytes:
        """The heartbeat response as bytes, serialised once per agent and state version."""
        return self._cached_state(agent)[2]

    def agent_state(self, agent_id: str) -> dict[str, Any]:
        agent = self.agent_by_id(agent_id)
        return self.signed_state(agent)

    def subscribe(self, listener: Callable[[bytes, list[str]], None]) -> None:
        """``listener(event_bytes, agent_names)`` is called after each state change commits."""
        self._listeners.append(listener)

    def _bump_version(self) -> int:
        self.version += 1
        self.store.set_meta("state_version", str(self.version))
        return self.version

    def _publish(self, event: dict[str, Any], affected: list[str]) -> None:
        payload = sign_event(self.key, event)
        for listener in list(self._listeners):
            try:
                listener(payload, affected)
            except Exception:  # a broken subscriber must not undo a committed kill
                log.exception("push listener failed")

    # ------------------------------------------------------------------ two-phase authorisation
    def arm(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        try:
            level = Level.parse(body.get("level", 3))
            scope = Scope.parse(body.get("scope") or "global")
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        window = float(body.get("window", 300))
        if not 1 <= window <= self.settings.max_window:
            raise BadRequest(f"bad window {window:g}: expected 1 to {self.settings.max_window:g} seconds")
        by, reason = body["by"].strip(), body["reason"].strip()
        if not by or not reason:
            raise BadRequest("--by and --reason must not be empty: a kill needs a named human and a reason")
        self.require(who, level.required_role, f"arming L{int(level)} ({level.title})", by)
        now = time.time()
        row = {
            "id": _new_id("auth"),
            "level": int(level),
            "scope": str(scope),
            "by_email": by,
            "reason": reason,
            "token_id": who.token_id,
            "token_name": who.name,
            "role": int(who.role),
            "created_at": now,
            "expires_at": now + window,
            "status": "armed",
        }
        in_scope = [
            a.name
            for a in self.agents.values()
            if scope.matches(a.name, a.kind, a.framework) and a.status != "tombstoned"
        ]
        with self._txn():
            self.store.insert_authorization(row)
            self._audit(
                "authorization.armed",
                who.actor(by),
                {
                    "authorization_id": row["id"],
                    "level": int(level),
                    "scope": str(scope),
                    "reason": reason,
                    "expires_at": _iso(row["expires_at"]),
                    "agents_in_scope": len(in_scope),
                },
            )
        return self._authorization_view(row, in_scope)

    def _authorization_view(self, row: dict[str, Any], in_scope: list[str] | None = None) -> dict[str, Any]:
        level = Level(row["level"])
        out = {
            "id": row["id"],
            "status": row["status"],
            "expires_at": _iso(row["expires_at"]),
            "level": row["level"],
            "level_name": level.title,
            "scope": row["scope"],
            "by": row["by_email"],
            "reason": row["reason"],
            "created_at": _iso(row["created_at"]),
            "levels_to_fire": [f"L{n} {Level(n).title}" for n in range(1, level + 1)],
            "requires_confirmation": level == Level.FLEET_KILL,
        }
        if level == Level.FLEET_KILL:
            out["confirmation_phrase"] = fleet_confirmation_phrase(Scope.parse(row["scope"]))
        if in_scope is not None:
            out["agents_in_scope"] = in_scope
        return out

    def get_authorization(self, auth_id: str) -> dict[str, Any]:
        row = self.store.get_authorization(auth_id)
        if row is None:
            raise NotFound(f"unknown authorisation {auth_id!r}", status_code=404)
        self._expire(row)
        scope = Scope.parse(row["scope"])
        in_scope = [
            a.name
            for a in self.agents.values()
            if scope.matches(a.name, a.kind, a.framework) and a.status != "tombstoned"
        ]
        return self._authorization_view(row, in_scope)

    def _expire(self, row: dict[str, Any]) -> None:
        if row["status"] == "armed" and time.time() > row["expires_at"]:
            with self._txn():
                if self.store.close_authorization(row["id"], "armed", "expired", time.time()):
                    self._audit("authorization.expired", SYSTEM_ACTOR, {"authorization_id": row["id"]})
            row["status"] = "expired"

    def list_authorizations(self, status: str | None = None) -> list[dict[str, Any]]:
        rows = self.store.list_authorizations(status)
        for row in rows:
            self._expire(row)
        return [self._authorization_view(r) for r in rows if status is None or r["status"] == status]

    def execute(self, who: Principal, auth_id: str, confirm: str | None = None) -> dict[str, Any]:
        try:
            return self._execute(who, auth_id, confirm)
        except (BadRequest, Conflict, NotFound) as exc:
            self.record_refusal(
                "execution.refused",
                who.actor(),
                {
                    "authorization_id": auth_id,
                    "reason": exc.message,
                    "code": exc.code,
                },
            )
            raise

    def _execute(self, who: Principal, auth_id: str, confirm: str | None) -> dict[str, Any]:
        row = self.store.get_authorization(auth_id)
        if row is None:
            raise NotFound(f"unknown authorisation {auth_id!r}: arm first", status_code=404, code="unknown")
        self._expire(row)
        if row["status"] != "armed":
            verb = {
                "executed": "already executed (an authorisation is single-use)",
                "disarmed": "disarmed",
                "expired": "expired: arm again",
            }.get(row["status"], row["status"])
            raise Conflict(f"authorisation {auth_id} is {verb}", status_code=409, code=row["status"])
        level, scope = Level(row["level"]), Scope.parse(row["scope"])
        self.require(who, level.required_role, f"executing L{int(level)} ({level.title})", row["by_email"])
        if level == Level.FLEET_KILL:
            phrase = fleet_confirmation_phrase(scope)
            if (confirm or "").strip() != phrase:
                raise BadRequest(f"L6 needs the typed confirmation {phrase!r}", status_code=400, code="confirm")
        return self._fire(
            origin="execute",
            level=level,
            scope=scope,
            by=row["by_email"],
            reason=row["reason"],
            actor=who.actor(row["by_email"]),
            token_name=who.name,
            auth_id=auth_id,
        )

    def _fire(
        self,
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
    ) -> dict[str, Any]:
        """Fire L1…level on every agent in scope, in one transaction, one audit entry a step."""
        started = time.time()
        execution_id = _new_id("exe")
        targets = [
            a for a in self.agents.values() if scope.matches(a.name, a.kind, a.framework) and a.status != "tombstoned"
        ]
        names = sorted(a.name for a in targets)
        fired: list[str] = []
        directive = {
            "id": _new_id("dir"),
            "execution_id": execution_id,
            "level": int(level),
            "scope": str(scope),
            "origin": origin,
            "created_at": started,
        }
        with self._txn():
            if auth_id is not None and not self.store.close_authorization(
                auth_id, "armed", "executed", started, execution_id
            ):
                raise Conflict(f"authorisation {auth_id} was used concurrently", status_code=409, code="executed")
            self._audit(
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
            for step in range(1, int(level) + 1):
                data: dict[str, Any] = {
                    "execution_id": execution_id,
                    "level": step,
                    "name": Level(step).title,
                    "agents": len(names),
                }
                if step == Level.CREDENTIAL_REVOCATION:
                    data["credentials_revoked"] = self.store.set_credentials_revoked(names, 1, started)
                if step >= Level.TARGETED_TERMINATION:
                    data["credentials_revoked_for_good"] = self.store.set_credentials_revoked(names, 2, started)
                    self.store.set_agent_status(names, "tombstoned")
                    data["tombstoned"] = names
                self._audit("level.fired", actor, data)
                fired.append(f"L{step}")
            directive["version"] = self._bump_version()
            self.store.insert_directive(directive)
            finished = time.time()
            self.store.insert_execution(
                {
                    "id": execution_id,
                    "authorization_id": auth_id,
                    "origin": origin,
                    "level": int(level),
                    "scope": str(scope),
                    "by_email": by,
                    "reason": reason,
                    "token_name": token_name,
                    "started_at": started,
                    "finished_at": finished,
                    "agents": names,
                    "levels_fired": fired,
                    "directive_id": directive["id"],
                    "version": directive["version"],
                }
            )
            self._audit(
                "execution.completed",
                actor,
                {
                    "execution_id": execution_id,
                    "levels_fired": fired,
                    "agents_terminated": len(names),
                    "directive_id": directive["id"],
                },
            )
        directive["active"] = 1
        self.directives.append(directive)
        if level >= Level.TARGETED_TERMINATION:
            for agent in targets:
                agent.status = "tombstoned"
        self._publish(
            {
                "type": "directive",
                "op": "add",
                "version": self.version,
                "directive": self._directive_view(directive),
                "issued_at": time.time(),
            },
            names,
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
            "directive_id": directive["id"],
            "version": directive["version"],
            "duration_ms": round((finished - started) * 1000, 3),
        }

    def disarm(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        auth_id = body.get("authorization_id")
        by = (body.get("by") or who.name).strip()
        self.require(who, Role.OPERATOR, "disarming", by)
        rows = [self.store.get_authorization(auth_id)] if auth_id else self.store.list_authorizations("armed")
        if auth_id and rows[0] is None:
            raise NotFound(f"unknown authorisation {auth_id!r}", status_code=404)
        disarmed = []
        with self._txn():
            for row in rows:
                assert row is not None
                if self.store.close_authorization(row["id"], "armed", "disarmed", time.time()):
                    disarmed.append(row["id"])
                    self._audit(
                        "authorization.disarmed",
                        who.actor(by),
                        {
                            "authorization_id": row["id"],
                            "reason": body.get("reason") or "",
                        },
                    )
        if auth_id and not disarmed:
            assert rows[0] is not None
            raise Conflict(f"authorisation {auth_id} is {rows[0]['status']}, not armed", status_code=409)
        return {"disarmed": disarmed, "status": "disarmed" if disarmed else "nothing armed"}

    # ------------------------------------------------------------------ restore and lift
    def restore(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """Reverse L1–L3 directives covered by the scope (operator role)."""
        return self._lift(who, body, reversible=True)

    def lift(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """Lift L4–L6 directives and tombstones (authority, or fleet for L6)."""
        return self._lift(who, body, reversible=False)

    def _lift(self, who: Principal, body: dict[str, Any], *, reversible: bool) -> dict[str, Any]:
        try:
            scope = Scope.parse(body["scope"])
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        by, reason = body["by"].strip(), body["reason"].strip()
        if not by or not reason:
            raise BadRequest("--by and --reason must not be empty")
        verb = "restore" if reversible else "lift"
        self.require(who, Role.OPERATOR if reversible else Role.AUTHORITY, verb, by)
        kinds = {a.name: (a.kind, a.framework) for a in self.agents.values()}
        covered = [d for d in self.directives if scope.covers(Scope.parse(d["scope"]), kinds)]
        chosen = [d for d in covered if (d["level"] <= Level.TOOL_CALL_FREEZE) == reversible]
        if not reversible and any(d["level"] == Level.FLEET_KILL for d in chosen):
            self.require(who, Role.FLEET, "lifting L6", by)
        tomb = (
            []
            if reversible
            else [
                a
                for a in self.agents.values()
                if a.status == "tombstoned" and scope.matches(a.name, a.kind, a.framework)
            ]
        )
        if not chosen and not tomb:
            held = [d for d in covered if d not in chosen]
            hint = ""
            if reversible and held:
                hint = f"; L{max(d['level'] for d in held)} is not reversible by restore: an authority must `m99 lift`"
            raise Conflict(f"nothing to {verb} in scope {scope}{hint}", status_code=409, code="nothing")
        now = time.time()
        ids = [d["id"] for d in chosen]
        remaining = [d for d in self.directives if d["id"] not in ids]
        affected = sorted(
            a.name
            for a in self.agents.values()
            if any(Scope.parse(d["scope"]).matches(a.name, a.kind, a.framework) for d in chosen) or a in tomb
        )
        with self._txn():
            self.store.lift_directives(ids, now, by)
            still_l1 = {
                a.name
                for a in self.agents.values()
                if any(Scope.parse(d["scope"]).matches(a.name, a.kind, a.framework) for d in remaining)
            }
            unrevoked = self.store.set_credentials_revoked([n for n in affected if n not in still_l1], 0, now)
            if tomb:
                self.store.set_agent_status([a.name for a in tomb], "stopped")
            version = self._bump_version()
            self._audit(
                f"directive.{'restored' if reversible else 'lifted'}",
                who.actor(by),
                {
                    "scope": str(scope),
                    "reason": reason,
                    "directives": ids,
                    "agents": affected,
                    "credentials_restored": unrevoked,
                    "tombstones_lifted": [a.name for a in tomb],
                },
            )
        self.directives = remaining
        for agent in tomb:
            agent.status = "stopped"
        for d in chosen:
            self._publish(
                {
                    "type": "directive",
                    "op": "lift",
                    "version": version,
                    "directive": self._directive_view(d),
                    "issued_at": time.time(),
                },
                affected,
            )
        still_held = [n for n in affected if n in still_l1]
        return {
            "success": True,
            "scope": str(scope),
            "lifted": ids,
            "agents": affected,
            "version": version,
            "still_held": still_held,
            "tombstones_lifted": [a.name for a in tomb],
        }

    # ------------------------------------------------------------------ dead man's switch
    def serving(self) -> None:
        """The server accepts connections from now on: no agent could have reached it before."""
        self.deadman_since = time.time()

    def check_deadman(self, now: float | None = None) -> list[dict[str, Any]]:
        """Kill every agent silent for ``missed_heartbeats`` intervals; evidence first."""
        now = now or time.time()
        window = self.settings.heartbeat_interval * self.settings.missed_heartbeats
        fired = []
        for agent in list(self.agents.values()):
            # After a restart, silence is counted from the restart, not from before it.
            seen = max(agent.last_seen, self.deadman_since)
            if agent.status != "active" or now - seen <= window:
                continue
            evidence = {
                "last_heartbeat_at": _iso(agent.last_seen),
                "last_seq": agent.last_seq,
                "silent_seconds": round(now - agent.last_seen, 3),
                "pid": agent.pid,
                "host": agent.host,
                "incarnation": agent.incarnation,
                "threshold_seconds": window,
            }
            with self._txn():
                agent.status = "silent"
                self.store.set_agent_status([agent.name], "silent")
                self._audit("deadman.evidence", SYSTEM_ACTOR, {"agent": agent.name, **evidence})
            result = self._fire(
                origin="deadman",
                level=Level(self.settings.deadman_level),
                scope=Scope("agent", agent.name),
                by="dead-mans-switch",
                reason=f"{self.settings.missed_heartbeats} heartbeats missed",
                actor={"by": "dead-mans-switch", "role": "system"},
                token_name="system",
                auth_id=None,
                extra={"last_heartbeat": evidence},
            )
            fired.append(result)
        return fired

    # ------------------------------------------------------------------ acknowledgements
    def acknowledge(self, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """An agent applied state ``version``: record time-to-halt against the executions it covers."""
        agent = self._checked_ack(agent_id, body)
        with self._txn():
            recorded = self._record_ack(agent, body)
        return {"ok": True, "executions": recorded}

    def acknowledge_batch(
        self, acks: list[dict[str, Any]], signatures: list[bool | None] | None = None
    ) -> dict[str, Any]:
        """Many agents' signed acks in one request (a process holding a Guard per agent sends its
        acks together): each is checked on its own, the accepted ones are recorded in one transaction.
        ``signatures``: ``ack_signatures(acks)``, when the caller checked them already."""
        results: list[dict[str, Any]] = []
        accepted: list[tuple[Agent, dict[str, Any], dict[str, Any]]] = []
        for i, body in enumerate(acks):
            result: dict[str, Any] = {"agent_id": body["agent_id"], "ok": True}
            try:
                checked = signatures[i] if signatures is not None else None
                accepted.append((self._checked_ack(body["agent_id"], body, checked), body, result))
            except ControlPlaneError as exc:  # refused ones are audited by the check itself
                result.update(ok=False, error={"code": exc.code, "message": exc.message})
            results.append(result)
        with self._txn():
            for agent, body, result in accepted:
                result["executions"] = self._record_ack(agent, body)
        return {"ok": True, "results": results}

    def _checked_ack(self, agent_id: str, body: dict[str, Any], signature_ok: bool | None = None) -> Agent:
        agent = self.agent_by_id(agent_id)
        self.check_signed(agent, "ack", body, ACK_FIELDS, last=agent.last_ack_seq, signature_ok=signature_ok)
        agent.last_ack_seq = body["seq"]
        return agent

    def _record_ack(self, agent: Agent, body: dict[str, Any]) -> list[str]:
        # A signed ack is contact too: it goes with the next group commit of heartbeats.
        agent.last_seen = time.time()
        self._dirty.add(agent.name)
        recorded = []
        for d in self.directives_for(agent):
            if d["version"] <= body["version"] and d["origin"] in ("execute", "deadman"):
                ms = (body["applied_at"] - d["created_at"]) * 1000
                self.store.record_ack(d["execution_id"], agent.name, body["version"], agent.last_seen, ms)
                recorded.append(d["execution_id"])
        return recorded

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        row = self.store.get_execution(execution_id)
        if row is None:
            raise NotFound(f"unknown execution {execution_id!r}", status_code=404)
        acks = self.store.list_acks(execution_id)
        times = sorted(a["time_to_halt_ms"] for a in acks)
        row["started_at"], row["finished_at"] = _iso(row["started_at"]), _iso(row["finished_at"])
        row["time_to_halt"] = {
            "acknowledged": len(acks),
            "in_scope": len(row["agents"]),
            "p50_ms": times[len(times) // 2] if times else None,
            "max_ms": times[-1] if times else None,
            "per_agent": {a["agent"]: round(a["time_to_halt_ms"], 3) for a in acks},
        }
        return row

    def list_executions(self) -> list[dict[str, Any]]:
        return [
            {**r, "started_at": _iso(r["started_at"]), "finished_at": _iso(r["finished_at"])}
            for r in self.store.list_executions()
        ]

    # ------------------------------------------------------------------ status and audit
    def status(self) -> dict[str, Any]:
        armed = self.list_authorizations("armed")
        agents = self.list_agents()
        held = [a for a in agents if a["level"] > 0]
        return {
            "status": "armed" if armed else ("engaged" if self.directives else "idle"),
            "version": self.version,
            "agents_total": len(agents),
            "agents_held": len(held),
            "agents": agents,
            "armed": armed,
            "directives": [self._directive_view(d) for d in self.directives],
            "audit_head": {"seq": self._head[0], "hash": self._head[1]},
            "settings": {
                "heartbeat_interval": self.settings.heartbeat_interval,
                "missed_heartbeats": self.settings.missed_heartbeats,
                "deadman_level": self.settings.deadman_level,
            },
        }

    def verify_audit(self) -> audit.VerifyResult:
        checkpoints = [
            audit.Checkpoint(r["seq"], r["hash"], r["ts"], r["signature"]) for r in self.store.list_checkpoints()
        ]
        head = audit.read_head_file(self.head_file) if self.head_file.exists() else None
        if head is not None:
            checkpoints.append(head[0])
        # The head this process committed last is held in memory, out of an attacker's reach
        # in the database: deleting the newest entries and their checkpoints is still caught.
        checkpoints.append(audit.sign_checkpoint(self.key, self._head[0], self._head[1], audit.utc_now_iso()))
        return audit.verify_entries(
            self.store.iter_audit(), checkpoints=checkpoints, public_key_b64=self.key.public_b64
        )
