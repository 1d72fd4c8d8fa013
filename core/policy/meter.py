"""What the engine measures from completed calls: calls and tokens over a sliding minute, the outcome of
the last calls, the current run of failures.  Not locked: the engine calls it under its own lock, but
for the successes ``note_tool`` sees (see there)."""

from __future__ import annotations

import collections

from .model import Triggers

__all__ = ["Meter"]

WINDOW = 60.0  # seconds of the per-minute triggers


class Meter:
    def __init__(self, now: float, *, error_window: int = 20, error_min_calls: int = 10) -> None:
        self.error_min_calls = int(error_min_calls)
        self.since = now  # measuring starts here, again at each transition
        self._calls: collections.deque[float] = collections.deque()
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=max(1, int(error_window)))
        self._tokens: collections.deque[tuple[float, int]] = collections.deque()
        self._token_sum = 0
        self.failed_run = 0
        # Calls of the last minute whatever the transitions: the rate a throttle halves.
        self._trail: collections.deque[float] = collections.deque()

    def note(self, now: float, ok: bool, tokens: int = 0, *, breaks_run: bool = True) -> None:
        """A call ended.  ``breaks_run`` False: its success does not end a run of failures (a model
        call between two failed tool calls is the agent loop itself, not a recovery)."""
        self._calls.append(now)
        self._trail.append(now)
        self._outcomes.append(ok)
        if not ok:
            self.failed_run += 1
        elif breaks_run:
            self.failed_run = 0
        if tokens > 0:
            self._tokens.append((now, tokens))
            self._token_sum += tokens

    def restart(self, now: float, keys: set[str] | None = None) -> None:
        """Measure the triggers ``keys`` (all when None) afresh from ``now``."""
        self.since = now
        if keys is None or "api_calls_per_minute" in keys:
            self._calls.clear()
        if keys is None or "error_rate_threshold" in keys:
            self._outcomes.clear()
        if keys is None or "tokens_per_minute" in keys:
            self._tokens.clear()
            self._token_sum = 0
        if keys is None or "consecutive_failures" in keys:
            self.failed_run = 0

    def _prune(self, now: float) -> None:
        edge = now - WINDOW
        for calls in (self._calls, self._trail):
            while calls and calls[0] <= edge:
                calls.popleft()
        while self._tokens and self._tokens[0][0] <= edge:
            self._token_sum -= self._tokens.popleft()[1]

    def note_tool(self, now: float, ok: bool, triggers: Triggers) -> bool:
        """A tool call ended: ``note`` it, and say whether a trigger could now be breached (False for the
        usual success: the calls of the minute under their limit, no error rate just reaching its
        sample size; a success lowers the error rate, or keeps it).  Asked after every tool call.
        Safe without the engine's lock for a success, as the engine notes one: only atomic appends and
        one store, never a prune (True instead: the engine prunes and measures under its lock)."""
        self._calls.append(now)
        self._trail.append(now)
        self._outcomes.append(ok)
        if not ok:
            self.failed_run += 1
            return True
        self.failed_run = 0
        limit = triggers.api_calls_per_minute
        if limit and len(self._calls) > limit:
            return True
        return bool(triggers.error_rate_threshold) and len(self._outcomes) == self.error_min_calls

    def may_breach(self, triggers: Triggers) -> bool:
        """Whether one of the meter's triggers may be at its limit, as ``measure`` and the engine compare
        them: an over-estimate without pruning (what left the minute may still count), so False means
        ``measure`` finds none of them breached.  Cheap: asked after every model call."""
        if triggers.api_calls_per_minute and len(self._calls) > triggers.api_calls_per_minute:
            return True
        if triggers.tokens_per_minute and self._token_sum > triggers.tokens_per_minute:
            return True
        if triggers.consecutive_failures and self.failed_run >= triggers.consecutive_failures:
            return True
        outcomes = self._outcomes
        if triggers.error_rate_threshold and len(outcomes) >= self.error_min_calls:
            return outcomes.count(False) / len(outcomes) >= triggers.error_rate_threshold
        return False

    def rate(self, now: float) -> int:
        """Calls completed in the last minute, across transitions."""
        self._prune(now)
        return len(self._trail)

    def measure(self, now: float, triggers: Triggers) -> dict[str, float]:
        """The window-based triggers the policy sets, as compared with their limits."""
        self._prune(now)
        out: dict[str, float] = {}
        if triggers.tokens_per_minute:
            out["tokens_per_minute"] = self._token_sum
        if triggers.api_calls_per_minute:
            out["api_calls_per_minute"] = len(self._calls)
        if triggers.error_rate_threshold and len(self._outcomes) >= self.error_min_calls:
            out["error_rate_threshold"] = self._outcomes.count(False) / len(self._outcomes)
        if triggers.consecutive_failures:
            out["consecutive_failures"] = self.failed_run
        return out
