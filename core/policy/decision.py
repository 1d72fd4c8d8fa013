"""What the engine answers and tells: a ``Decision`` before a call, a ``ModelTicket`` an admitted model call
holds, a ``PolicyEvent`` for every transition and refusal (with the record the audit log writes)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import M99KillSwitchTriggered, ModelCallRefused, ToolCallRefused
from .budget import Reservation, Slot
from .model import Channel, Stage

__all__ = ["ALLOW", "Decision", "ModelTicket", "PolicyEvent", "local_day", "number", "record_of"]


def local_day(ts: float) -> str:
    """The calendar day of ``ts`` in local time, ``2026-03-10``."""
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


@dataclass(frozen=True)
class PolicyEvent:
    """A transition of the ladder, or a refused call; ``record`` is what the audit log may write."""

    kind: Literal["transition", "refusal"]
    at: float
    stage: Stage
    previous: Stage
    trigger: str  # a trigger key, ``timeout_minutes``, ``operator``, ``forbidden_files``…
    value: float | None
    limit: float | None
    action: str  # ``reduce_rate``, ``pause_and_notify``, ``full_stop``, ``resume``, ``refuse_tool_call``…
    reason: str
    rule: str = ""  # the key of the file behind it, ``TRIGGERS.cost_limit_usd``
    by: str = ""
    save_state: bool = False
    allow_restart: bool = True
    notify: bool = False
    channels: tuple[Channel, ...] = ()
    record: Mapping[str, Any] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class ModelTicket:
    """What an admitted model call holds until ``settle_model`` or ``release_model``."""

    model: str | None
    worst_usd: float | None
    worst_tokens: int
    session: Reservation | None = None
    daily: Reservation | None = None
    slot: Slot | None = None
    done: bool = False


@dataclass(frozen=True)
class Decision:
    """``allow`` (after ``delay`` seconds: a throttle), ``wait`` (ask again after at most ``delay``
    seconds: a pause, a full token window) or ``refuse`` (raise ``error()``)."""

    verdict: Literal["allow", "wait", "refuse"]
    delay: float = 0.0
    reason: str = ""
    rule: str = ""
    stage: Stage = Stage.NONE
    ticket: ModelTicket | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    def error(self, *, tool: str | None = None, agent: str = "") -> M99KillSwitchTriggered:
        """The exception an adapter raises for a refusal (``ToolCallRefused`` when ``tool`` is given).
        ``level`` is 3 for the policy's full stop, 0 for a refused rule (no kill-switch level)."""
        level = 3 if self.stage == Stage.SHUTDOWN else 0
        message = f"M99 policy: {self.reason}"
        if tool is not None:
            return ToolCallRefused(message, tool=tool, level=level, reason=self.rule, agent=agent)
        return ModelCallRefused(message, level=level, reason=self.rule, agent=agent)


ALLOW = Decision("allow")


def record_of(
    event: PolicyEvent, measured: Mapping[str, float], calls_last_minute: int, session_id: str, agent_id: str
) -> dict[str, Any]:
    """Every field an audit line can carry for ``event``; the log keeps the ones the policy lists."""
    if event.kind == "refusal" or event.stage == Stage.THROTTLE:
        approval = "not required"
    elif event.stage == Stage.NONE:
        approval = f"approved by {event.by}" if event.by else "approved"
    elif event.stage == Stage.PAUSE:
        approval = "awaiting an operator"
    else:
        approval = "an operator may restart" if event.allow_restart else "only an authority may restart"
    return {
        "timestamp": event.at,
        "trigger_type": event.trigger,
        "trigger_value": event.value,
        "trigger_limit": event.limit,
        "action_taken": event.action,
        "session_id": session_id or None,
        "agent_id": agent_id or None,
        "escalation_level": event.stage.key,
        "previous_level": event.previous.key,
        "rule": event.rule,
        "reason": event.reason,
        "operator": event.by or None,
        "human_approval": approval,
        "cost_usd": measured.get("cost_limit_usd"),
        "cost_daily_usd": measured.get("cost_limit_daily_usd"),
        "tokens_last_minute": measured.get("tokens_per_minute"),
        "calls_last_minute": calls_last_minute,
        "error_rate": measured.get("error_rate_threshold"),
        "consecutive_failures": measured.get("consecutive_failures"),
    }
