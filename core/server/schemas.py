"""The request bodies of the REST API, bounded at the door: every integer within 63 bits, every float
finite, every string and list of a bounded size, no unknown field, no type coercion.  What a value
means (a valid name, a scope, an identity) is checked by the control plane itself."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..protocol import MAX_FRAMEWORKS, MAX_INT

MAX_ACKS = 1000  # per batch; in practice the 64 KiB body limit holds about 250

Int63 = Annotated[int, Field(ge=0, le=MAX_INT)]
Seq = Annotated[int, Field(ge=1, le=MAX_INT)]
# A Unix time: finite, and between 1970 and the year 5138.
Timestamp = Annotated[float, Field(ge=0, le=1e11)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
Signature = Annotated[str, Field(min_length=1, max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class CredentialIn(Strict):
    label: str = Field(min_length=1, max_length=128)
    fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    kind: str = Field(default="secret", pattern=r"^(env|secret|attribute)$")


class RegisterIn(Strict):
    """A registration, signed with the key it binds the name to (proof of possession)."""

    name: Name
    kind: Name = "agent"
    frameworks: list[Name] = Field(default_factory=list, max_length=MAX_FRAMEWORKS)
    pid: Int63 | None = None
    host: str | None = Field(default=None, max_length=255)
    public_key: str = Field(min_length=40, max_length=64)
    read_only_tools: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=1000)
    credentials: list[CredentialIn] = Field(default_factory=list, max_length=1000)
    metadata: dict[str, Any] = Field(default_factory=dict)
    policy: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")  # its KILLSWITCH.md, hashed
    ts: Timestamp
    signature: Signature


class SignedIn(Strict):
    seq: Seq
    ts: Timestamp
    signature: Signature


class HeartbeatIn(SignedIn):
    frameworks: list[Name] | None = Field(default=None, max_length=MAX_FRAMEWORKS)


PolicyStage = Literal["none", "level_1_throttle", "level_2_pause", "level_3_shutdown"]
Short = Annotated[str, Field(max_length=128)]


class ChannelIn(Strict):
    kind: Annotated[str, Field(min_length=1, max_length=32)]
    target: Annotated[str, Field(max_length=256)]


class PolicyEventIn(Strict):
    """One KILLSWITCH.md transition the agent's Guard enforced (m99.policy.PolicyEvent)."""

    kind: Literal["transition"] = "transition"
    at: Timestamp
    stage: PolicyStage
    previous: PolicyStage
    trigger: Short
    value: float | None = None
    limit: float | None = None
    action: Short
    reason: str = Field(default="", max_length=1000)
    rule: Short = ""
    by: str = Field(default="", max_length=256)
    notify: bool = False
    channels: list[ChannelIn] = Field(default_factory=list, max_length=16)


class PolicyReportIn(SignedIn):
    event: PolicyEventIn
    evidence: dict[str, Any] | None = None  # the Guard's snapshot at a save_state stop (bounded server-side)


class BudgetLeaseIn(SignedIn):
    """A lease of a fleet budget's chunk: the agent says which scope its policy names and its limit; the
    control plane decides which class that is (the agent's registered kind)."""

    scope: Literal["class", "global"]
    day: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    limit_usd: float = Field(gt=0, le=1e9)
    want_usd: float = Field(ge=0, le=1e9)
    spent_usd: float = Field(ge=0, le=1e12)
    final: bool = False
    nonce: str = Field(pattern=r"^[0-9a-f]{16,64}$")  # echoed in the signed answer: ties it to this request


class ReceiptIn(Strict):
    """The positive checks an agent ran after applying a change (``m99.effects.receipt``)."""

    level: int = Field(ge=0, le=6)
    checked_at: Timestamp
    tools_refused: bool | None = None
    connections_refused: bool | None = None
    connections_open: Int63 | None = None
    messages_withheld: bool | None = None
    credentials_protected: Int63 | None = None
    credentials_revoked: Int63 | None = None
    credential_fingerprints: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=16)
    process_exit: str | None = Field(default=None, max_length=40)
    grace_seconds: float | None = Field(default=None, ge=0, le=1e6)
    failures: list[Annotated[str, Field(max_length=300)]] = Field(default_factory=list, max_length=8)


class AckIn(SignedIn):
    version: Int63
    applied_at: Timestamp
    receipt: ReceiptIn | None = None


class AgentAckIn(AckIn):
    agent_id: str = Field(min_length=1, max_length=100)


class AckBatchIn(Strict):
    acks: list[AgentAckIn] = Field(min_length=1, max_length=MAX_ACKS)


MAX_EVIDENCE = 64  # documents per request (the 64 KiB body limit bounds them first)


class EvidenceItemIn(Strict):
    """One agent's evidence, signed like its other requests (kind ``evidence``, no sequence number);
    what the document says is checked by the control plane."""

    agent_id: str = Field(min_length=1, max_length=100)
    ts: Timestamp
    evidence: dict[str, Any]
    signature: Signature


class EvidenceIn(Strict):
    items: list[EvidenceItemIn] = Field(min_length=1, max_length=MAX_EVIDENCE)


class ArmIn(Strict):
    by: str = Field(min_length=1, max_length=320)
    reason: str = Field(min_length=1, max_length=2000)
    level: int = Field(default=3, ge=1, le=6)
    scope: str = Field(default="global", min_length=1, max_length=200)
    window: float = Field(default=300.0, ge=0, le=1e9)
    allow_empty: bool = False


class DrillIn(Strict):
    scope: str = Field(min_length=1, max_length=200)
    level: int = Field(default=3, ge=1, le=6)  # above 3 refused with its reason by the control plane
    by: str = Field(min_length=1, max_length=320)
    reason: str = Field(default="scheduled drill", min_length=1, max_length=2000)


class DrillScheduleIn(Strict):
    every_seconds: float = Field(ge=0, le=366 * 86400)
    by: str = Field(min_length=1, max_length=320)


class BreakGlassIn(Strict):
    by: str = Field(min_length=1, max_length=320)


class BreakGlassAckIn(Strict):
    token_id: str = Field(min_length=1, max_length=100)
    by: str = Field(min_length=1, max_length=320)


class ExecuteIn(Strict):
    authorization_id: str = Field(min_length=1, max_length=100)
    confirm: str | None = Field(default=None, max_length=300)
    force: bool = True


class DisarmIn(Strict):
    authorization_id: str | None = Field(default=None, min_length=1, max_length=100)
    all: bool = False
    by: str | None = Field(default=None, max_length=320)
    reason: str | None = Field(default=None, max_length=2000)


class ScopeActIn(Strict):
    scope: str = Field(min_length=1, max_length=200)
    by: str = Field(min_length=1, max_length=320)
    reason: str = Field(min_length=1, max_length=2000)


class PolicyCommandIn(Strict):
    agent: str = Field(min_length=1, max_length=200)
    by: str = Field(min_length=1, max_length=320)
    reason: str = Field(min_length=1, max_length=2000)
    trigger: str | None = Field(default=None, max_length=64)  # override: the TRIGGERS key
    seconds: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)  # override: how long


class ForgetIn(Strict):
    by: str = Field(min_length=1, max_length=320)
    reason: str = Field(min_length=1, max_length=2000)


class TokenIn(Strict):
    name: Name
    role: str = Field(max_length=20)
    name_prefix: str | None = Field(default=None, max_length=128)
    kind: str | None = Field(default=None, max_length=128)
    rebind: bool = False
