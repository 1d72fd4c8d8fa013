"""The typed KILLSWITCH.md policy: frozen values the parser builds and the engine, the linter and
the Guard read.  Nothing here touches a file; ``m99.policy.parse`` makes these from one."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "DEFAULT_ENTRY",
    "DEFAULT_LOG_FIELDS",
    "LEVEL_ACTIONS",
    "LEVEL_KEYS",
    "SECTIONS",
    "TRIGGER_KEYS",
    "Audit",
    "Channel",
    "Escalation",
    "EscalationLevel",
    "Forbidden",
    "HostRule",
    "Network",
    "Override",
    "Policy",
    "Problem",
    "Stage",
    "Triggers",
]

SECTIONS = ("TRIGGERS", "FORBIDDEN", "ESCALATION", "AUDIT", "OVERRIDE", "METADATA")


class Stage(IntEnum):
    """Where the escalation ladder stands: none, then the spec's three levels."""

    NONE = 0
    THROTTLE = 1
    PAUSE = 2
    SHUTDOWN = 3

    @property
    def key(self) -> str:
        """The ESCALATION key of this level (``level_1_throttle``…), ``none`` below them."""
        return LEVEL_KEYS.get(self, "none")


LEVEL_KEYS: Mapping[Stage, str] = MappingProxyType(
    {Stage.THROTTLE: "level_1_throttle", Stage.PAUSE: "level_2_pause", Stage.SHUTDOWN: "level_3_shutdown"}
)
# The one action each level takes (the spec names one per level).
LEVEL_ACTIONS: Mapping[Stage, str] = MappingProxyType(
    {Stage.THROTTLE: "reduce_rate", Stage.PAUSE: "pause_and_notify", Stage.SHUTDOWN: "full_stop"}
)

TRIGGER_KEYS = (
    "cost_limit_usd",
    "cost_limit_daily_usd",
    "tokens_per_minute",
    "api_calls_per_minute",
    "error_rate_threshold",
    "runtime_limit_minutes",
    "consecutive_failures",
)
# M99's extensions in TRIGGERS: whose day ``cost_limit_daily_usd`` counts (this agent's, by default; a
# class's or every agent's, leased in chunks from the control plane) and the size of those chunks.
DAILY_SCOPES = ("agent", "class", "global")
TRIGGER_EXTENSIONS = ("cost_limit_daily_scope", "cost_limit_daily_chunk_usd")
DEFAULT_CHUNK_SHARE = 0.05  # a fleet budget's chunk when the file gives none: 1/20 of the limit

# Which level a trigger enters when the file does not say (ESCALATION.trigger_levels): rates
# throttle, failures pause, spend and runtime stop at once (throttling cannot undo a breach).
DEFAULT_ENTRY: Mapping[str, Stage] = MappingProxyType(
    {
        "tokens_per_minute": Stage.THROTTLE,
        "api_calls_per_minute": Stage.THROTTLE,
        "error_rate_threshold": Stage.PAUSE,
        "consecutive_failures": Stage.PAUSE,
        "cost_limit_usd": Stage.SHUTDOWN,
        "cost_limit_daily_usd": Stage.SHUTDOWN,
        "runtime_limit_minutes": Stage.SHUTDOWN,
    }
)

DEFAULT_LOG_FIELDS = (
    "timestamp",
    "trigger_type",
    "trigger_value",
    "trigger_limit",
    "action_taken",
    "session_id",
    "agent_id",
)


@dataclass(frozen=True)
class Problem:
    """One finding of the linter: an ``error`` makes the file invalid, a ``warning`` does not."""

    severity: Literal["error", "warning"]
    line: int  # 1-based; 0 for the file as a whole
    key: str  # ``SECTION.key``, ``SECTION.key[2]``, or the section alone
    message: str
    source: str = "KILLSWITCH.md"

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.severity}: {self.key + ': ' if self.key else ''}{self.message}"


@dataclass(frozen=True)
class Triggers:
    cost_limit_usd: float | None = None
    cost_limit_daily_usd: float | None = None
    tokens_per_minute: int | None = None
    api_calls_per_minute: int | None = None
    error_rate_threshold: float | None = None
    runtime_limit_minutes: float | None = None
    consecutive_failures: int | None = None
    daily_scope: str = "agent"  # TRIGGERS.cost_limit_daily_scope
    daily_chunk_usd: float | None = None  # TRIGGERS.cost_limit_daily_chunk_usd

    @property
    def fleet(self) -> bool:
        """The daily limit is one budget for a class or all agents, kept by the control plane."""
        return self.cost_limit_daily_usd is not None and self.daily_scope != "agent"

    @property
    def chunk_usd(self) -> float:
        """What one lease of a fleet budget asks for (never more than the limit)."""
        limit = self.cost_limit_daily_usd or 0.0
        return min(limit, self.daily_chunk_usd) if self.daily_chunk_usd else limit * DEFAULT_CHUNK_SHARE

    def configured(self) -> dict[str, float]:
        """The triggers the file sets, in the spec's order, with their limits."""
        out: dict[str, float] = {}
        for key in TRIGGER_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class HostRule:
    """One ``allowlist`` entry, normalised: a host name (``*.`` for its subdomains), or an IP network,
    with an optional port."""

    text: str
    host: str = ""  # lower case, no trailing dot; ``*.example.com`` matches below example.com
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, host: str, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                return False
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            return addr.version == self.network.version and addr in self.network
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


