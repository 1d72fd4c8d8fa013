"""OVERRIDE, in the process: the triggers an authority suspended (``m99 policy override``), each until
its expiry.  A suspended trigger is not measured against its limit and, for a budget or the token
ceiling, refuses no call; at its expiry it is enforced again.  Not locked: the engine holds its lock
around every change (a read without it sees an older dict, never a torn one)."""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["Overrides"]

logger = logging.getLogger("m99.policy")


class Overrides:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        # trigger -> until when; replaced, never changed in place: empty (falsy) is the usual case.
        self.until: dict[str, float] = {}

    def __bool__(self) -> bool:
        return bool(self.until)

    def set(self, trigger: str, until: float) -> None:
        self.until = {**self.until, trigger: until}

    def active(self, trigger: str) -> bool:
        until = self.until.get(trigger)
        return until is not None and self._clock() < until

    def expire(self, now: float) -> None:
        """Drop the overrides whose expiry has come: their triggers are enforced again."""
        gone = [t for t, until in self.until.items() if now >= until]
        if gone:
            self.until = {t: u for t, u in self.until.items() if t not in gone}
            for trigger in gone:
                logger.warning("m99: policy override of %s expired: enforced again", trigger)

    def deadlines(self) -> list[float]:
        return list(self.until.values())

    def as_dict(self) -> dict[str, float]:
        return dict(self.until)
