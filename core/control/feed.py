"""The operators' feed: what changed, pushed to every dashboard and watcher as it happens.

Each event names the kinds of things that changed (``agents``, ``directives``, ``authorizations``,
``executions``, ``tokens``, ``audit``) with the state version and audit head, so a client fetches exactly
what it shows, when it changed.  Changes made on this replica are told as they commit; those made on
another replica when this one catches up with the store.  Events carry no data an operator token would
not read anyway, and nothing an agent sent verbatim.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["OperatorFeed", "kinds_of"]

log = logging.getLogger("m99.control")

Listener = Callable[[bytes], None]

_PREFIXES = {
    "authorization.": ("authorizations",),
    "execution.": ("executions", "directives", "agents"),
    "level.": ("executions",),
    "deadman.": ("executions", "agents"),
    "directive.": ("directives", "agents", "executions"),
    "agent.": ("agents",),
    "token.": ("tokens",),
}


def kinds_of(audit_kinds: Iterable[str]) -> set[str]:
    """What the audit entries of a commit say changed."""
    out = {"audit"}
    for kind in audit_kinds:
        for prefix, kinds in _PREFIXES.items():
            if kind.startswith(prefix):
                out.update(kinds)
    return out


class OperatorFeed:
    def __init__(self, version: Callable[[], int], head: Callable[[], tuple[int, str]]) -> None:
        self._version = version
        self._head = head
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def changed(self, kinds: Iterable[str], **extra: Any) -> None:
        names = sorted(set(kinds))
        if not names:
            return
        event = {
            "type": "change",
            "kinds": names,
            "version": self._version(),
            "audit_seq": self._head()[0],
            "at": time.time(),
            **extra,
        }
        payload = json.dumps(event, separators=(",", ":")).encode()
        with self._lock:
            listeners = tuple(self._listeners)
        for listener in listeners:
            try:
                listener(payload)
            except Exception:  # a broken dashboard connection never stops the control plane
                log.exception("m99: operator feed listener failed")
