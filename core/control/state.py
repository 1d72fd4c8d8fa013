"""What each agent is told: its signed state document, and the signed events pushed when it changes.

The store holds the truth; this replica's registry and directive index are a cache of it.  ``sync``
catches the cache up by version — after this process commits a change, when the store's change bus
says another replica did, and once a second as a safety net — and pushes an event for every
directive added or lifted since, to the agents it concerns.  Doing it one way for local and remote
changes means an agent connected to any replica hears of every change the same way.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from ..crypto import SigningKey, canonical_json
from ..levels import Level
from ..protocol import Scope, sign_document, sign_event
from ..store import Store
from .agents import Agent, Registry
from .directives import DirectiveIndex, directive_view

__all__ = ["State"]

log = logging.getLogger("m99.control")

Listener = Callable[[bytes, list[str]], None]


class State:
    def __init__(self, store: Store, key: SigningKey, registry: Registry, directives: DirectiveIndex) -> None:
        self.store = store
        self.key = key
        self.registry = registry
        self.directives = directives
        self.version = 0
        self.registry_seq = 0
        self.epoch = ""
        self._listeners: list[Listener] = []
        # Per agent id: (state version, registry change, signed state, heartbeat answer bytes).
        self._cache: dict[str, tuple[int, int, dict[str, Any], bytes]] = {}
        self._sync_lock = threading.Lock()
        # Called after a catch-up that found something new: (agents changed, directives changed, the
        # kinds of the audit entries appended since the last one).
        self.on_sync: list[Callable[[bool, bool, list[str]], None]] = []
        self.audit_seq = -1
        self.synced_at = time.monotonic()  # when this replica last read the store's state
        self.staleness = 15.0  # set by the facade (Settings.staleness)
        self.recovered_at = 0.0  # wall clock when it could read the store again after losing it

    # -- loading and catching up --------------------------------------------------------------------
    def load(self) -> None:
        """Read everything (start-up)."""
        self.synced_at = time.monotonic()
        with self._sync_lock, self.store.snapshot() as tx:
            epoch = tx.get_meta("epoch")
            self.version, self.registry_seq = tx.version(), tx.registry_seq()
            self.registry.replace(tx.list_agents())
            self.directives.replace(tx.active_directives())
            head = tx.audit_head()
            self.audit_seq = head[0] if head else -1
        if epoch is None:
            with self.store.transaction() as wtx:
                epoch = wtx.get_meta("epoch")
                if epoch is None:
                    epoch = secrets.token_hex(8)
                    wtx.set_meta("epoch", epoch)
        self.epoch = epoch

    def sync(self) -> None:
        """Catch up with the store; push what changed (the change bus calls it after every commit)."""
        with self._sync_lock:
            with self.store.snapshot() as tx:
                version, registry_seq = tx.version(), tx.registry_seq()
                now = time.monotonic()
                if now - self.synced_at > self.staleness:
                    # Back after losing the store: meanwhile heartbeats were refused here, so silence that
                    # began during the outage is this replica's, not the agents'.
                    self.recovered_at = time.time()
                    log.warning("m99: the store is reachable again after %.0f s", now - self.synced_at)
                self.synced_at = now
                head = tx.audit_head()
                head_seq = head[0] if head else -1
                if version == self.version and registry_seq == self.registry_seq and head_seq <= self.audit_seq:
                    return
                agents = tx.agents_changed_since(self.registry_seq) if registry_seq != self.registry_seq else []
                gone = tx.forgotten_since(self.registry_seq) if registry_seq != self.registry_seq else []
                changed = tx.directives_changed_since(self.version) if version != self.version else []
                appended = [r.kind for r in tx.audit_page(self.audit_seq, 1000)] if head_seq > self.audit_seq else []
            self.audit_seq = max(self.audit_seq, head_seq)
            if agents:
                self.registry.apply(agents)
            if gone:
                self.registry.remove(gone)
            added = [d for d in changed if d.active]
            lifted = [d for d in changed if not d.active]
            self.directives.apply(added, [d.id for d in lifted])
            self.version = max(self.version, version)
            self.registry_seq = max(self.registry_seq, registry_seq)
            events = [(d.version, "add", d) for d in added] + [
                (d.lifted_version or d.version, "lift", d) for d in lifted
            ]
            for event_version, op, d in sorted(events, key=lambda e: e[0]):
                self.publish(
                    {
                        "type": "directive",
                        "op": op,
                        "version": event_version,
                        "directive": directive_view(d),
                        "issued_at": time.time(),
                    },
                    self.names_in(Scope.parse(d.scope)),
                )
        for callback in self.on_sync:
            try:
                callback(bool(agents or gone), bool(changed), appended)
            except Exception:
                log.exception("m99: sync callback %r failed", callback)

    def stale(self, max_age: float) -> bool:
        """Whether this replica has not been able to read the store for ``max_age`` seconds: it may have
        missed a kill made on another replica, and must not vouch for anyone's state."""
        return time.monotonic() - self.synced_at > max_age

    def names_in(self, scope: Scope) -> list[str]:
        return [a.name for a in self.registry.all() if scope.matches(a.name, a.kind, a.frameworks)]

    # -- what an agent is told ----------------------------------------------------------------------
    def level(self, agent: Agent) -> int:
        if agent.status == "tombstoned":
            return int(Level.TARGETED_TERMINATION)
        return self.directives.level(agent.name, agent.kind, agent.frameworks)

    def document(self, agent: Agent) -> dict[str, Any]:
        directives = self.directives.for_agent(agent.name, agent.kind, agent.frameworks)
        return {
            "type": "state",
            "agent": agent.name,
            "agent_id": agent.agent_id,
            "version": self.version,
            "epoch": self.epoch,
            "level": self.level(agent),
            "tombstoned": agent.status == "tombstoned",
            "directives": [directive_view(d) for d in sorted(directives, key=lambda d: d.version)],
            "issued_at": time.time(),
        }

    def _cached(self, agent: Agent) -> tuple[int, int, dict[str, Any], bytes]:
        cached = self._cache.get(agent.agent_id)
        if cached is None or cached[0] != self.version or cached[1] != agent.changed:
            signed = sign_document(self.key, self.document(agent))
            cached = (self.version, agent.changed, signed, canonical_json({"ok": True, "state": signed}))
            if len(self._cache) > 4 * max(1000, len(self.registry)):
                self._cache.clear()  # registrations replace ids: drop the dead ones now and then
            self._cache[agent.agent_id] = cached
        return cached

    def signed(self, agent: Agent) -> dict[str, Any]:
        """The agent's state signed by the server, made once per state version."""
        return self._cached(agent)[2]

    def answer(self, agent: Agent) -> bytes:
        """The heartbeat response as bytes, serialised once per agent and state version."""
        return self._cached(agent)[3]

    # -- push ---------------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """``listener(event_bytes, agent_names)`` is called for each change this replica learns of."""
        self._listeners.append(listener)

    def publish(self, event: dict[str, Any], names: list[str]) -> None:
        payload = sign_event(self.key, event)
        for listener in list(self._listeners):
            try:
                listener(payload, names)
            except Exception:  # a broken subscriber must not undo a committed kill
                log.exception("m99: push listener failed")
