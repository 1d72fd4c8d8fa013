"""The active directives, indexed by scope: what holds each agent, in O(1) per agent.

A directive holds every agent its scope covers at its level until it is restored or lifted; an agent's
level is the highest of them.  Each directive is filed under its scope's key (``global``,
``agent:NAME``, ``class:KIND``, ``framework:NAME``), and an agent only ever looks up the few keys that
could cover it, so listing N agents under M directives costs O(N + M), never O(N × M).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from typing import Any

from ..errors import BadRequest, Conflict
from ..levels import Level, Role
from ..protocol import Scope, agent_keys
from ..store.records import DirectiveRecord
from .agents import Registry
from .ledger import Ledger
from .tokens import Principal, Tokens, checked_by_reason

__all__ = ["DirectiveIndex", "Restores", "directive_view"]


def directive_view(d: DirectiveRecord) -> dict[str, Any]:
    """What agents and operators see of a directive (pushed, signed, listed)."""
    return {
        "id": d.id,
        "level": d.level,
        "scope": d.scope,
        "execution_id": d.execution_id,
        "origin": d.origin,
        "version": d.version,
        "by": d.by_email,
        "reason": d.reason,
    }


class DirectiveIndex:
    """Active directives by scope key.  Written under a lock by the state's catch-up; read on any
    thread without one (each write replaces a key's dict, never mutates one a reader may hold)."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[str, DirectiveRecord]] = {}
        self._all: dict[str, DirectiveRecord] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._all)

    def all(self) -> list[DirectiveRecord]:
        return sorted(self._all.values(), key=lambda d: d.version)

    def get(self, directive_id: str) -> DirectiveRecord | None:
        return self._all.get(directive_id)

    def replace(self, directives: Iterable[DirectiveRecord]) -> None:
        by_key: dict[str, dict[str, DirectiveRecord]] = {}
        every: dict[str, DirectiveRecord] = {}
        for d in directives:
            if d.active:
                by_key.setdefault(d.scope, {})[d.id] = d
                every[d.id] = d
        with self._lock:
            self._by_key, self._all = by_key, every

    def apply(self, added: Iterable[DirectiveRecord], lifted: Iterable[str]) -> None:
        """File ``added`` (active directives) and drop the ``lifted`` ids, as one change: the dicts are
        copied once per batch, so readers never see one half-written."""
        with self._lock:
            by_key = dict(self._by_key)
            every = dict(self._all)
            touched: dict[str, dict[str, DirectiveRecord]] = {}
            for d in added:
                if d.active and d.id not in every:
                    group = touched.get(d.scope)
                    if group is None:
                        group = touched[d.scope] = dict(by_key.get(d.scope, {}))
                    group[d.id] = d
                    every[d.id] = d
            for directive_id in lifted:
                lifted_one = every.pop(directive_id, None)
                if lifted_one is None:
                    continue
                d = lifted_one
                group = touched.get(d.scope)
                if group is None:
                    group = touched[d.scope] = dict(by_key.get(d.scope, {}))
                del group[directive_id]
            for key, group in touched.items():
                if group:
                    by_key[key] = group
                else:
                    by_key.pop(key, None)
            self._by_key, self._all = by_key, every

    def for_agent(self, name: str, kind: str, frameworks: Collection[str]) -> list[DirectiveRecord]:
        by_key = self._by_key
        found: list[DirectiveRecord] = []
        for key in agent_keys(name, kind, frameworks):
            group = by_key.get(key)
            if group:
                found.extend(group.values())
        return found

    def level(self, name: str, kind: str, frameworks: Collection[str]) -> int:
        by_key = self._by_key
        level = 0
        for key in agent_keys(name, kind, frameworks):
            group = by_key.get(key)
            if group:
                level = max(level, *(d.level for d in group.values()))
        return level

    def covered(self, scope: Scope, agents: dict[str, tuple[str, Collection[str]]]) -> list[DirectiveRecord]:
        """The directives a restore or lift on ``scope`` may lift (see ``Scope.covers``)."""
        if scope.kind == "global":
            return self.all()
        return [d for d in self.all() if scope.covers(Scope.parse(d.scope), agents)]

    @staticmethod
    def reversible(d: DirectiveRecord) -> bool:
        return d.level <= Level.TOOL_CALL_FREEZE


class Restores:
    """Restore (L1–L3, operator) and lift (L4–L6 and tombstones, authority; fleet for L6)."""

    def __init__(self, ledger: Ledger, registry: Registry, index: DirectiveIndex, tokens: Tokens) -> None:
        self.ledger = ledger
        self.registry = registry
        self.index = index
        self.tokens = tokens

    def lift(self, who: Principal, body: dict[str, Any], *, reversible: bool) -> dict[str, Any]:
        try:
            scope = Scope.parse(body.get("scope"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        by, reason = checked_by_reason(body.get("by"), body.get("reason"), who)
        verb = "restore" if reversible else "lift"
        self.tokens.require(who, Role.OPERATOR if reversible else Role.AUTHORITY, verb, by)
        covered = self.index.covered(scope, self.registry.kinds())
        chosen = [d for d in covered if DirectiveIndex.reversible(d) == reversible]
        if not reversible and any(d.level == Level.FLEET_KILL for d in chosen):
            self.tokens.require(who, Role.FLEET, "lifting L6", by)
        agents = self.registry.all()
        tomb = (
            []
            if reversible
            else [a for a in agents if a.status == "tombstoned" and scope.matches(a.name, a.kind, a.frameworks)]
        )
        if not chosen and not tomb:
            held = [d for d in covered if d not in chosen]
            hint = ""
            if reversible and held:
                hint = f"; L{max(d.level for d in held)} is not reversible by restore: an authority must `m99 lift`"
            raise Conflict(f"nothing to {verb} in scope {scope}{hint}", code="nothing")
        ids = {d.id for d in chosen}
        parsed = [Scope.parse(d.scope) for d in chosen]
        remaining = [Scope.parse(d.scope) for d in self.index.all() if d.id not in ids and d.level >= 1]
        affected = sorted(
            {a.name for a in agents if any(s.matches(a.name, a.kind, a.frameworks) for s in parsed)}
            | {a.name for a in tomb}
        )
        still_held = {
            a.name
            for a in agents
            if a.name in affected and any(s.matches(a.name, a.kind, a.frameworks) for s in remaining)
        }
        now = time.time()
        with self.ledger.unit() as unit:
            tx = unit.tx
            version = tx.next_version()
            tx.lift_directives(sorted(ids), now, by, version)
            unrevoked = tx.set_credentials_revoked([n for n in affected if n not in still_held], 0, now)
            if tomb:
                tx.set_agent_status([a.name for a in tomb], "stopped", "tombstone lifted", now, tx.next_registry_seq())
            unit.audit(
                f"directive.{'restored' if reversible else 'lifted'}",
                who.actor(by),
                {
                    "scope": str(scope),
                    "reason": reason,
                    "directives": sorted(ids),
                    "agents": affected,
                    "credentials_restored": unrevoked,
                    "tombstones_lifted": [a.name for a in tomb],
                },
            )
        return {
            "success": True,
            "scope": str(scope),
            "lifted": sorted(ids),
            "agents": affected,
            "version": version,
            "still_held": sorted(still_held),
            "tombstones_lifted": [a.name for a in tomb],
        }
