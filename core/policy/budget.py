"""Hard budgets: reserve a call's worst case before it is sent, settle it on the response.

A ``Budget`` admits a reservation only while what is spent, plus what is reserved by calls in flight,
plus the new worst case fits its allowance; so concurrent callers overshoot only by what their calls
cost beyond their reservations (nothing, when the worst cases hold).  The allowance comes from an
``AllowanceSource``: a fixed limit, or chunks leased from the control plane for a fleet-wide budget
(``m99.policy.lease``; the same two methods).  ``DailyLedger`` keeps a calendar day's totals in a small JSON
file, written atomically, so a restart does not reset the day.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .parse import PolicyError

__all__ = [
    "AllowanceSource",
    "Budget",
    "DailyLedger",
    "DayTotals",
    "FixedAllowance",
    "Reservation",
    "Slot",
    "WindowCeiling",
]

logger = logging.getLogger("m99.policy")

_MAX_STATE_BYTES = 64 * 1024


class AllowanceSource(Protocol):
    """Where a budget's allowance comes from.  ``allowance()`` is the total that may be spent now;
    ``request_more(shortfall)`` asks for at least ``shortfall`` more and returns the new total (the
    same total when there is no more: a fixed limit, a refused lease)."""

    def allowance(self) -> float: ...

    def request_more(self, shortfall: float) -> float: ...


class FixedAllowance:
    """A limit from the policy file: never more."""

    def __init__(self, limit: float) -> None:
        if not math.isfinite(limit) or limit < 0:
            raise ValueError(f"a limit must be a finite number >= 0, not {limit!r}")
        self.limit = float(limit)

    def allowance(self) -> float:
        return self.limit

    def request_more(self, shortfall: float) -> float:
        return self.limit


@dataclass(eq=False, slots=True)
class Reservation:
    """What one call holds of a budget until it is settled or released (once; again is a no-op)."""

    budget: Budget
    amount: float
    done: bool = field(default=False)


class Budget:
    """A thread-safe hard budget (US dollars, or tokens: the unit is the caller's)."""

    def __init__(self, name: str, source: AllowanceSource | float, *, spent: float = 0.0) -> None:
        self.name = name
        self._source: AllowanceSource = FixedAllowance(source) if isinstance(source, int | float) else source
        self._allowance = float(self._source.allowance())
        self._spent = float(spent)
        self._reserved = 0.0
        self._held = False  # ``hold()``: closing, no more allowance
        self._lock = threading.Lock()
        self._more = threading.Lock()  # one request for more allowance at a time, outside ``_lock``

    @property
    def spent(self) -> float:
        return self._spent

    @property
    def reserved(self) -> float:
        return self._reserved

    @property
    def allowance(self) -> float:
        return self._allowance

    @property
    def remaining(self) -> float:
        with self._lock:
            return self._allowance - self._spent - self._reserved

    def _fits(self, amount: float) -> bool:
        committed = self._spent + self._reserved
        # A call of unknown cost (amount 0) still needs something left: at the limit, nothing runs.
        return committed + amount <= self._allowance and (amount > 0 or committed < self._allowance)

    def reserve(self, amount: float) -> Reservation | None:
        """Hold ``amount`` for a call about to be sent; None when it does not fit (refuse the call)."""
        amount = float(amount)
        if not math.isfinite(amount) or amount < 0:
            return None  # fail closed on a nonsensical worst case
        with self._lock:
            committed = self._spent + self._reserved  # ``_fits``, in this frame: asked before every model call
            if committed + amount <= self._allowance and (amount > 0 or committed < self._allowance):
                self._reserved += amount
                return Reservation(self, amount)
            if self._held:
                return None
        with self._more:
            with self._lock:  # a lease another caller made while this one waited may cover it now
                if self._held:  # the process closed while this call waited: nothing more
                    return None
                if self._fits(amount):
                    self._reserved += amount
                    return Reservation(self, amount)
                shortfall = self._spent + self._reserved + amount - self._allowance
            try:
                total = float(self._source.request_more(max(shortfall, 0.0)))
            except Exception:  # a source that fails grants nothing (fail closed)
                logger.exception("m99: budget %s could not get more allowance", self.name)
                total = self._allowance
        with self._lock:
            if math.isfinite(total) and total > self._allowance and not self._held:
                self._allowance = total
            if self._fits(amount):
                self._reserved += amount
                return Reservation(self, amount)
        return None

    def settle(self, reservation: Reservation, actual: float) -> float:
        """The call came back having cost ``actual``: it is spent, its reservation freed.  Returns the
        amount spent in all."""
        actual = float(actual) if math.isfinite(actual) and actual > 0 else 0.0
        with self._lock:
            if not reservation.done:
                reservation.done = True
                self._reserved = max(0.0, self._reserved - reservation.amount)
                self._spent += actual
            return self._spent

    def release(self, reservation: Reservation) -> None:
        """The call was never sent: free its reservation."""
        with self._lock:
            if not reservation.done:
                reservation.done = True
                self._reserved = max(0.0, self._reserved - reservation.amount)

    def spend(self, actual: float) -> float:
        """Count a cost that had no reservation (a call the gate did not see)."""
        actual = float(actual) if math.isfinite(actual) and actual > 0 else 0.0
        with self._lock:
            self._spent += actual
            return self._spent

    def hold(self) -> None:
        """Admit nothing more than what is spent and reserved now, and ask the source for no more."""
        with self._lock:
            self._allowance = self._spent + self._reserved
            self._held = True

    def release_hold(self) -> None:
        """Admit calls again after ``hold()`` (a new session leases for the budget)."""
        with self._lock:
            self._held = False

    def refresh(self) -> None:
        """Adopt the source's allowance now (a lease learnt outside ``reserve``), if larger."""
        total = float(self._source.allowance())
        with self._lock:
            if math.isfinite(total) and total > self._allowance and not self._held:
                self._allowance = total

    def restart(self, spent: float) -> None:
        """A new period: start from ``spent`` and the source's allowance for it (a fleet's new day
        grants nothing until leased)."""
        total = float(self._source.allowance())
        with self._lock:
            self._spent = float(spent)
            if math.isfinite(total):
                self._allowance = total

    def raise_spent(self, total: float) -> None:
        """Adopt a larger total kept elsewhere (the day's ledger, with other processes' spend)."""
        with self._lock:
            if math.isfinite(total) and total > self._spent:
                self._spent = float(total)


# -- a ceiling over a sliding window (tokens per minute) -----------------------------------------------


@dataclass(eq=False, slots=True)
class Slot:
    at: float
    amount: float
    live: bool = True  # still in the window (counted in its total)


class WindowCeiling:
    """At most ``limit`` units in any ``window`` seconds, reservations of calls in flight included.
    Not locked: the engine calls it under its own lock."""

    def __init__(self, limit: float, window: float = 60.0) -> None:
        self.limit = float(limit)
        self.window = float(window)
        self._slots: collections.deque[Slot] = collections.deque()
        self.total = 0.0

    def _prune(self, now: float) -> None:
        slots, edge = self._slots, now - self.window
        while slots and slots[0].at <= edge:
            old = slots.popleft()
            old.live = False
            self.total -= old.amount
        if not slots:
            self.total = 0.0  # no float drift left behind

    def used(self, now: float) -> float:
        self._prune(now)
        return self.total

    def used_since(self, now: float, since: float) -> float:
        """Units in the window placed at or after ``since``."""
        self._prune(now)
        return sum(s.amount for s in self._slots if s.at >= since)

    def reserve(self, now: float, amount: float) -> Slot | None:
        slots = self._slots
        if slots and slots[0].at <= now - self.window:  # asked before every model call: prune only when due
            self._prune(now)
        if self.total + amount > self.limit:
            return None
        slot = Slot(now, amount)
        self._slots.append(slot)
        self.total += amount
        return slot

    def retry_after(self, now: float, amount: float) -> float:
        """Seconds until ``amount`` fits, as the oldest slots leave the window."""
        self._prune(now)
        total = self.total
        for slot in self._slots:
            if total + amount <= self.limit:
                break
            total -= slot.amount
            wait = slot.at + self.window - now
            if total + amount <= self.limit:
                return max(0.0, wait)
        return 0.0 if self.total + amount <= self.limit else self.window

    def settle(self, slot: Slot, actual: float) -> None:
        """The call used ``actual``: its slot now counts that (if still in the window)."""
        if slot.live:
            self.total += actual - slot.amount
        slot.amount = actual

    def add(self, now: float, amount: float) -> None:
        """Count a call that had no reservation."""
        self._prune(now)
        self._slots.append(Slot(now, amount))
        self.total += amount


# -- the day's totals, kept across restarts -----------------------------------------------------------


@dataclass(frozen=True)
class DayTotals:
    day: str  # ISO date of the calendar day
    cost_usd: float = 0.0
    tokens: int = 0
    calls: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "day": self.day, "cost_usd": self.cost_usd, "tokens": self.tokens, "calls": self.calls}


