"""The cost triggers' bookkeeping: the session and daily budgets, the day's ledger, the price table.

A model call's worst case (its prompt and ``max_tokens`` at the model's price) is reserved in both
budgets before it is sent and settled with the actual cost (the provider's, else the price table's).
Thread-safe through the budgets' own locks; the engine calls it outside its lock, so a fleet budget's
lease from the control plane (``m99.policy.lease``) does not stall the other callers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .budget import AllowanceSource, Budget, DailyLedger
from .decision import ModelTicket, local_day
from .lease import FleetAllowance, utc_day
from .model import Triggers
from .prices import PriceTable

__all__ = ["Spend"]

logger = logging.getLogger("m99.policy")


class Spend:
    def __init__(
        self,
        triggers: Triggers,
        now: float,
        *,
        prices: PriceTable | None,
        state_file: str | Path | None,
        session_allowance: AllowanceSource | None,
        daily_allowance: AllowanceSource | None,
        unpriced: Literal["allow", "refuse"],
        day: Callable[[float], str],
    ) -> None:
        daily = triggers.cost_limit_daily_usd
        self.fleet: FleetAllowance | None = None
        if triggers.fleet and daily is not None:
            if day is local_day:  # a fleet's day is the control plane's: the UTC calendar day
                day = utc_day
            if daily_allowance is None:
                self.fleet = FleetAllowance(triggers.daily_scope, daily, triggers.chunk_usd)
                daily_allowance = self.fleet
        self.prices, self.unpriced, self._day = prices, unpriced, day
        self.notices: list[str] = []
        self._unpriced: set[str] = set()
        limit = triggers.cost_limit_usd
        self.session = Budget("cost_limit_usd", session_allowance or limit) if limit is not None else None
        self.ledger = DailyLedger(state_file) if state_file is not None and daily is not None else None
        self.today = day(now)
        self.daily: Budget | None = None
        if daily is not None:
            spent = self.ledger.read(self.today).cost_usd if self.ledger else 0.0
            self.daily = Budget("cost_limit_daily_usd", daily_allowance or daily, spent=spent)
            if self.fleet is not None:
                budget = self.daily
                self.fleet.spent_of = lambda: budget.spent
                self.fleet.committed_of = lambda: budget.spent + budget.reserved
                self.fleet.on_answer = self.synced
            if self.ledger is None:
                self.notices.append(
                    "cost_limit_daily_usd: no state file given; the day's spend starts from 0 with each process"
                )
        self.active = self.session is not None or self.daily is not None  # asked at every call: computed once
        if self.active and prices is None:
            self.notices.append(
                "cost triggers: no price table (prices= or $M99_PRICES); only calls whose provider reports "
                "their cost are counted, and a model call's worst case cannot be reserved before it is sent"
            )

    def budgets(self) -> tuple[Budget, ...]:
        return tuple(b for b in (self.session, self.daily) if b is not None)

    def note_unpriced(self, model: str | None) -> None:
        key = model or "(unnamed model)"
        if key not in self._unpriced and len(self._unpriced) < 100:
            self._unpriced.add(key)
            note = f"cost triggers: no price for {key}; its calls count only the cost the provider reports"
            self.notices.append(note)
            logger.warning("m99: %s", note)

    def reserve(
        self, ticket: ModelTicket, prompt_tokens: int, out_tokens: int
    ) -> tuple[str, Budget | None, float] | None:
        """Reserve the call's worst case in every budget; None when it fits, else (why, the budget
        that refused or None for an unpriced model, the amount) with nothing left reserved."""
        # The worst case: the prompt at the input price, ``max_tokens`` at the output price.
        worst = self.prices.cost(ticket.model, prompt_tokens, out_tokens) if self.prices is not None else None
        if worst is None:
            if self.unpriced == "refuse":
                return ("unpriced", None, 0.0)
            self.note_unpriced(ticket.model)
        ticket.worst_usd = worst
        amount = worst or 0.0
        if self.session is not None:
            ticket.session = self.session.reserve(amount)
            if ticket.session is None:
                return ("budget", self.session, amount)
        if self.daily is not None:
            ticket.daily = self.daily.reserve(amount)
            if ticket.daily is None:
                self.release(ticket)
                return ("budget", self.daily, amount)
        return None

    def release(self, ticket: ModelTicket) -> None:
        for budget, reservation in ((self.session, ticket.session), (self.daily, ticket.daily)):
            if budget is not None and reservation is not None:
                budget.release(reservation)

    def settle(
        self,
        ticket: ModelTicket | None,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        used: int,
        cost_usd: float | None,
        split_known: bool,
        ok: bool,
    ) -> None:
        cost = float(cost_usd) if cost_usd is not None and math.isfinite(cost_usd) and cost_usd >= 0 else None
        if cost is None and self.prices is not None:
            # With only a total, price it all as output: the dearer side, so the limit errs safe.
            cost = self.prices.cost(model, *((input_tokens, output_tokens) if split_known else (0, used)))
        if cost is None and self.active and ok:
            self.note_unpriced(model)
        spent = cost or 0.0
        session, daily = self.session, self.daily
        if session is not None:
            reservation = ticket.session if ticket is not None else None
            session.settle(reservation, spent) if reservation is not None else session.spend(spent)
        if daily is not None:
            reservation = ticket.daily if ticket is not None else None
            daily.settle(reservation, spent) if reservation is not None else daily.spend(spent)
            if self.ledger is not None:
                daily.raise_spent(self.ledger.add(self.today, spent, used, 1).cost_usd)

    def rollover(self, now: float) -> None:
        """A new calendar day: the daily budget starts again from that day's ledger (zero, or what other
        processes sharing the state file already spent)."""
        if self.daily is None:
            return
        day = self._day(now)
        if day != self.today:
            self.today = day
            if self.fleet is not None:
                self.fleet.new_day(day)
            self.daily.restart(self.ledger.read(day).cost_usd if self.ledger else 0.0)

    def give_back(self, timeout: float) -> None:
        """The process closes: no new reservation from now on (calls in flight keep theirs), then the
        control plane is told the day's spend, what is in flight counted as spent, and gets the rest."""
        if self.fleet is not None and self.daily is not None:
            self.daily.hold()
            self.fleet.give_back(timeout)

    def reopen(self) -> None:
        """A session binds the fleet budget (again): calls are admitted again after a close's hold."""
        if self.fleet is not None and self.daily is not None:
            self.daily.release_hold()

    def synced(self) -> None:
        """The control plane answered a lease (the first at a restart): adopt this agent's grant, and its
        spend if larger than the local ledger's (a restart whose first answer failed adopts it later)."""
        if self.fleet is not None and self.daily is not None:
            self.daily.raise_spent(self.fleet.server_spent)
            self.daily.refresh()

    def measure(self, out: dict[str, float]) -> None:
        if self.session is not None:
            out["cost_limit_usd"] = self.session.spent
        if self.daily is not None:
            out["cost_limit_daily_usd"] = self.daily.spent

    def status(self) -> dict[str, Any]:
        return {
            **({"fleet": self.fleet.status()} if self.fleet is not None else {}),
            "budgets": {
                b.name: {"limit": b.allowance, "spent": b.spent, "in_flight": b.reserved} for b in self.budgets()
            },
            "day": self.today,
            "state_failures": self.ledger.failures if self.ledger else 0,
        }
