"""A Guard's session with the control plane: registration, signed heartbeats, the pushed
state stream (Server-Sent Events), acknowledgements, and the lease.

One background thread per process runs an event loop for every session, so a process can
hold many Guards (one per framework agent) without a thread each.  The Guard itself never
waits on any of this: it answers from memory, and this module changes its state.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from . import network, push
from .errors import ControlPlaneError, M99Error, NotFound
from .fleet import acks as _acks
from .fleet import changes as _changes
from .guard import Guard
from .levels import Level, Scope
from .link import ControlLink, raise_for_answer, tls_context

log = logging.getLogger("m99.session")

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
        return asyncio.run_coroutine_threadsafe(coro, cls.get()).result(timeout)


class _VerifiedEvents:
    """The server sends the same signed bytes to every agent an event concerns: check each
    distinct payload once per process (an Ed25519 check costs ~0.1 ms)."""

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


class Session:
    """Connects ``guard`` to the control plane at ``url`` and keeps its state current."""

    def __init__(
        self,
        guard: Guard,
        url: str,
        *,
        key_file: str | None = None,
        lease_seconds: float | None = None,
        heartbeat_interval: float | None = None,
        server_public_key: str | None = None,
    ) -> None:
        self.guard = guard
        self.link = ControlLink(url, key_file=key_file, server_public_key=server_public_key)
        self._lease_override = lease_seconds
        self._interval_override = heartbeat_interval
        self.lease_seconds = lease_seconds or 90.0
        self.heartbeat_interval = heartbeat_interval or 30.0
        self.last_contact = time.monotonic()
        self.connected = False
        self._directives: dict[str, dict[str, Any]] = {}
        self._applied_version = -1
        self._acked_version = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._aclient: httpx.AsyncClient | None = None  # the push stream's, behind an HTTP proxy only
        self._closed = False
        guard.on_change(self._acknowledge_termination)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> Session:
        """Register (blocking, so a refusal such as a tombstone raises here) and start the
        heartbeat, push and lease tasks."""
        host, port = self.link.host_port
        network.allow_destination(host, port)
        answer = self._register()
        self.heartbeat_interval = self._interval_override or float(answer["heartbeat_interval"])
        self.lease_seconds = self._lease_override or float(answer["lease_seconds"])
        self._apply_document(self.link.verify_state(answer["state"]), ack=False)
        self._contact()
        _Loop.run(self._start_tasks(), timeout=10)
        return self

    async def _start_tasks(self) -> None:
        if _proxied(self.link.url):
            self._aclient = httpx.AsyncClient(
                base_url=self.link.url, timeout=httpx.Timeout(10.0, read=45.0), verify=tls_context()
            )
        _acks.use(self.link.url)
        loop = asyncio.get_running_loop()
        for name, coro in (("heartbeat", self._heartbeats()), ("push", self._push()), ("lease", self._lease())):
            task = loop.create_task(coro, name=f"m99-{name}-{self.guard.name}")
            self._tasks.append(task)

    def close(self, *, deregister: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self.guard.remove_on_change(self._acknowledge_termination)
        try:
            _Loop.run(self._stop_tasks(), timeout=10)
        except Exception as exc:  # closing must not crash the host
            log.warning("m99 session close: %s", exc)
        if deregister and self.link.agent_id is not None and not self.guard.terminating:
            try:
                self.link.deregister()
            except M99Error as exc:
                log.warning("m99 deregister failed: %s", exc)
        self.link.close()
        network.retire(self.guard)

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await _acks.flush_for(self)
        await _acks.release(self.link.url)
        if self._aclient is not None:
            await self._aclient.aclose()

    # ------------------------------------------------------------------ state
    def _contact(self) -> None:
        self.last_contact = time.monotonic()
        self.connected = True
        if self.guard.lease_lost:
            self.guard.set_lease_restored()

    def _matches(self, directive: dict[str, Any]) -> bool:
        g = self.guard
        try:
            return _scope(directive["scope"]).matches(g.name, g.kind, g.framework or "none")
        except (KeyError, TypeError, ValueError):
            return False

    def _apply_level(self, version: int, reason: str, ack: bool, fresh: bool = False) -> None:
        """Apply the level the directives add up to; ``fresh``: the directives governing this agent
        changed (a new one, even at the level it already holds, is acknowledged too)."""
        level = max((d["level"] for d in self._directives.values()), default=0)
        if version < self._applied_version:
            return  # an older document than one already applied (a push overtook a heartbeat)
        self._applied_version = version
        # On the loop, what follows the change (log, callbacks) waits until every connection that was
        # ready with this push has been read: a fleet-wide stop is enforced on all of a process's Guards
        # first.  A re-registration applies its state on a worker thread: there it runs inline.
        on_loop = _Loop.on_loop()
        old = self.guard.level
        defer = asyncio.get_running_loop().call_soon if on_loop else None
        changed = self.guard.apply_state(level, reason=reason, version=version, defer=defer, log=not on_loop)
        if changed and on_loop:
            _changes.add(self.guard.name, old, self.guard.level, reason)
        # From L5 on, _acknowledge_termination acknowledges before the terminator runs.
        if (changed or fresh) and ack and level < Level.TARGETED_TERMINATION and self._acked_version < version:
            # Held already (a second kill of a halted agent): confirmed now, when the push arrived.
            self._acknowledge(version, self.guard.applied_at if changed else time.time())

    def _apply_document(self, doc: dict[str, Any], *, ack: bool = True) -> None:
        """A full, signed state document (registration, heartbeat, stream start): authoritative."""
        if int(doc["version"]) < self._applied_version:
            return
        before = set(self._directives)
        self._directives = {d["id"]: d for d in doc.get("directives", [])}
        if doc.get("tombstoned"):
            self._directives["tombstone"] = {"id": "tombstone", "level": 5, "scope": f"agent:{self.guard.name}"}
        reason = ", ".join(f"L{d['level']} {d['scope']} ({d['id']})" for d in self._directives.values())
        self._apply_level(int(doc["version"]), reason, ack, fresh=set(self._directives) != before)

    def _apply_event(self, event: dict[str, Any]) -> None:
        directive = event.get("directive") or {}
        if event.get("type") != "directive" or not self._matches(directive):
            return
        version = int(event["version"])
        if version < self._applied_version:
            return  # replayed, or overtaken by a newer state: it must not edit the directives
        before = len(self._directives), directive["id"] in self._directives
        if event.get("op") == "add":
            self._directives[directive["id"]] = directive
        elif event.get("op") == "lift":
            self._directives.pop(directive["id"], None)
        fresh = (len(self._directives), directive["id"] in self._directives) != before
        reason = f"{event.get('op')} L{directive.get('level')} {directive.get('scope')} ({directive.get('id')})"
        self._apply_level(version, reason, ack=True, fresh=fresh)

    def _acknowledge(self, version: int, applied_at: float) -> None:
        self._acked_version = version
        if _Loop.on_loop():
            _acks.add(self, version, applied_at)
        else:  # a re-registration applies its state on a worker thread
            _Loop.get().call_soon_threadsafe(_acks.add, self, version, applied_at)

    def _acknowledge_termination(self, guard: Guard, old: int, new: int) -> None:
        """At L5+ the Guard's terminator runs right after its callbacks: acknowledge now, or never."""
        if new < Level.TARGETED_TERMINATION or old >= Level.TARGETED_TERMINATION or self.link.agent_id is None:
            return
        version = self._applied_version
        self._acked_version = version
        try:
            self.link.acknowledge(version, guard.applied_at or time.time(), timeout=2.0)
        except M99Error as exc:
            log.warning("m99 acknowledgement of termination (version %s) failed: %s", version, exc)

    # ------------------------------------------------------------------ tasks
    async def _heartbeats(self) -> None:
        while True:
            try:
                doc = await asyncio.to_thread(self.link.heartbeat)
                self._contact()
                self._apply_document(doc)
                delay = self.heartbeat_interval
            except NotFound:
                # The control plane lost this identity (a new database): register again.
                await asyncio.to_thread(self._reregister)
                delay = min(1.0, self.heartbeat_interval)
            except (M99Error, httpx.HTTPError) as exc:
                log.info("m99 heartbeat failed: %s", exc)
                delay = min(1.0, self.heartbeat_interval)  # retry soon, to recover quickly
            await asyncio.sleep(delay)

    def _register(self) -> dict[str, Any]:
        g = self.guard
        return self.link.register(
            g.name,
            g.kind,
            framework=g.framework or None,
            read_only_tools=sorted(g.read_only_tools),
            credentials=[
                {"label": c["label"], "fingerprint": c["fingerprint"], "kind": c["kind"]}
                for c in g.credential_fingerprints()
            ],
        )

    def _reregister(self) -> None:
        try:
            answer = self._register()
            # A control plane that lost this identity (a new database) counts its state versions
            # from the start again: what it says now must not be taken for stale (fail closed).
            self._applied_version = self._acked_version = -1
            self.guard.reset_version()
            self._apply_document(self.link.verify_state(answer["state"]))
        except M99Error as exc:
            log.warning("m99 re-registration failed: %s", exc)

    async def _push(self) -> None:
        backoff = 0.1

        def opened() -> None:
            nonlocal backoff
            backoff = 0.1

        while True:
            path = f"/api/agents/{self.link.agent_id}/events"
            try:
                if self._aclient is None:
                    await push.follow(self.link.url, path, self._on_push, tls=tls_context(), on_open=opened)
                else:
                    await self._push_via_proxy(path, opened)
            except asyncio.CancelledError:
                raise
            except (M99Error, httpx.HTTPError, OSError, ValueError) as exc:
                log.info("m99 push stream: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _push_via_proxy(self, path: str, opened: Callable[[], None]) -> None:
        assert self._aclient is not None
        async with self._aclient.stream("GET", path) as response:
            if response.status_code != 200:
                await response.aread()
                raise_for_answer(response)
            opened()
            await self._read_stream(response)

    async def _read_stream(self, response: httpx.Response) -> None:
        kind, data = "", b""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip().encode()
            elif not line and data:
                self._on_push(kind, data)
                kind, data = "", b""

    def _on_push(self, kind: str, data: bytes) -> None:
        if kind == "state":
            try:
                self._apply_document(self.link.verify_state(json.loads(data)))
                self._contact()
            except (ControlPlaneError, ValueError) as exc:
                log.warning("m99 ignored a state document: %s", exc)
        elif kind == "directive":
            event = _events.verify(self.link, data)
            if event is None:
                log.warning("m99 ignored a pushed event with a bad signature")
                return
            self._contact()
            self._apply_event(event)

    async def _lease(self) -> None:
        while True:
            remaining = self.last_contact + self.lease_seconds - time.monotonic()
            if remaining <= 0:
                if not self.guard.lease_lost:
                    self.connected = False
                    self.guard.set_lease_lost(
                        f"no contact with the control plane at {self.link.url} for {self.lease_seconds:g} s"
                    )
                remaining = min(1.0, self.lease_seconds)
            await asyncio.sleep(min(remaining, 0.25) if remaining < 1 else remaining - 0.5)

    def heartbeat(self) -> dict[str, Any]:
        """Send one heartbeat now and apply the state it answers with, on the sessions' loop (where the
        pushed state is applied too); the background heartbeats go on as before."""
        return _Loop.run(self._heartbeat_once(), timeout=30)

    async def _heartbeat_once(self) -> dict[str, Any]:
        doc = await asyncio.to_thread(self.link.heartbeat)
        self._contact()
        self._apply_document(doc)
        return doc

    # ------------------------------------------------------------------ async twins
    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
