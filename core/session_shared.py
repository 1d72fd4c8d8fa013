"""What every session of a process shares: the one event loop thread they all run on, the cache of
verified pushed events (the same signed bytes reach every agent an event concerns), parsed scopes,
whether a URL goes through a proxy, and the words of a stop ("stopped by … (L3, execution …)")."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .levels import Scope
from .link import ControlLink

__all__ = ["stop_reason"]

T = TypeVar("T")


class _Loop:
    """The process-wide event loop thread shared by every session."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="m99-sessions", daemon=True)
                thread.start()
                cls._loop, cls._thread = loop, thread
            return cls._loop

    @classmethod
    def on_loop(cls) -> bool:
        return threading.current_thread() is cls._thread

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, cls.get())
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise


class _VerifiedEvents:
    """The server sends the same signed bytes to every agent an event concerns: check each distinct
    payload once per process (an Ed25519 check costs ~0.1 ms)."""

    def __init__(self, size: int = 256) -> None:
        self._seen: dict[bytes, dict[str, Any] | None] = {}
        self._size = size

    def verify(self, link: ControlLink, raw: bytes) -> dict[str, Any] | None:
        if raw in self._seen:
            return self._seen[raw]
        try:
            payload = json.loads(raw)
        except ValueError:
            return None
        event = link.verify_event(payload) if isinstance(payload, dict) else None
        if len(self._seen) >= self._size:
            self._seen.pop(next(iter(self._seen)))
        self._seen[raw] = event
        return event


_events = _VerifiedEvents()


@functools.lru_cache(maxsize=256)
def _scope(text: str) -> Scope:
    """A directive's scope, parsed once per process: every session in it reads the same event."""
    return Scope.parse(text)


def _proxied(url: str) -> bool:
    """Whether the environment sends requests to ``url`` through an HTTP proxy (httpx honours it)."""
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def stop_reason(directives: Sequence[dict[str, Any]]) -> str:
    """Who stopped the agent and why, from the directive that holds it highest:
    ``stopped by ops@example.com: "Runaway loop" (L3, execution exe_…)``."""
    if not directives:
        return ""
    top = max(directives, key=lambda d: (int(d.get("level", 0)), int(d.get("version", 0))))
    by, why = top.get("by") or "an operator", top.get("reason") or ""
    execution = top.get("execution_id")
    where = f"L{top.get('level')}" + (f", execution {execution}" if execution else "")
    return f'stopped by {by}: "{why}" ({where})' if why else f"stopped by {by} ({where})"
