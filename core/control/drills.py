"""Drills: a real, fully audited invocation marked as one (origin ``drill``), never past L3, and the
schedule that says when the next one is due.

A drill arms and executes on its scope like any kill (the same authorisation, role checks, two-person
rule and audit entries), so it proves the path an emergency would take; the operator's ``m99 drill``
then measures every confirmed time-to-halt, restores, and fetches the case pack.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import BadRequest
from ..store import Store
from .agents import iso
from .authorizations import Authorizations
from .executions import Executions
from .ledger import Ledger
from .tokens import Principal

__all__ = ["MAX_DRILL_LEVEL", "Drills"]

MAX_DRILL_LEVEL = 3  # drills are reversible: L1-L3 only


class Drills:
    def __init__(self, store: Store, ledger: Ledger, authorizations: Authorizations, executions: Executions) -> None:
        self.store = store
        self.ledger = ledger
        self.authorizations = authorizations
        self.executions = executions

    def start(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        level = body.get("level", 3)
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= MAX_DRILL_LEVEL:
            raise BadRequest(
                f"a drill goes up to L{MAX_DRILL_LEVEL} (reversible levels only), not L{level}: "
                "use m99 arm / m99 execute for a real L4-L6",
                code="drill_level",
            )
        auth = self.authorizations.arm(
            who,
            {
                "level": level,
                "scope": body.get("scope"),
                "by": body.get("by"),
                "reason": body.get("reason"),
                "window": 60,
            },
        )
        result = self.executions.execute(who, auth["id"], None, origin="drill")
        with self.ledger.unit() as unit:
            unit.tx.set_meta("drill_last", repr(time.time()))
        return {**result, "drill": True}

    def schedule(self, who: Principal, every: float, by: str) -> dict[str, Any]:
        """Record that a drill is due every ``every`` seconds (0: no schedule)."""
        from ..levels import Role

        self.executions.tokens.require(who, Role.AUTHORITY, "scheduling drills", by)
        if not 0 <= every <= 366 * 86400:
            raise BadRequest("a drill schedule is from 0 (none) to 366 days")
        with self.ledger.unit() as unit:
            unit.tx.set_meta("drill_every", repr(float(every)))
            unit.audit("drill.scheduled", who.actor(by), {"every_seconds": every})
        return self.status()

    def status(self) -> dict[str, Any]:
        with self.store.snapshot() as tx:
            every = float(tx.get_meta("drill_every") or 0)
            last = float(tx.get_meta("drill_last") or 0)
        out: dict[str, Any] = {"every_seconds": every, "last": iso(last) if last else None}
        if every:
            due = (last or 0) + every
            out["due"] = iso(due) if last else "now (no drill yet)"
            out["overdue"] = time.time() > due
        return out


class Canary:
    """A synthetic listener on the control plane's own push path: every ``interval`` seconds the server
    pushes it a signed ping through the same hub, SSE framing, HTTP stack and socket that carry kills;
    a ping not received within ``timeout`` is a failure, reported in ``/metrics`` and ``m99 status``.
    Its stream is opened with a secret made at start, so no one else can take it over."""

    NAME = "m99 canary"  # a hub key no agent name can take (names never hold a space)

    def __init__(
        self, url: str, server_key: Any, sign: Any, publish: Any, interval: float, timeout: float = 2.0
    ) -> None:
        import secrets
        import threading

        self.url, self.server_key, self.sign, self.publish = url, server_key, sign, publish
        self.interval, self.timeout = interval, timeout
        self.secret = secrets.token_urlsafe(24)
        self.sent = self.received = self.failures = 0
        self.last_ms: float | None = None
        self.failing_since: float | None = None
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        import threading
        from urllib.parse import urlsplit

        from .. import network

        # Its own control plane stays reachable for it, as for every agent (a process that also holds
        # Guards at L2, such as a notebook or a test, must not cut the canary off).
        parts = urlsplit(self.url)
        network.allow_destination(parts.hostname or "127.0.0.1", parts.port or 80)

        for target in (self._listen, self._ping):
            thread = threading.Thread(target=target, name=f"m99-canary-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def _ping(self) -> None:
        import secrets

        while not self._stop.wait(self.interval):
            now = time.time()
            with self._lock:
                for nonce, at in list(self._pending.items()):
                    if now - at > self.timeout:
                        del self._pending[nonce]
                        self.failures += 1
                        self.failing_since = self.failing_since or at
                nonce = secrets.token_hex(8)
                self._pending[nonce] = now
                self.sent += 1
            self.publish(self.sign({"type": "canary", "nonce": nonce, "ts": now}), [self.NAME])

    def _listen(self) -> None:
        import json

        import httpx

        from ..protocol import verify_event

        while not self._stop.is_set():
            try:
                headers = {"X-M99-Canary": self.secret}
                with httpx.stream("GET", f"{self.url}/api/canary/events", headers=headers, timeout=None) as answer:
                    for line in answer.iter_lines():
                        if self._stop.is_set():
                            return
                        if not line.startswith("data: "):
                            continue
                        event = verify_event(self.server_key, json.loads(line[6:]))
                        if event is None or event.get("type") != "canary":
                            continue
                        with self._lock:
                            at = self._pending.pop(str(event.get("nonce")), None)
                            if at is not None:
                                self.received += 1
                                self.last_ms = round((time.time() - at) * 1000, 3)
                                self.failing_since = None
            except Exception:  # the push path is what is being watched: its failure is counted, not raised
                self._stop.wait(0.5)

    def status(self) -> dict[str, Any]:
        with self._lock:
            overdue = any(time.time() - at > self.timeout for at in self._pending.values())
            return {
                "ok": self.failing_since is None and not overdue and self.received > 0,
                "interval_seconds": self.interval,
                "pushes": self.sent,
                "acknowledged": self.received,
                "failures": self.failures + (1 if overdue else 0),
                "last_push_ms": self.last_ms,
                "failing_since": iso(self.failing_since) if self.failing_since else None,
            }
