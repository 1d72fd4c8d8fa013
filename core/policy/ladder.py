"""Where the escalation ladder stands and what that means for the next call: the level, why, its
deadline, a throttle's pacing.  Not locked: the engine holds its lock around every use."""

from __future__ import annotations

from .decision import ALLOW, Decision, number
from .model import Escalation, EscalationLevel, Stage

__all__ = ["Ladder"]


class Ladder:
    def __init__(self, escalation: Escalation, now: float) -> None:
        self.escalation = escalation
        self.stage = Stage.NONE
        self.cause = ""
        self.entered_at = now
        self.deadline: float | None = None  # when the level's timeout_minutes escalates it
        self._interval = 0.0
        self._next_slot = 0.0

    def target(self, trigger: str) -> Stage | None:
        """The level a breach of ``trigger`` moves to now, or None for no move: a trigger enters its
        level; a more severe one jumps higher; one still breached while throttled goes one level up; at
        a pause nothing new runs, so only a timeout, an operator or a more severe trigger moves it."""
        entry = self.escalation.entry(trigger)
        if self.stage == Stage.SHUTDOWN:
            return None
        if entry > self.stage:
            return entry
        if self.stage == Stage.THROTTLE:
            return self.escalation.next_after(self.stage)
        return None

    def timeout(self, now: float) -> tuple[Stage, float, float, str] | None:
        """When the level's timeout has passed: (next level, minutes at the level, the timeout, why)."""
        if self.deadline is None or now < self.deadline:
            return None
        limit = self.escalation.level(self.stage).timeout_minutes or 0.0
        why = f"{self.stage.key} unresolved after {number(limit)} min ({self.cause})"
        return self.escalation.next_after(self.stage), (now - self.entered_at) / 60.0, limit, why

    def move(self, now: float, target: Stage, reason: str, calls_last_minute: int) -> EscalationLevel | None:
        """Enter ``target``; returns its level (None for none)."""
        self.stage, self.entered_at, self.cause = target, now, reason
        level = self.escalation.level(target) if target != Stage.NONE else None
        timeout = level.timeout_minutes if level is not None and target != Stage.SHUTDOWN else None
        self.deadline = now + timeout * 60.0 if timeout else None
        if target == Stage.THROTTLE:
            self._interval = min(60.0, 120.0 / max(calls_last_minute, 1))  # half the rate of the last minute
            self._next_slot = now
        return level

    def pace(self, now: float) -> Decision:
        """Allow, after the throttle's delay when throttled (each caller gets the next slot)."""
        if self.stage != Stage.THROTTLE:
            return ALLOW
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._interval
        return Decision("allow", delay=slot - now, stage=Stage.THROTTLE, reason="throttled (reduce_rate)")

    def paused(self, now: float) -> Decision:
        delay = 1.0 if self.deadline is None else max(0.0, min(1.0, self.deadline - now))
        rule = "ESCALATION.level_2_pause"
        return Decision("wait", delay=delay, stage=Stage.PAUSE, reason=f"paused ({self.cause})", rule=rule)

    def stopped(self) -> Decision:
        rule = "ESCALATION.level_3_shutdown"
        return Decision("refuse", stage=Stage.SHUTDOWN, reason=f"stopped by the policy ({self.cause})", rule=rule)

    def held(self, now: float) -> Decision | None:
        """The answer for any call while paused or stopped, None below."""
        if self.stage == Stage.SHUTDOWN:
            return self.stopped()
        if self.stage == Stage.PAUSE:
            return self.paused(now)
        return None
