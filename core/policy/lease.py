"""The agent's side of a fleet budget: ``cost_limit_daily_usd`` shared by a class or every agent.

``FleetAllowance`` is the daily budget's ``AllowanceSource`` when the file sets
``cost_limit_daily_scope: class|global``: its allowance is what the control plane granted this agent
today (UTC), and ``request_more`` leases another chunk with a signed request (``POST
/api/agents/{id}/budget``), answered by a document signed with the server's key.  Until the session
binds it to its control link, or while the control plane cannot be reached, nothing more is granted:
the process spends what it holds, then its model calls are refused (fail closed).  After a failed
request it waits ``RETRY_SECONDS`` before asking again, so calls are refused at once instead of each
waiting on the network.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["MAX_LEASE_SHARE", "RETRY_SECONDS", "FleetAllowance", "utc_day"]

logger = logging.getLogger("m99.policy")

RETRY_SECONDS = 5.0
MAX_LEASE_SHARE = 0.25  # the largest lease the control plane grants, as a share of the limit
LEASE_TIMEOUT = 5.0  # seconds one lease request may take (a model call waits on it)

# ``send(fields, timeout)``: POST the signed request, return the server's verified document (raises on
# a refusal, a bad signature or no answer).
Send = Callable[[dict[str, Any], float], dict[str, Any]]


def utc_day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).date().isoformat()


class FleetAllowance:
    """This agent's grant of a fleet budget for the current UTC day."""

    def __init__(self, scope: str, limit: float, chunk: float, *, clock: Callable[[], float] = time.time) -> None:
        self.scope, self.limit, self.chunk = scope, float(limit), float(chunk)
        self.clock = clock
        self.day = utc_day(clock())
        self.granted = 0.0
        self.server_spent = 0.0  # what the control plane holds as this agent's spend today
        self.fleet_used = 0.0
        self.spent_of: Callable[[], float] = lambda: 0.0  # the daily budget's spend (set by ``Spend``)
        self.committed_of: Callable[[], float] = lambda: 0.0  # its spend and what calls in flight hold
        self.last_error = ""
        self.exhausted = False  # the last lease found the fleet's day used up
        self.closed = False  # gave back (the session closed): no more leases until bound again
        self.on_answer: Callable[[], None] = lambda: None  # after each answer (set by ``Spend``)
        self._send: Send | None = None
        self._lock = threading.Lock()
        self._asking = threading.Lock()
        self._retry_at = 0.0

    @property
    def bound(self) -> bool:
        return self._send is not None

    def bind(self, send: Send | None) -> None:
        """Lease through ``send`` from now on (None: unbound, no more grants)."""
        with self._lock:
            self._send = send
            self._retry_at = 0.0
            if send is not None:
                self.closed = False

    def new_day(self, day: str) -> None:
        """The UTC day turned: yesterday's grant is not today's."""
        with self._lock:
            if day != self.day:
                self.day, self.granted, self.server_spent, self._retry_at = day, 0.0, 0.0, 0.0
                self.exhausted = False

    # -- AllowanceSource ----------------------------------------------------------------------------------
    def allowance(self) -> float:
        return self.granted

    def request_more(self, shortfall: float) -> float:
        want = min(self.limit, max(self.chunk, float(shortfall)))
        self._ask(want)
        return self.granted

    # -- the session's calls --------------------------------------------------------------------------------
    def sync(self) -> float:
        """Learn this agent's share of today (a restart takes up its grant and spend); returns the
        spend the control plane holds for it."""
        self._ask(0.0, force=True)
        return self.server_spent

    def give_back(self, timeout: float = LEASE_TIMEOUT) -> None:
        """Closing: report the day's spend (with what calls in flight hold, counted as spent) and return
        the rest of the grant to the fleet.  ``Spend.give_back`` first stops new reservations."""
        self._ask(0.0, final=True, force=True, timeout=timeout)

    def _ask(self, want: float, *, final: bool = False, force: bool = False, timeout: float = LEASE_TIMEOUT) -> None:
        # One lease at a time, so their sequence numbers reach the control plane in order (a later one
        # overtaking would make the earlier a refused replay).  ``_lock`` guards the fields, never the
        # network: a day's turn or a status read does not wait on a lease.
        with self._asking:
            self._ask_once(want, final=final, force=force, timeout=timeout)

    def _ask_once(self, want: float, *, final: bool, force: bool, timeout: float) -> None:
        with self._lock:
            send = self._send
            if send is None:
                self.last_error = "not connected to the control plane"
                return
            now = self.clock()
            if not force and now < self._retry_at:
                return
            if self.closed and not final:  # gave back: a lease now would be granted and never spent
                return
            day = self.day
            nonce = secrets.token_hex(16)
            fields = {
                "scope": self.scope,
                "day": day,
                "limit_usd": self.limit,
                "want_usd": want,
                "spent_usd": max(0.0, float(self.committed_of() if final else self.spent_of())),
                "final": final,
                "nonce": nonce,
            }
        error = ""
        try:
            doc = send(fields, timeout)
            granted, spent = float(doc["granted_usd"]), float(doc["spent_usd"])
            scope = str(doc.get("scope", ""))
            if doc.get("type") != "budget.lease" or doc.get("nonce") != nonce or doc.get("day") != day:
                raise ValueError("an answer to another request (a replay?)")
            if (scope != "global") if self.scope == "global" else not scope.startswith("class:"):
                raise ValueError(f"an answer for another scope ({scope})")
            if not (math.isfinite(granted) and math.isfinite(spent)) or granted < 0 or spent < 0:
                raise ValueError("a nonsensical grant")
        except Exception as exc:  # no grant: the process keeps only what it holds (fail closed)
            error = str(exc) or type(exc).__name__
        with self._lock:
            if error:
                self.last_error, self.exhausted = error, False
                self._retry_at = self.clock() + RETRY_SECONDS
                logger.warning("m99: fleet budget %s: no lease from the control plane: %s", self.scope, error)
                return
            if self.day != day:  # the day turned while asking: the answer is yesterday's
                return
            self.last_error = ""
            # The control plane's grant is the truth, but never below what it granted us today (an
            # answer cannot take back dollars a call in flight may be spending), except a give-back.
            self.granted = granted if final else max(self.granted, granted)
            self.server_spent = max(self.server_spent, spent)
            self.fleet_used = float(doc.get("fleet_used_usd") or 0.0)
            limit = float(doc.get("limit_usd") or self.limit)
            # Used up: the control plane answered with less than was asked within one lease's cap, so
            # what is left of the fleet's day is less than what a call needs (a breach of the limit).
            # A failed request, or a call larger than one lease, is not: a plain refusal.
            leased = float(doc.get("leased_usd") or 0.0)
            self.exhausted = want > 0 and leased < min(want, limit * MAX_LEASE_SHARE) - 1e-12
            if final:
                self.closed = True
        try:
            self.on_answer()  # the daily budget adopts the grant and the spend the control plane holds
        except Exception:
            logger.exception("m99: fleet budget %s: could not adopt the control plane's answer", self.scope)

    def status(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "day": self.day,
            "granted_usd": self.granted,
            "fleet_used_usd": self.fleet_used,
            "chunk_usd": self.chunk,
            "connected": self.bound,
            "error": self.last_error or None,
        }
