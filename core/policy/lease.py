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
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["RETRY_SECONDS", "FleetAllowance", "utc_day"]

logger = logging.getLogger("m99.policy")

RETRY_SECONDS = 5.0
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
        self.last_error = ""
        self._send: Send | None = None
        self._lock = threading.Lock()
        self._retry_at = 0.0

    @property
    def bound(self) -> bool:
        return self._send is not None

    def bind(self, send: Send | None) -> None:
        """Lease through ``send`` from now on (None: unbound, no more grants)."""
        with self._lock:
            self._send = send
            self._retry_at = 0.0

    def new_day(self, day: str) -> None:
        """The UTC day turned: yesterday's grant is not today's."""
        with self._lock:
            if day != self.day:
                self.day, self.granted, self.server_spent, self._retry_at = day, 0.0, 0.0, 0.0

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

    def give_back(self) -> None:
        """Closing: report the day's spend and return the unspent grant to the fleet."""
        self._ask(0.0, final=True, force=True)

    def _ask(self, want: float, *, final: bool = False, force: bool = False) -> None:
        with self._lock:
            send = self._send
            if send is None:
                self.last_error = "not connected to the control plane"
                return
            now = self.clock()
            if not force and now < self._retry_at:
                return
            day = self.day
            fields = {
                "scope": self.scope,
                "day": day,
                "limit_usd": self.limit,
                "want_usd": want,
                "spent_usd": max(0.0, float(self.spent_of())),
                "final": final,
            }
            try:
                doc = send(fields, LEASE_TIMEOUT)
                granted, spent = float(doc["granted_usd"]), float(doc["spent_usd"])
                if doc.get("type") != "budget.lease" or doc.get("day") != day:
                    raise ValueError(f"an answer for another day or kind: {doc.get('type')} {doc.get('day')}")
                if not (math.isfinite(granted) and math.isfinite(spent)) or granted < 0 or spent < 0:
                    raise ValueError("a nonsensical grant")
            except Exception as exc:  # no grant: the process keeps only what it holds (fail closed)
                self.last_error = str(exc) or type(exc).__name__
                self._retry_at = now + RETRY_SECONDS
                logger.warning("m99: fleet budget %s: no lease from the control plane: %s", self.scope, self.last_error)
                return
            self.last_error = ""
            # The control plane's grant is the truth, but one never below what we were granted today
            # (an answer cannot take back dollars a call in flight may be spending), except a give-back.
            self.granted = granted if final else max(self.granted, granted)
            self.server_spent = spent
            self.fleet_used = float(doc.get("fleet_used_usd") or 0.0)

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