try:
    import fcntl
except ImportError:  # Windows: one process per state file
    fcntl = None  # type: ignore[assignment]


class DailyLedger:
    """Per-day totals in a JSON state file, e.g. ``{"version": 1, "day": "2026-03-10", "cost_usd":
    12.5, "tokens": 40210, "calls": 31}``.  Each ``add`` re-reads the file under a lock (so processes
    sharing the file add up) and replaces it atomically (a crash leaves the old or the new file,
    never half of one).  A state file that is not M99's is refused: the day's spend is then unknown,
    and guessing it would break the limit (fail closed)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.failures = 0  # writes that failed (disk full…); the totals in memory stay right

    def read(self, day: str) -> DayTotals:
        with self._lock, self._locked():
            return self._read(day)

    def add(self, day: str, cost_usd: float = 0.0, tokens: int = 0, calls: int = 0) -> DayTotals:
        """Add to ``day``'s totals and return them (a new day starts from zero)."""
        with self._lock, self._locked():
            now = self._read(day)
            new = DayTotals(day, now.cost_usd + max(0.0, cost_usd), now.tokens + max(0, tokens), now.calls + calls)
            try:
                self._write(new)
            except OSError as exc:
                self.failures += 1
                logger.error("m99: cannot write the daily totals to %s: %s", self.path, exc)
            return new

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _read(self, day: str) -> DayTotals:
        try:
            with self.path.open("rb") as f:
                raw = f.read(_MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return DayTotals(day)
        except OSError as exc:
            raise PolicyError(f"cannot read the daily totals {self.path}: {exc.strerror or exc}") from None
        try:
            if len(raw) > _MAX_STATE_BYTES:
                raise ValueError("too large")
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != 1:
                raise ValueError("not an M99 daily totals file")
            stored = DayTotals(str(data["day"]), float(data["cost_usd"]), int(data["tokens"]), int(data["calls"]))
            if not math.isfinite(stored.cost_usd) or stored.cost_usd < 0 or stored.tokens < 0:
                raise ValueError("negative or non-finite totals")
        except (ValueError, KeyError, TypeError) as exc:
            raise PolicyError(
                f"the daily totals {self.path} are unreadable ({exc}); refusing to guess today's spend — "
                "remove the file only if you know today's spend is zero"
            ) from None
        return stored if stored.day == day else DayTotals(day)

    def _write(self, totals: DayTotals) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".m99-daily-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(totals.to_json(), f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
