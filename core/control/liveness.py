"""Heartbeats, acknowledgements and time-to-halt.

A heartbeat is checked and noted in memory on the event loop (signature, sequence, clock skew: no
store work), and many agents' heartbeats are group-committed every ``FLUSH_PERIOD`` by the
background thread; a failed flush keeps them for the next one.  An acknowledgement says an agent
applied a state version; it confirms the halt of every execution that put that agent's current
registration in scope, with a time-to-halt bounded by what the server saw: never before the
execution started, never after the acknowledgement arrived.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..errors import BadRequest, Conflict, NotFound, Unauthenticated
from ..protocol import clean_frameworks, request_message
from ..store import Store, StoreError
from ..store.records import AckRecord
from .agents import Agent, Registry, iso
from .directives import DirectiveIndex
from .ledger import Ledger
from .refusals import Refusals
from .settings import Settings

__all__ = ["HALT_ORIGINS", "Liveness", "signed_ack"]

log = logging.getLogger("m99.control")

FLUSH_PERIOD = 0.1
# The origins of directives whose acknowledgement is a confirmed halt.
HALT_ORIGINS = ("execute", "deadman", "policy", "drill")


def signed_ack(body: dict[str, Any]) -> dict[str, Any]:
    """What is kept of an acknowledgement: every field the agent signed, and its signature, so the
    receipt in it can be checked against the agent's key by anyone, offline (``request_message``)."""
    return {k: v for k, v in body.items() if k != "agent_id"}


