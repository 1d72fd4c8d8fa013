"""The typed rows a store reads and writes: what the control plane keeps, one class per table.

Plain dataclasses with no driver types in them, so every store returns the same thing.  Times are
Unix seconds (floats); JSON columns come back as Python values (tuples for lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AckRecord",
    "AgentRecord",
    "AgentStatus",
    "AuditRow",
    "AuthorizationRecord",
    "BudgetRecord",
    "CredentialRecord",
    "DirectiveRecord",
    "EvidenceRecord",
    "ExecutionRecord",
    "TokenRecord",
]

# active: heartbeating; silent: the dead man's switch fired on it; stopped: deregistered, or gone
# (silent long after the dead man's switch); tombstoned: terminated at L5/L6, may not register again.
AgentStatus = Literal["active", "silent", "stopped", "tombstoned"]


@dataclass(slots=True)
class AgentRecord:
    name: str
    agent_id: str  # one registration: a new one is made at every (re-)registration
    kind: str
    frameworks: tuple[str, ...]
    pid: int | None
    host: str
    public_key: str  # the key the name is bound to (base64 Ed25519)
    incarnation: int
    registered_at: float
    last_seen: float
    last_seq: int
    status: str
    read_only_tools: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    changed: int = 0  # the registry sequence number of the row's last change (not of heartbeats)
    status_at: float = 0.0
    status_reason: str = ""
    registered_ts: float = 0.0  # the signed timestamp of the registration: a replay is not newer
    enrolled_by: str | None = None  # the enrolment token's id, when one was presented
    policy: str = ""  # the KILLSWITCH.md it runs under, "sha256:<hex>" of the file, "" for none


@dataclass(slots=True)
class CredentialRecord:
    agent: str
    label: str
    fingerprint: str  # keyed: "hmac-sha256:<hex>"
    kind: str
    revoked: int = 0  # 0 live, 1 revoked (restorable), 2 revoked for good
    revoked_at: float | None = None


@dataclass(slots=True)
class TokenRecord:
    id: str
    name: str
    role: int
    token_hash: str
    created_at: float
    created_by: str
    revoked_at: float | None = None
    # For an enrolment (agent-role) token: {"name_prefix": str|None, "kind": str|None, "rebind": bool}.
    grants: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AuthorizationRecord:
    id: str
    level: int
    scope: str
    by_email: str
    reason: str
    token_id: str
    token_name: str
    role: int
    created_at: float
    expires_at: float
    status: str  # armed | executed | disarmed | expired
    closed_at: float | None = None
    execution_id: str | None = None


@dataclass(slots=True)
class DirectiveRecord:
    id: str
    execution_id: str
    level: int
    scope: str
    origin: str  # execute | deadman | policy | drill
    created_at: float
    version: int
    by_email: str = ""
    reason: str = ""
    active: bool = True
    lifted_at: float | None = None
    lifted_by: str | None = None
    lifted_version: int | None = None


@dataclass(slots=True)
class ExecutionRecord:
    id: str
    authorization_id: str | None
    origin: str
    level: int
    scope: str
    by_email: str
    reason: str
    token_name: str
    started_at: float
    finished_at: float
    agents: tuple[str, ...]
    levels_fired: tuple[str, ...]
    directive_id: str
    version: int
    # Which registration of each agent was in scope: only it may confirm the halt.
    targets: dict[str, str] = field(default_factory=dict)
    state: str = "complete"


@dataclass(slots=True)
class AckRecord:
    execution_id: str
    agent: str
    agent_id: str
    version: int
    acked_at: float  # server clock, when it arrived
    applied_at: float  # agent clock, when it enforced the change (checked against the skew)
    time_to_halt_ms: float
    receipt: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EvidenceRecord:
    """A signed snapshot kept for an execution: the control plane's own (``kind`` "server", agent "")
    or an agent's (``kind`` "agent"), as the signer sent it (``document``: canonical JSON)."""

    execution_id: str
    kind: str  # "server" | "agent"
    agent: str
    agent_id: str
    received_at: float
    document: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class BudgetRecord:
    """One agent's share of a fleet-wide daily budget (``cost_limit_daily_scope``): what the control
    plane granted it on ``day`` (UTC) and what it last reported spent.  ``limit_usd`` is the limit the
    agent's own policy declares; ``scope`` is ``class:KIND`` or ``global``."""

    scope: str
    day: str
    agent: str  # the agent's name: a restart under the same name (and key) takes its share up again
    agent_id: str  # the registration that last leased
    limit_usd: float
    granted_usd: float
    spent_usd: float
    updated_at: float
    refused: int = 0  # leases refused because the budget was used up (audited at the first)
    leases: int = 0  # lease requests answered today (bounded: see m99.control.budgets)
    seq: int = 0  # the newest signed request's sequence number: an older one is a replay


@dataclass(frozen=True, slots=True)
class AuditRow:
    seq: int
    ts: str
    kind: str
    body: bytes
    hash: str
