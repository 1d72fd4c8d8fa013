"""Fleet budgets: one ``cost_limit_daily_usd`` for a class of agents, or for all of them, leased in chunks.

An agent whose KILLSWITCH.md sets ``cost_limit_daily_scope: class`` (or ``global``) asks here, signed with
its key, for a chunk of the day's budget before a model call that does not fit what it already holds.
Fleet dollars are shared money, so only an agent enrolled with a token (``M99_ENROL_TOKEN``; an
enrolment token may be bound to a kind) may lease them: an openly registered one is refused (403).
The scope is the agent's registered class (``class:KIND``) or ``global``, decided here from the
registration, never taken from the request; the day is the UTC day, the server's.

Each agent's share (keyed by the agent's name, so a restart under the same name takes it up again)
records what it was granted and the most it reported spent; the fleet has used, per agent, the larger of
the two.  The day's limit is the smallest any agent of the scope declared that day: a later, larger
declaration cannot raise it.  A lease grants ``min(asked, a quarter of the limit, limit − used)``, and
at least a thousandth of the limit unless less is left, so the fleet's granted total never passes the
limit and no agent takes the day in one request.  A reported spend only grows within a day (an agent
cannot free budget by reporting less); a closing agent gives back what it did not spend.  Leases are
serialised (a row lock on PostgreSQL, the write lock on SQLite), so two replicas cannot grant the same
dollars twice; each share keeps the sequence number of its newest request, so a captured request
replayed on any replica is refused.  An agent gets at most ``MAX_LEASES`` answers a share and day.
Every grant, the first refusal of an agent's day and every give-back are audited; the answer, which
echoes the request's nonce, is signed with the server's key.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..errors import BadRequest, Conflict, NotAuthorised, RateLimited
from ..policy.lease import MAX_LEASE_SHARE, utc_day
from ..protocol import sign_document
from ..store import Store
from ..store.records import BudgetRecord
from .agents import Agent
from .ledger import Ledger
from .liveness import Liveness

__all__ = ["MAX_LEASES", "MAX_LEASE_SHARE", "MIN_LEASE_SHARE", "Budgets", "utc_day"]

MIN_LEASE_SHARE = 0.001  # the smallest grant, as a share of the limit (unless less is left)
# Lease requests answered per share and day: a thousand minimal grants, and room for restarts.  Past it
# the agent is refused (429) with nothing recorded, so it cannot fill the audit chain.
MAX_LEASES = 1200


def _used(share: BudgetRecord) -> float:
    return max(share.granted_usd, share.spent_usd)


class Budgets:
    def __init__(self, store: Store, ledger: Ledger, liveness: Liveness, key: Any) -> None:
        self.store = store
        self.ledger = ledger
        self.liveness = liveness
        self.key = key

    def lease(self, agent: Agent, body: dict[str, Any], source: str = "") -> dict[str, Any]:
        """A signed lease request: ``scope`` (class|global), ``day``, ``limit_usd``, ``want_usd`` (0 to
        learn the share only), ``spent_usd`` (the agent's spend of the day), ``final`` (give back),
        ``nonce`` (echoed in the signed answer)."""
        # The sequence is checked against the share's, in the store, under the lease's lock (below):
        # leases are not ordered with the agent's other signed requests, and replicas share the store.
        self.liveness.check_signed(agent, "budget", body, source=source, sequenced=False)
        if agent.status in ("stopped", "tombstoned"):
            raise Conflict(f"agent {agent.name} is {agent.status}: no budget for it", code="not_active")
        now = time.time()
        day = str(body["day"])
        skew = self.liveness.settings.clock_skew
        if day not in {utc_day(now - skew), utc_day(now), utc_day(now + skew)}:
            raise BadRequest(f"day {day!r} is not today (UTC) at the control plane ({utc_day(now)})", code="bad_day")
        scope = f"class:{agent.kind}" if body["scope"] == "class" else "global"
        declared = float(body["limit_usd"])
        want, spent, final = float(body["want_usd"]), float(body["spent_usd"]), bool(body.get("final"))
        if not all(math.isfinite(v) for v in (declared, want, spent)):
            raise BadRequest("amounts must be finite numbers")
        actor = {"agent": agent.name, "policy": agent.policy or None}
        with self.ledger.unit() as unit:
            record = unit.tx.get_agent_by_id(agent.agent_id)
            if record is None or not record.enrolled_by:
                raise NotAuthorised(
                    f"agent {agent.name} was registered without an enrolment token: only an agent enrolled "
                    "with one (M99_ENROL_TOKEN, `m99 token create --role agent`) may lease a fleet budget",
                    code="not_enrolled",
                )
            shares = unit.tx.budget_shares(scope, day, lock=True)
            mine = next((s for s in shares if s.agent == agent.name), None)
            if mine is None:
                mine = BudgetRecord(scope, day, agent.name, agent.agent_id, declared, 0.0, 0.0, now)
            elif mine.agent_id == agent.agent_id and body["seq"] <= mine.seq:  # (a new registration counts anew)
                raise Conflict(f"budget rejected: replayed or out-of-order sequence {body['seq']}", code="replayed")
            if mine.leases >= MAX_LEASES:
                raise RateLimited(f"agent {agent.name} asked for {scope}'s budget too often today", retry_after=60.0)
            limit = min([declared, *(s.limit_usd for s in shares)])  # the smallest declared today binds
            others = sum(_used(s) for s in shares if s.agent != agent.name)
            mine.seq, mine.leases = int(body["seq"]), mine.leases + 1
            mine.spent_usd = max(mine.spent_usd, spent)
            # a share's limit only goes down: an agent cannot raise the limit it declared earlier today
            mine.limit_usd, mine.updated_at, mine.agent_id = min(mine.limit_usd, declared), now, agent.agent_id
            granted = 0.0
            details: dict[str, Any] = {"agent_id": agent.agent_id, "scope": scope, "day": day, "limit_usd": limit}
            if final:
                returned = max(0.0, mine.granted_usd - mine.spent_usd)
                mine.granted_usd = min(mine.granted_usd, mine.spent_usd)
                if returned > 0:
                    unit.audit("budget.returned", actor, {**details, "returned_usd": returned, "spent_usd": spent})
            elif want > 0:
                room = limit - others - _used(mine)
                asked = min(max(want, limit * MIN_LEASE_SHARE), limit * MAX_LEASE_SHARE)
                granted = max(0.0, min(asked, room))
                if granted > 0:
                    mine.granted_usd = _used(mine) + granted
                    unit.audit(
                        "budget.leased",
                        actor,
                        {**details, "granted_usd": granted, "total_usd": mine.granted_usd, "fleet_used_usd": others},
                    )
                else:
                    mine.refused += 1
                    if mine.refused == 1:
                        unit.audit("budget.exhausted", actor, {**details, "wanted_usd": want, "fleet_used_usd": others})
            unit.tx.put_budget_share(mine)
        document = {
            "type": "budget.lease",
            "agent_id": agent.agent_id,
            "nonce": body["nonce"],
            "scope": scope,
            "day": day,
            "granted_usd": mine.granted_usd,
            "spent_usd": mine.spent_usd,
            "leased_usd": granted,
            "fleet_used_usd": others + _used(mine),
            "limit_usd": limit,
        }
        return sign_document(self.key, document)

    def view(self, days: int = 2) -> dict[str, Any]:
        """The shares of the last ``days`` UTC days, grouped by scope and day, with their totals."""
        since = utc_day(time.time() - max(0, days - 1) * 86400.0)
        with self.store.snapshot() as tx:
            shares = tx.list_budget_shares(since)
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for s in shares:
            group = groups.setdefault(
                (s.day, s.scope),
                {"day": s.day, "scope": s.scope, "granted_usd": 0.0, "spent_usd": 0.0, "used_usd": 0.0, "agents": []},
            )
            group["granted_usd"] += s.granted_usd
            group["spent_usd"] += s.spent_usd
            group["used_usd"] += _used(s)
            group["agents"].append(
                {
                    "agent": s.agent,
                    "agent_id": s.agent_id,
                    "limit_usd": s.limit_usd,
                    "granted_usd": s.granted_usd,
                    "spent_usd": s.spent_usd,
                    "refused": s.refused,
                    "updated_at": s.updated_at,
                }
            )
        return {"budgets": list(groups.values())}
