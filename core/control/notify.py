"""Notification of policy transitions: a webhook sink the operator configures on the server
(``m99 serve --webhook URL``), an HTTP POST of a JSON body signed with the server's key.

The body is ``{"type": "m99.policy", "agent", "stage", "trigger", "reason", "channels", ...}`` (or, with
``--webhook-format slack``, a Slack-compatible ``{"text": …}`` carrying the same fields under ``"m99"``);
the header ``X-M99-Signature`` is the Ed25519 signature (base64) of the body's bytes by the key
``GET /api/server-key`` shows.  Delivery runs on a thread of its own, with a short timeout and three
tries: it never holds up an agent's report.  Each outcome is audited (``policy.notified`` or
``policy.notify_failed``); a transition whose level says ``notify`` while no sink is configured is audited
as ``policy.notify_undelivered``, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..crypto import SigningKey

__all__ = ["WebhookSink"]

log = logging.getLogger("m99.control")

TRIES = 3
TIMEOUT = 5.0


class WebhookSink:
    def __init__(
        self,
        url: str,
        key: SigningKey,
        *,
        slack: bool = False,
        record: Callable[[str, dict[str, Any]], object] | None = None,
    ) -> None:
        self.url, self.key, self.slack = url, key, slack
        self._record = record  # audits each outcome

    def body(self, payload: dict[str, Any]) -> bytes:
        if self.slack:
            channels = ", ".join(f"{c['kind']}: {c['target']}" for c in payload.get("channels", ()))
            text = (
                f"M99 policy: agent {payload['agent']} -> {payload['stage']} ({payload['trigger']}): "
                f"{payload['reason']}" + (f" [channels: {channels}]" if channels else "")
            )
            payload = {"text": text, "m99": payload}
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()

    def deliver(self, payload: dict[str, Any]) -> threading.Thread:
        thread = threading.Thread(target=self._send, args=(payload,), name="m99-webhook", daemon=True)
        thread.start()
        return thread

    def _send(self, payload: dict[str, Any]) -> None:
        import httpx

        data = self.body(payload)
        headers = {"Content-Type": "application/json", "X-M99-Signature": self.key.sign(data)}
        error = ""
        for attempt in range(TRIES):
            try:
                answer = httpx.post(self.url, content=data, headers=headers, timeout=TIMEOUT)
                if answer.status_code < 300:
                    self._audit("policy.notified", payload, {"status": answer.status_code, "tries": attempt + 1})
                    return
                error = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5 * (attempt + 1))
        log.error("m99: webhook %s not delivered: %s", self.url, error)
        self._audit("policy.notify_failed", payload, {"error": error[:500], "tries": TRIES})

    def _audit(self, kind: str, payload: dict[str, Any], extra: dict[str, Any]) -> None:
        if self._record is None:
            return
        try:
            self._record(kind, {"agent": payload.get("agent"), "stage": payload.get("stage"), **extra})
        except Exception:  # observation: a failed audit of a delivery is logged, never raised
            log.exception("m99: could not audit a webhook delivery")