@dataclass(frozen=True)
class Network:
    block_public_egress: bool = False
    allowlist: tuple[HostRule, ...] = ()

    def allows(self, host: str, port: int | None = None) -> bool:
        """Whether an outbound connection to ``host`` (a name or an IP literal) and ``port`` may go.

        With ``block_public_egress`` off everything may.  On, only allow-listed destinations and
        non-public ones (loopback, private, link-local addresses and ``localhost``) may; a host name
        that is not allow-listed is refused, since its address is not known here (fail closed).
        """
        if not self.block_public_egress:
            return True
        name = _normal_host(host)
        if any(rule.matches(name, port) for rule in self.allowlist):
            return True
        try:
            addr = ipaddress.ip_address(name)
        except ValueError:
            return name == "localhost" or name.endswith(".localhost")
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return not addr.is_global


@dataclass(frozen=True)
class Forbidden:
    files: tuple[str, ...] = ()
    directories: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    network: Network = field(default_factory=Network)
    # M99's extension: more tool names (or globs) for an action, beside the built-in mapping.
    action_tools: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Channel:
    kind: str  # ``email``, ``slack``, ``pagerduty``…
    target: str


@dataclass(frozen=True)
class EscalationLevel:
    stage: Stage
    action: str
    notify: bool = False
    channels: tuple[Channel, ...] = ()
    timeout_minutes: float | None = None
    save_state: bool = True  # level 3 only
    allow_restart: bool = True  # level 3 only
    declared: bool = True  # False for the implicit level 3 of a file that does not define it


_IMPLICIT_SHUTDOWN = EscalationLevel(Stage.SHUTDOWN, "full_stop", declared=False)


@dataclass(frozen=True)
class Escalation:
    """The ladder.  Level 3 always exists (the spec: the agent MUST halt on a trigger); levels 1 and 2
    exist when the file declares them.  Without an ESCALATION section every trigger stops at once."""

    present: bool = False
    levels: Mapping[Stage, EscalationLevel] = field(default_factory=lambda: MappingProxyType({}))
    # M99's extension: the level a trigger enters instead of its default.
    trigger_levels: Mapping[str, Stage] = field(default_factory=lambda: MappingProxyType({}))

    def level(self, stage: Stage) -> EscalationLevel:
        if stage in self.levels:
            return self.levels[stage]
        if stage == Stage.SHUTDOWN:
            return _IMPLICIT_SHUTDOWN
        raise KeyError(stage)

    def defined(self) -> tuple[Stage, ...]:
        """The levels in effect, lowest first; always ends with SHUTDOWN."""
        stages = [s for s in (Stage.THROTTLE, Stage.PAUSE) if s in self.levels]
        return (*stages, Stage.SHUTDOWN)

    def entry(self, trigger: str) -> Stage:
        """The level ``trigger`` enters: its configured or default one, else the next one up in effect."""
        if not self.present:
            return Stage.SHUTDOWN
        wanted = self.trigger_levels.get(trigger, DEFAULT_ENTRY.get(trigger, Stage.SHUTDOWN))
        return next(s for s in self.defined() if s >= wanted)

    def next_after(self, stage: Stage) -> Stage:
        """The level an escalation from ``stage`` goes to (SHUTDOWN stays SHUTDOWN)."""
        return next((s for s in self.defined() if s > stage), Stage.SHUTDOWN)


@dataclass(frozen=True)
class Audit:
    present: bool = False
    log_file: str | None = None
    log_format: str = "jsonl"
    log_fields: tuple[str, ...] = DEFAULT_LOG_FIELDS
    retain_logs_days: int | None = None


@dataclass(frozen=True)
class Override:
    present: bool = False
    require_human_approval: bool | None = None
    override_requires_mfa: bool | None = None
    protected_branch: str | None = None
    # Absent means False: an agent never rewrites its own emergency stop unless the file says it may.
    allow_agent_modification: bool = False


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Policy:
    """A parsed KILLSWITCH.md.  ``lines`` maps every key read (``TRIGGERS.cost_limit_usd``) to its line;
    ``problems`` holds the warnings (a file with errors yields no Policy)."""

    source: Path | None = None  # absolute path of the file, None for text parsed without one
    title: str = ""
    description: str = ""
    sections: tuple[str, ...] = ()
    triggers: Triggers = field(default_factory=Triggers)
    forbidden: Forbidden = field(default_factory=Forbidden)
    escalation: Escalation = field(default_factory=Escalation)
    audit: Audit = field(default_factory=Audit)
    override: Override = field(default_factory=Override)
    metadata: Mapping[str, Any] = field(default_factory=_frozen)
    lines: Mapping[str, int] = field(default_factory=_frozen)
    problems: tuple[Problem, ...] = ()

    @property
    def root(self) -> Path:
        """The directory relative paths of the file are resolved from: the file's own."""
        return self.source.parent if self.source is not None else Path.cwd()

    def line(self, key: str) -> int | None:
        return self.lines.get(key)

    def resolve(self, path: str) -> Path:
        """``path`` as the file means it: ``~`` expanded, relative to the file's directory."""
        expanded = Path(path).expanduser()
        return expanded if expanded.is_absolute() else self.root / expanded

    @property
    def log_path(self) -> Path | None:
        return self.resolve(self.audit.log_file) if self.audit.log_file else None
