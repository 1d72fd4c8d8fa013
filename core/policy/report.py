"""Reporting the policy's transitions to the control plane, after the Guard already enforced them.

Each transition becomes a signed ``POST /api/agents/{id}/policy`` (an execution of origin ``policy``
there, audited; the shutdown's evidence snapshot goes with it).  Observation: reports wait in order in
a bounded queue while the control plane is out of reach and are sent again after each heartbeat;
nothing here raises into the agent, and enforcement never waits for it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from ..errors import ControlPlaneError, M99Error
from .decision import PolicyEvent
from .gate import PolicyGate

__all__ = ["PolicyReporter"]

logger = logging.getLogger("m99.policy")

_QUEUE = 256  # reports kept while the control plane is out of reach (the oldest are dropped, and said so)


def event_body(event: PolicyEvent) -> dict[str, Any]:
    return {
        "kind": "transition",
        "at": event.at,
        "stage": event.stage.key,
        "previous": event.previous.key,
        "trigger": event.trigger[:128],
        "value": event.value,
        "limit": event.limit,
        "action": event.action[:128],
        "reason": event.reason[:1000],
        "rule": event.rule[:128],
        "by": event.by[:256],
        "notify": event.notify,
        "channels": [{"kind": c.kind[:32], "target": str(c.target)[:256]} for c in event.channels[:16]],
    }


class PolicyReporter:
    def __init__(self, send: Callable[[dict[str, Any]], Any], gate: PolicyGate, loop: Callable[[], Any]) -> None:
        self._send = send  # blocking: the link's signed POST
        self._gate = gate
        self._loop = loop
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
        self.dropped = 0
        self.sent = 0
        self._lock: asyncio.Lock | None = None
        gate.on_event(self._on_event)

    def _on_event(self, event: PolicyEvent) -> None:
        if event.kind != "transition":
            return  # refusals stay in the local JSONL log: too many to send one by one
        body: dict[str, Any] = {"event": event_body(event)}
        if event.save_state and self._gate.evidence:
            body["evidence"] = next(iter(self._gate.evidence.values()))
        if len(self.pending) >= _QUEUE:
            self.pending.popleft()
            self.dropped += 1
            logger.error("m99: policy report queue full: the oldest report was dropped (%d so far)", self.dropped)
        self.pending.append(body)
        try:
            asyncio.run_coroutine_threadsafe(self.flush(), self._loop())
        except RuntimeError:  # no loop (interpreter exit): sent at close, or lost and logged there
            pass

    async def flush(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while self.pending:
                body = self.pending[0]
                try:
                    await asyncio.to_thread(self._send, body)
                except ControlPlaneError as exc:
                    if 400 <= exc.http_status < 500 and exc.http_status not in (404, 408, 429):
                        self.pending.popleft()  # refused as such: sending it again changes nothing
                        logger.error("m99: the control plane refused a policy report: %s", exc)
                        continue
                    logger.info("m99: policy report not sent yet: %s", exc)
                    return
                except (M99Error, OSError, Exception) as exc:  # observation never crashes the host
                    logger.info("m99: policy report not sent yet: %s", exc)
                    return
                self.pending.popleft()
                self.sent += 1
