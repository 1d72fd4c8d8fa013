"""What an operator does to a running policy (``m99 policy resume|escalate|override``, an ``m99 restore``
of its stop), and the engine's status: a part of ``PolicyEngine`` (a mixin; the state is the engine's)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import NotAuthorised
from .model import Policy, Stage

if TYPE_CHECKING:
    from .audit_log import AuditLog
    from .ladder import Ladder
    from .overrides import Overrides
    from .spend import Spend

__all__ = ["OperatorActs"]

logger = logging.getLogger("m99.policy")


class OperatorActs:
    # The engine's state these methods use (see ``PolicyEngine.__init__``).
    policy: Policy
    agent_id: str
    session_id: str
    audit: AuditLog | None
    spend: Spend
    notices: list[str]
    _clock: Callable[[], float]
    _lock: threading.Lock
    _changed: threading.Condition
    _ladder: Ladder
    _overrides: Overrides
    _limits: Any

    if TYPE_CHECKING:

        def _move(
            self, now: float, target: Stage, trigger: str, value: float | None, limit: float | None,
            reason: str, *, by: str = "", action: str = "",
        ) -> None: ...  # fmt: skip

        def _measure(self, now: float) -> dict[str, float]: ...

        def _flush(self) -> None: ...

        def _update_gates(self) -> None: ...

    def resume(self, by: str, reason: str = "", *, authority: bool = False) -> bool:
        """An operator resolves the current level: back to none.  After a level-3 stop with
        ``allow_restart: false`` only an authority may (``NotAuthorised`` otherwise)."""
        with self._lock:
            if self._ladder.stage == Stage.NONE:
                return False
            if (
                self._ladder.stage == Stage.SHUTDOWN
                and not self.policy.escalation.level(Stage.SHUTDOWN).allow_restart
                and not authority
            ):
                raise NotAuthorised(
                    "the policy stopped this agent with allow_restart: false: only an authority may lift it"
                )
            why = reason or "resumed by an operator"
            self._move(self._clock(), Stage.NONE, "operator", None, None, why, by=by, action="resume")
        self._flush()
        return True

    def escalate(self, by: str, reason: str = "") -> bool:
        """An operator moves the ladder one level up now (False when already stopped)."""
        with self._lock:
            stage = self._ladder.stage
            if stage == Stage.SHUTDOWN:
                return False
            esc = self.policy.escalation
            target = esc.defined()[0] if stage == Stage.NONE else esc.next_after(stage)
            self._move(self._clock(), target, "operator", None, None, reason or "escalated by an operator", by=by)
        self._flush()
        return True

    def override(self, trigger: str, until: float, by: str, reason: str = "") -> bool:
        """OVERRIDE: an authority suspends ``trigger`` until ``until`` (on the engine's clock): it is
        neither measured against its limit nor, for a budget or the token ceiling, refuses a call.  At
        ``until`` it is enforced again (the timer measures it then).  False for a trigger the policy does
        not set or an expiry already past.  The control plane authorised and audited it; the local log
        records it too."""
        if trigger not in self._limits:
            return False
        with self._lock:
            now = self._clock()
            if until <= now:
                return False
            self._overrides.set(trigger, until)
            self._update_gates()
            self._changed.notify_all()  # a call held by the ceiling asks again
        logger.warning("m99: policy override of %s by %s until %.0f: %s", trigger, by, until, reason)
        if self.audit is not None:
            self.audit.write(
                {
                    "timestamp": now, "event": "override", "trigger": trigger, "action": "override",
                    "approval": by, "reason": reason, "until": until,
                    "agent_id": self.agent_id, "session_id": self.session_id,
                }
            )  # fmt: skip
        return True

    def overrides(self) -> dict[str, float]:
        """The triggers suspended now, with when they are enforced again."""
        with self._lock:
            self._overrides.expire(self._clock())
            return self._overrides.as_dict()

    def status(self) -> dict[str, Any]:
        """The engine's state, for the Guard's snapshot and the control plane."""
        with self._lock:
            return {
                "stage": self._ladder.stage.key,
                "cause": self._ladder.cause,
                "entered_at": self._ladder.entered_at,
                "deadline": self._ladder.deadline,
                "measured": self._measure(self._clock()),
                **self.spend.status(),
                "notices": list(self.notices),
                "audit_failures": self.audit.failures if self.audit else 0,
                "overrides": self._overrides.as_dict(),
            }