class Liveness:
    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        registry: Registry,
        directives: DirectiveIndex,
        refusals: Refusals,
        settings: Settings,
        on_frameworks: Callable[[Agent, tuple[str, ...]], None],
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.registry = registry
        self.directives = directives
        self.refusals = refusals
        self.settings = settings
        self.on_frameworks = on_frameworks
        self._dirty: dict[str, tuple[int, float]] = {}
        self._returned: dict[str, Agent] = {}  # silent agents heard from again, audited at the next flush
        self._lock = threading.Lock()
        self._targets: OrderedDict[str, dict[str, str]] = OrderedDict()  # execution id -> its targets
        self._seen_at = time.time()
        self.fresh: Callable[[], bool] | None = None  # set by the facade: the state is current enough
        self.on_acks: Callable[[], None] | None = None  # set by the facade: halts were confirmed
        # Told each confirmed halt's (origin, time-to-halt in ms) after it commits: /metrics' histogram.
        self.on_halted: list[Callable[[list[tuple[str, float]]], object]] = []

    # -- signed requests ----------------------------------------------------------------------------
    def agent(self, agent_id: str) -> Agent:
        agent = self.registry.by_agent_id(agent_id)
        if agent is None:
            raise NotFound(f"unknown agent id {agent_id!r}: register first", code="unknown_agent")
        return agent

    def check_signed(
        self,
        agent: Agent,
        kind: str,
        body: dict[str, Any],
        *,
        last: int | None = None,
        source: str = "",
        sequenced: bool = True,
    ) -> None:
        """Refuse (and note) a signed request that is forged, replayed, out of order or stale."""
        last = agent.last_seq if last is None else last
        reason = code = ""
        if not agent.verify_key.verify(request_message(kind, agent.agent_id, body), body["signature"]):
            reason, code = "bad signature", "bad_signature"
        elif sequenced and body["seq"] <= last:
            reason, code = f"replayed or out-of-order sequence {body['seq']} (last {last})", "replayed"
        elif abs(body["ts"] - time.time()) > self.settings.clock_skew:
            reason = f"timestamp {body['ts']:.3f} outside the allowed skew of {self.settings.clock_skew:g} s"
            code = "stale"
        if not code:
            return
        self.refusals.note(
            f"{kind}.rejected",
            {"agent": agent.name},
            {"agent_id": agent.agent_id, "seq": body.get("seq"), "reason": reason},
            f"{source}|{agent.name}",
        )
        if code == "bad_signature":
            raise Unauthenticated(f"{kind} rejected: {reason}", code=code)
        raise Conflict(f"{kind} rejected: {reason}", code=code)

    def heartbeat(self, agent_id: str, body: dict[str, Any], source: str = "") -> Agent:
        """Accept a signed heartbeat, in memory (no store work: it runs on the event loop).

        Raises ``LookupError`` (not an M99 error) when the heartbeat reports frameworks that differ from
        the registry's: the caller runs ``heartbeat_slow`` off the loop for it."""
        agent = self.agent(agent_id)
        self.check_signed(agent, "heartbeat", body, source=source)
        if self.fresh is not None and not self.fresh():
            raise StoreError("this replica cannot read its database: it does not vouch for any state now")
        frameworks = body.get("frameworks")
        if frameworks is not None and tuple(frameworks) != agent.frameworks:
            raise LookupError("frameworks changed")
        self._beat(agent, body["seq"])
        return agent

    def heartbeat_slow(self, agent_id: str, body: dict[str, Any], source: str = "") -> Agent:
        """A heartbeat that changes the registry (frameworks), off the event loop."""
        agent = self.agent(agent_id)
        self.check_signed(agent, "heartbeat", body, source=source)
        frameworks = body.get("frameworks")
        if frameworks is not None:
            try:
                wanted = clean_frameworks(frameworks)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            if wanted != agent.frameworks:
                self.on_frameworks(agent, wanted)
        self._beat(agent, body["seq"])
        return self.registry.by_agent_id(agent_id) or agent

    def _beat(self, agent: Agent, seq: int) -> None:
        now = time.time()
        agent.last_seq = seq
        agent.last_seen = now
        with self._lock:
            self._dirty[agent.name] = (seq, now)
            if agent.status == "silent":
                self._returned[agent.name] = agent

    def seen(self, agent: Agent) -> None:
        """A signed request other than a heartbeat (an ack) is contact too."""
        now = time.time()
        agent.last_seen = now
        with self._lock:
            self._dirty[agent.name] = (max(agent.last_seq, self._dirty.get(agent.name, (0, 0))[0]), now)

    def flush(self) -> int:
        """Group-commit the heartbeats noted since the last flush; audit agents heard from again."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            returned, self._returned = self._returned, {}
        if not dirty and not returned:
            return 0
        try:
            with self.ledger.unit() as unit:
                tx = unit.tx
                tx.record_liveness([(name, seq, seen) for name, (seq, seen) in dirty.items()])
                back = []
                for name, agent in returned.items():
                    row = tx.get_agent(name, lock=True)
                    if row is None or row.status != "silent" or row.agent_id != agent.agent_id:
                        continue
                    tx.set_agent_status([name], "active", "heartbeat again", time.time(), tx.next_registry_seq())
                    back.append(name)
                    unit.audit(
                        "agent.returned",
                        {"agent": name},
                        {"agent_id": agent.agent_id, "silent_since": iso(row.status_at), "seq": agent.last_seq},
                    )
        except Exception:
            with self._lock:  # nothing is lost: the next flush writes them
                for name, beat in dirty.items():
                    newer = self._dirty.get(name)
                    if newer is None or newer[1] < beat[1]:
                        self._dirty[name] = beat
                for name, agent in returned.items():
                    self._returned.setdefault(name, agent)
            raise
        return len(dirty)

    def refresh(self) -> None:
        """Take the heartbeats other replicas committed (their agents' liveness, for listings and the
        dead man's switch)."""
        since, self._seen_at = self._seen_at - 2 * FLUSH_PERIOD - 1.0, time.time()
        with self.store.snapshot() as tx:
            rows = tx.liveness_since(since)
        for name, seq, seen in rows:
            agent = self.registry.get(name)
            if agent is not None and seen > agent.last_seen:
                agent.last_seen = seen
                agent.last_seq = max(agent.last_seq, seq)

    # -- acknowledgements ---------------------------------------------------------------------------
    def checked_ack(self, agent_id: str, body: dict[str, Any], source: str = "") -> Agent:
        agent = self.agent(agent_id)
        self.check_signed(agent, "ack", body, last=agent.last_ack_seq, source=source)
        agent.last_ack_seq = body["seq"]
        return agent

    def record_acks(self, acks: list[tuple[Agent, dict[str, Any]]]) -> list[list[str] | Conflict]:
        """Record checked acknowledgements in one unit; per ack, the executions it confirmed, or why it
        was refused (an ``applied_at`` outside the execution's window)."""
        now = time.time()
        skew = self.settings.clock_skew
        results: list[list[str] | Conflict] = []
        halted: list[tuple[str, float]] = []
        with self.ledger.unit() as unit:
            for agent, body in acks:
                self.seen(agent)
                applied = float(body["applied_at"])
                halts = []
                refused: Conflict | None = None
                for d in self.directives.for_agent(agent.name, agent.kind, agent.frameworks):
                    if d.version > body["version"] or d.origin not in HALT_ORIGINS:
                        continue
                    if self._execution_targets(unit.tx, d.execution_id).get(agent.name) != agent.agent_id:
                        continue  # this registration was not in scope: it cannot confirm that halt
                    if applied < d.created_at - skew or applied > now + skew:
                        refused = Conflict(
                            f"acknowledgement refused: applied_at {applied:.3f} is outside the window of "
                            f"execution {d.execution_id} (started {d.created_at:.3f}, allowed skew {skew:g} s)",
                            code="bad_applied_at",
                        )
                        break
                    halts.append(d)
                if refused is not None:
                    results.append(refused)
                    continue
                confirmed: list[str] = []
                for d in halts:
                    # The agent's word, bounded by what the server saw: no earlier than the execution,
                    # no later than this acknowledgement's arrival.
                    ms = min(max(applied - d.created_at, 0.0), now - d.created_at) * 1000
                    ack = AckRecord(
                        d.execution_id,
                        agent.name,
                        agent.agent_id,
                        body["version"],
                        now,
                        applied,
                        ms,
                        signed_ack(body),
                    )
                    if unit.tx.insert_ack(ack):
                        confirmed.append(d.execution_id)
                        halted.append((d.origin, ms))
                results.append(confirmed)
            if self.on_acks is not None and any(isinstance(r, list) and r for r in results):
                unit.after(self.on_acks)
            for listener in self.on_halted if halted else ():
                unit.after(functools.partial(listener, halted))
        return results

    def targets_of(self, execution_id: str) -> dict[str, str]:
        """The registrations an execution put in scope (name -> agent id), cached."""
        with self.store.snapshot() as tx:
            return self._execution_targets(tx, execution_id)

    def _execution_targets(self, tx: Any, execution_id: str) -> dict[str, str]:
        with self._lock:
            targets = self._targets.get(execution_id)
        if targets is None:
            row = tx.get_execution(execution_id)
            if row is None:
                return {}
            targets = dict(row.targets)
            with self._lock:
                self._targets[execution_id] = targets
                while len(self._targets) > 256:
                    self._targets.popitem(last=False)
        return targets
