"""The agent registry: who is registered, under which key, and the identity rules for names.

A name is bound to the Ed25519 key it first registered with.  Registering it again needs proof of
that key (every registration is signed), an enrolment token that grants re-binding names of its
prefix, or an operator's ``m99 agents forget NAME`` first.  A restarted agent keeps its key in its
data directory and resumes its identity with no operator step.  A tombstoned name (L5/L6) may not
register at all until an authority lifts it.

``Registry`` is each replica's in-memory copy of the agents table, rebuilt from the store on every
change; ``Registrations`` writes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..crypto import VerifyKey, fingerprint, keyed_fingerprint
from ..errors import BadRequest, Conflict, NotFound, RateLimited, Unauthenticated
from ..levels import Level, Role
from ..protocol import NAME_RULE, bad_text, clean_frameworks, request_message, valid_name
from ..store import Store
from ..store.records import AgentRecord, CredentialRecord
from .ledger import Ledger
from .refusals import RateLimiter, Refusals
from .settings import Settings
from .tokens import Principal, new_id

__all__ = ["Agent", "Registrations", "Registry", "iso"]


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


@dataclass(slots=True, eq=False)
class Agent:
    """A registered agent as a replica holds it: its row, its key, and what its requests last said."""

    name: str
    agent_id: str
    kind: str
    frameworks: tuple[str, ...]
    pid: int | None
    host: str
    public_key: str
    incarnation: int
    registered_at: float
    last_seen: float
    last_seq: int
    status: str
    status_reason: str
    status_at: float
    read_only_tools: tuple[str, ...]
    changed: int
    verify_key: VerifyKey = field(repr=False)
    # Acks have their own sequence high-water mark: an agent signs them on its push thread while a
    # heartbeat may be in flight, so the two kinds can overtake each other on the wire.
    last_ack_seq: int = 0
    stream_ts: float = 0.0  # the signed timestamp of its newest push stream
    policy: str = ""  # the KILLSWITCH.md it runs under ("sha256:<hex>"), "" for none

    @classmethod
    def from_record(cls, r: AgentRecord) -> Agent:
        return cls(
            r.name,
            r.agent_id,
            r.kind,
            r.frameworks,
            r.pid,
            r.host,
            r.public_key,
            r.incarnation,
            r.registered_at,
            r.last_seen,
            r.last_seq,
            r.status,
            r.status_reason,
            r.status_at,
            r.read_only_tools,
            r.changed,
            VerifyKey.from_b64(r.public_key),
            r.last_seq,
            policy=r.policy,
        )

    @property
    def live(self) -> bool:
        """Whether it counts as running: in scopes and acknowledgement counts."""
        return self.status in ("active", "silent")


def _key_fingerprint(public_key: str) -> str:
    return fingerprint(VerifyKey.from_b64(public_key).raw)


class Registry:
    """Agents by name and by registration id.  Written under a lock; read without one (readers take a
    ``list()`` of the values, which the interpreter makes in one step)."""

    def __init__(self) -> None:
        self.by_name: dict[str, Agent] = {}
        self.by_id: dict[str, Agent] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, name: str) -> Agent | None:
        return self.by_name.get(name)

    def by_agent_id(self, agent_id: str) -> Agent | None:
        return self.by_id.get(agent_id)

    def all(self) -> list[Agent]:
        return list(self.by_name.values())

    def kinds(self) -> dict[str, tuple[str, Collection[str]]]:
        return {a.name: (a.kind, a.frameworks) for a in self.all()}

    def apply(self, records: Iterable[AgentRecord]) -> list[Agent]:
        """Take rows read from the store; liveness this process saw later than the row is kept."""
        changed = []
        with self._lock:
            for r in records:
                old = self.by_name.get(r.name)
                if old is not None and old.changed > r.changed:
                    continue  # an older row than one applied already
                agent = Agent.from_record(r)
                if old is not None and old.agent_id == agent.agent_id:
                    agent.last_seen = max(agent.last_seen, old.last_seen)
                    agent.last_seq = max(agent.last_seq, old.last_seq)
                    agent.last_ack_seq = max(agent.last_seq, old.last_ack_seq)
                    agent.stream_ts = old.stream_ts
                if old is not None:
                    self.by_id.pop(old.agent_id, None)
                self.by_name[r.name] = agent
                self.by_id[agent.agent_id] = agent
                changed.append(agent)
        return changed

    def remove(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                old = self.by_name.pop(name, None)
                if old is not None:
                    self.by_id.pop(old.agent_id, None)

    def replace(self, records: Iterable[AgentRecord]) -> None:
        with self._lock:
            self.by_name, self.by_id = {}, {}
        self.apply(records)


class Registrations:
    """Registering, forgetting and describing agents."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        registry: Registry,
        refusals: Refusals,
        settings: Settings,
        fingerprint_key: bytes,
        level_of: Callable[[str, str, Collection[str], str], int],
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.registry = registry
        self.refusals = refusals
        self.settings = settings
        self.fingerprint_key = fingerprint_key
        self.level_of = level_of
        self.limiter = RateLimiter(settings.register_rate, settings.register_burst)

    def keyed(self, wire_fingerprint: str) -> str:
        """The stored form of a fingerprint an agent sent: keyed, so a reader cannot confirm a guess."""
        return keyed_fingerprint(self.fingerprint_key, wire_fingerprint)

    def register(self, body: dict[str, Any], *, source: str, principal: Principal | None) -> AgentRecord:
        wait = self.limiter.allow(source)
        if wait:
            raise RateLimited(f"too many registrations from {source}: retry in {wait:.1f} s", retry_after=wait)
        name, kind = body["name"], body.get("kind", "agent")
        for label, value in (("name", name), ("kind", kind)):
            if not valid_name(value):
                raise BadRequest(f"bad agent {label} {value!r}: {NAME_RULE}")
        try:
            frameworks = clean_frameworks(body.get("frameworks") or ())
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        try:
            verify_key = VerifyKey.from_b64(body["public_key"])
        except ValueError as exc:
            raise BadRequest(f"bad public_key: {exc}") from None
        host = body.get("host") or ""
        if bad_text(host):
            raise BadRequest(f"bad host {host!r}: {bad_text(host)}")
        now = time.time()
        actor = {"agent": name}
        if not verify_key.verify(request_message("register", name, body), body["signature"]):
            self.refusals.note("agent.registration_refused", actor, {"reason": "bad signature"}, source)
            raise Unauthenticated("registration refused: the signature does not match public_key")
        if abs(body["ts"] - now) > self.settings.clock_skew:
            raise Conflict(
                f"registration refused: timestamp outside the allowed skew of {self.settings.clock_skew:g} s",
                code="stale",
            )
        self._check_enrolment(name, kind, principal, source)
        key_fp = fingerprint(verify_key.raw)
        with self.ledger.unit() as unit:
            tx = unit.tx
            old = tx.get_agent(name, lock=True)
            rebound = False
            if old is not None and old.status == "tombstoned":
                self.refusals.note(
                    "agent.resurrection_refused",
                    actor,
                    {"pid": body.get("pid"), "host": body.get("host"), "public_key": key_fp},
                    source,
                )
                raise Conflict(
                    f"agent {name!r} was terminated and is tombstoned: an authority must lift it "
                    "(m99 lift --scope agent:NAME) before it may register again",
                    code="tombstoned",
                )
            if old is not None and old.public_key != body["public_key"]:
                if not (principal is not None and principal.grants.get("rebind")):
                    self.refusals.note(
                        "agent.name_refused", actor, {"public_key": key_fp, "host": body.get("host")}, source
                    )
                    raise Conflict(
                        f"agent name {name!r} is bound to another key (registered from {old.host or 'elsewhere'}, "
                        f"pid {old.pid}): register with that agent's key file, or have an authority run "
                        f"`m99 agents forget {name}` first",
                        code="name_bound",
                    )
                rebound = True
            elif old is not None and body["ts"] <= old.registered_ts:
                raise Conflict("registration refused: replayed (not newer than the last one)", code="replayed")
            record = AgentRecord(
                name=name,
                agent_id=new_id("agt"),
                kind=kind,
                frameworks=frameworks,
                pid=body.get("pid"),
                host=body.get("host") or "",
                public_key=body["public_key"],
                incarnation=(old.incarnation + 1) if old else 1,
                registered_at=now,
                last_seen=now,
                last_seq=0,
                status="active",
                read_only_tools=tuple(sorted(set(body.get("read_only_tools") or ()))),
                metadata=body.get("metadata") or {},
                changed=tx.next_registry_seq(),
                status_at=now,
                status_reason="registered",
                registered_ts=float(body["ts"]),
                enrolled_by=principal.token_id if principal else None,
                policy=str(body.get("policy") or ""),
            )
            tx.put_agent(record)
            creds = [
                CredentialRecord(name, c["label"], self.keyed(c["fingerprint"]), c.get("kind", "secret"))
                for c in body.get("credentials") or ()
            ]
            if creds:
                tx.add_credentials(creds)
                if self.level_of(name, kind, frameworks, "active") >= Level.CREDENTIAL_REVOCATION:
                    tx.set_credentials_revoked([name], 1, now)
            unit.audit(
                "agent.rebound" if rebound else "agent.registered",
                actor,
                {
                    "agent_id": record.agent_id,
                    "kind": kind,
                    "frameworks": list(frameworks),
                    "pid": record.pid,
                    "host": record.host,
                    "incarnation": record.incarnation,
                    "public_key": key_fp,
                    "credentials": [c.fingerprint for c in creds],
                    "replaces": old.agent_id if old else None,
                    "enrolled_by": record.enrolled_by,
                    "policy": record.policy or None,
                    **(
                        {"previous_key": fingerprint(VerifyKey.from_b64(old.public_key).raw)} if rebound and old else {}
                    ),
                },
            )
        return record

    def _check_enrolment(self, name: str, kind: str, principal: Principal | None, source: str) -> None:
        if principal is None:
            if self.settings.enrol == "token":
                self.refusals.note("agent.registration_refused", {"agent": name}, {"reason": "no token"}, source)
                raise Unauthenticated(
                    "this control plane enrols agents by token: set M99_ENROL_TOKEN (an agent-role token from "
                    "`m99 token create --role agent`)"
                )
            return
        if principal.role == Role.AGENT:
            prefix, want_kind = principal.grants.get("name_prefix"), principal.grants.get("kind")
            if (prefix and not name.startswith(prefix)) or (want_kind and kind != want_kind):
                self.refusals.note(
                    "agent.registration_refused", principal.actor(), {"agent": name, "reason": "outside grant"}, source
                )
                raise Unauthenticated(
                    f"enrolment token {principal.name!r} may register "
                    + (f"names starting {prefix!r}" if prefix else "any name")
                    + (f" of kind {want_kind!r}" if want_kind else "")
                    + f", not {name!r} ({kind})"
                )
        elif principal.role < Role.OPERATOR:
            raise Unauthenticated(f"token {principal.name!r} ({principal.role.label}) may not enrol agents")

    def forget(self, who: Principal, name: str, by: str, reason: str) -> dict[str, Any]:
        """Free a name: the agent row goes (its directives stay: a stop aimed at the name still holds)."""
        with self.ledger.unit() as unit:
            old = unit.tx.get_agent(name, lock=True)
            if old is None:
                raise NotFound(f"unknown agent {name!r}")
            if old.status in ("active", "silent") and time.time() - old.last_seen < self.settings.deadman_window:
                raise Conflict(
                    f"agent {name!r} is running (last heartbeat {time.time() - old.last_seen:.0f} s ago): stop it "
                    "first, or wait until it is silent",
                    code="running",
                )
            unit.tx.delete_agents([name], unit.tx.next_registry_seq())
            unit.audit(
                "agent.forgotten",
                who.actor(by),
                {"agent": name, "agent_id": old.agent_id, "reason": reason, "status": old.status},
            )
        self.registry.remove([name])
        return {"forgotten": name}

    def credentials(self, name: str) -> list[CredentialRecord]:
        with self.store.snapshot() as tx:
            return tx.list_credentials(name)
