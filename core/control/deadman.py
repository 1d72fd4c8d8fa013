"""The dead man's switch: an agent silent for ``missed_heartbeats`` intervals is killed at
``deadman_level``, with the evidence of its silence audited first, in the same transaction.

It runs on its own thread, apart from heartbeat flushing (a failing flush cannot skip a check), and
reads liveness from the store, which every replica writes: with several replicas on one database the
agent's row is locked while it is judged, so the switch fires once per silence, never once per replica.
Silence is counted from when this server started serving at the earliest.  A silent agent that stays
silent long after is counted gone (``stopped``), at once if it ran on this host and its process no
longer exists.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ..levels import Level, Scope
from ..store import Store
from .agents import Registry, iso
from .executions import Executions
from .ledger import SYSTEM_ACTOR, Ledger
from .settings import Settings

__all__ = ["DeadMan"]

log = logging.getLogger("m99.control")

BATCH = 100  # silent agents judged per transaction: a storm of them commits in batches, not one by one


def _process_gone(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _log_firing(names: list[str], executions: list[str], settings: Settings) -> None:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    log.warning(
        "m99: dead man's switch fired L%d on %d silent agent%s (%d heartbeats missed): %s",
        settings.deadman_level,
        len(names),
        "" if len(names) == 1 else "s",
        settings.missed_heartbeats,
        shown,
        extra={
            "m99": {
                "event": "deadman.fired",
                "level": settings.deadman_level,
                "agents": names[:100],
                "count": len(names),
                "execution_ids": executions[:100],
                "missed_heartbeats": settings.missed_heartbeats,
            }
        },
    )


class DeadMan:
    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        registry: Registry,
        executions: Executions,
        settings: Settings,
        recovered_at: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.recovered_at = recovered_at  # when this replica got its store back after losing it
        self._last_read = time.monotonic()  # the last time a check could read the store
        self.store = store
        self.ledger = ledger
        self.registry = registry
        self.executions = executions
        self.settings = settings
        self.since = time.time()
        self.host = socket.gethostname()

    def serving(self) -> None:
        """The server accepts connections from now on: no agent could have reached it before."""
        self.since = time.time()
        self._last_read = time.monotonic()

    def check(self, now: float | None = None) -> list[dict[str, Any]]:
        """Kill every agent silent for the window; the executions fired."""
        window = self.settings.deadman_window
        if max(self.since, self.recovered_at()) > (now or time.time()) - window:
            return []  # not serving (or not reading its store) for a whole window yet
        with self.store.snapshot() as tx:
            candidates = tx.silent_agents((now or time.time()) - window)
        # Judged on the clock after the read: reading can take long when the store was away.  A replica
        # that could not read its store refused heartbeats meanwhile, so silence counts afresh from now.
        read_at, last = time.monotonic(), self._last_read
        self._last_read = read_at
        if read_at - last > self.settings.staleness:
            self.since = time.time()
            return []
        now = now or time.time()
        cutoff = now - window
        if max(self.since, self.recovered_at()) > cutoff:
            return []
        # This process may have heard from them since its last group commit.
        candidates = [n for n in candidates if (a := self.registry.get(n)) is None or a.last_seen < cutoff]
        fired: list[dict[str, Any]] = []
        for start in range(0, len(candidates), BATCH):
            with self.ledger.unit() as unit:
                tx = unit.tx
                for name in candidates[start : start + BATCH]:
                    row = tx.get_agent(name, lock=True)  # another replica may be judging it right now
                    if row is None or row.status != "active" or row.last_seen >= cutoff:
                        continue
                    mine = self.registry.get(name)
                    if mine is not None and mine.agent_id == row.agent_id and mine.last_seen >= cutoff:
                        continue
                    evidence = {
                        "last_heartbeat_at": iso(row.last_seen),
                        "last_seq": row.last_seq,
                        "silent_seconds": round(now - row.last_seen, 3),
                        "pid": row.pid,
                        "host": row.host,
                        "incarnation": row.incarnation,
                        "threshold_seconds": window,
                    }
                    tx.set_agent_status([name], "silent", "dead man's switch", now, tx.next_registry_seq())
                    unit.audit("deadman.evidence", SYSTEM_ACTOR, {"agent": name, **evidence})
                    fired.append(
                        self.executions.fire(
                            unit,
                            origin="deadman",
                            level=Level(self.settings.deadman_level),
                            scope=Scope("agent", name),
                            by="dead-mans-switch",
                            reason=f"{self.settings.missed_heartbeats} heartbeats missed",
                            actor={"by": "dead-mans-switch", "role": "system"},
                            token_name="system",
                            auth_id=None,
                            extra={"last_heartbeat": evidence},
                            log_line=False,
                        )
                    )
                batch = [f["scope"].removeprefix("agent:") for f in fired[start:]]
                if batch:
                    ids = [f["execution_id"] for f in fired[start:]]
                    unit.after(functools.partial(_log_firing, batch, ids, self.settings))
        return fired

    def gone(self, now: float | None = None) -> list[str]:
        """Count silent agents as gone (stopped): long silent, or their process on this host has exited."""
        now = now or time.time()
        with self.store.snapshot() as tx:
            silent = [tx.get_agent(n) for n in tx.stale_agents("silent", now + 1)]
        due = [
            r.name
            for r in silent
            if r is not None
            and (now - r.status_at > self.settings.gone_window or (r.host == self.host and _process_gone(r.pid)))
        ]
        if not due:
            return []
        with self.ledger.unit() as unit:
            rows = [unit.tx.get_agent(n, lock=True) for n in due]
            names = [r.name for r in rows if r is not None and r.status == "silent"]
            if names:
                unit.tx.set_agent_status(names, "stopped", "gone", now, unit.tx.next_registry_seq())
                unit.audit("agent.gone", SYSTEM_ACTOR, {"agents": names, "after_seconds": self.settings.gone_window})
        return names

    def prune(self, now: float | None = None) -> list[str]:
        """Forget stopped agents after the retention period (their names are free again)."""
        if self.settings.retention <= 0:
            return []
        now = now or time.time()
        with self.store.snapshot() as tx:
            due = tx.stale_agents("stopped", now - self.settings.retention)
        if not due:
            return []
        cutoff = now - self.settings.retention
        with self.ledger.unit() as unit:
            rows = [unit.tx.get_agent(n, lock=True) for n in due]
            due = [r.name for r in rows if r is not None and r.status == "stopped" and r.status_at < cutoff]
            if due:
                unit.tx.delete_agents(due, unit.tx.next_registry_seq())
                unit.audit("agent.pruned", SYSTEM_ACTOR, {"agents": due, "retention_seconds": self.settings.retention})
        self.registry.remove(due)
        return due
