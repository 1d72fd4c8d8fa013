"""A Guard's session with the control plane: registration, signed heartbeats, the pushed state stream
(Server-Sent Events), acknowledgements, the lease, and a clean end.

One background thread per process runs an event loop for every session, so a process can hold many
Guards (one per framework agent) without a thread each.  The Guard itself never waits on any of this:
it answers from memory, and this module changes its state.

An agent's ordinary life ends cleanly: at a normal interpreter exit (and at SIGTERM, when nobody else
handles it) every open session sends its pending acknowledgements and deregisters, so the dead man's
switch is left for crashes and hangs.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from . import effects, network, push
from .errors import ControlPlaneError, M99Error, NotFound, RateLimited
from .evidence import upload as _evidence
from .fleet import acks as _acks
from .fleet import changes as _changes
from .guard import Guard
from .http import raise_for_answer, tls_context, verify_for
from .levels import Level
from .link import ControlLink, ServerKeyMismatch, agent_key_path
from .session_shared import _events, _Loop, _proxied, _scope, stop_reason

log = logging.getLogger("m99.session")

T = TypeVar("T")

REGISTER_PATIENCE = 30.0  # seconds a rate-limited registration keeps retrying
CLOSE_TIMEOUT = 3.0  # seconds closing a session may take before it gives up waiting


# -- the end of a process ---------------------------------------------------------------------------------

_open: weakref.WeakSet[Session] = weakref.WeakSet()
_exit_hooked = False
_exit_lock = threading.Lock()


def _at_exit() -> None:
    """A normal interpreter exit: acknowledgements out, then every open session deregisters."""
    sessions = list(_open)
    if not sessions:
        return
    try:
        _Loop.run(_acks.drain(CLOSE_TIMEOUT), timeout=CLOSE_TIMEOUT + 1)
        _Loop.run(_evidence.uploads.drain(1.0), timeout=2.0)
    except Exception as exc:  # never let the exit of the host hang or fail because of M99
        log.warning("m99: acknowledgements at exit: %s", exc or type(exc).__name__)
    for session in sessions:
        session.close()


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM nobody else handles: a clean exit (the default action would skip the atexit handlers and
    leave the agent to the dead man's switch).  When M99 itself is terminating the process (L5/L6), the
    default action, as intended: no deregistration, the name stays tombstoned."""
    if any(session.guard.terminating for session in list(_open)):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    sys.exit(128 + signum)


def _hook_exit() -> None:
    global _exit_hooked
    with _exit_lock:
        if _exit_hooked:
            return
        _exit_hooked = True
    atexit.register(_at_exit)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


class Session:
    """Connects ``guard`` to the control plane at ``url`` (one URL, or several replicas) and keeps its
    state current.  ``key_file`` keeps the agent's identity across restarts (default: a file per name in
    the agent key directory, see ``m99.link.agent_key_path``)."""

    def __init__(
        self,
        guard: Guard,
        url: str | Sequence[str],
        *,
        key_file: str | Path | None = None,
        lease_seconds: float | None = None,
        heartbeat_interval: float | None = None,
        server_public_key: str | None = None,
        enrol_token: str | None = None,
    ) -> None:
        self.guard = guard
        self.link = ControlLink(
            url,
            key_file=key_file or agent_key_path(guard.name),
            server_public_key=server_public_key,
            enrol_token=enrol_token,
        )
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
        self._untrusted = False
        self._evidenced: set[str] = set()  # the executions whose evidence this session sent
        guard.on_change(self._acknowledge_termination)
        guard.on_frameworks(self._frameworks_changed)
        self.policy_reports: Any = None
        self._fleet: Any = None  # the spend whose fleet budget this session leases for (m99.policy.lease)
        self._policy_held = False  # a policy's L3 is among the directives that hold this agent
        if guard.policy is not None:  # its KILLSWITCH.md transitions, reported once enforced
            from .policy.report import PolicyReporter

            send = lambda body: self.link.send_signed("policy", "policy", body)  # noqa: E731
            self.policy_reports = PolicyReporter(send, guard.policy, _Loop.get)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> Session:
        """Register (blocking, so a refusal such as a tombstone raises here) and start the heartbeat,
        push and lease tasks."""
        for host, port in self.link.host_ports:
            network.allow_destination(host, port)
        answer = self._register(patience=REGISTER_PATIENCE)
        self.heartbeat_interval = self._interval_override or float(answer["heartbeat_interval"])
        self.lease_seconds = self._lease_override or float(answer["lease_seconds"])
        self._apply_document(self.link.verify_state(answer["state"]), ack=False)
        self._contact()
        self._bind_fleet()
        _Loop.run(self._start_tasks(), timeout=10)
        _open.add(self)
        _hook_exit()
        return self

    def _bind_fleet(self) -> None:
        """A fleet-wide daily budget (cost_limit_daily_scope) leases its chunks through this session's
        signed requests; the first session of the process to start does it for every one of them."""
        gate = self.guard.policy
        spend = gate.engine.spend if gate is not None else None
        fleet = getattr(spend, "fleet", None)
        if spend is None or fleet is None or fleet.bound:
            return
        link = self.link

        def send(fields: dict[str, Any], timeout: float) -> dict[str, Any]:
            return link.verify_state(link.send_signed_once("budget", "budget", fields, timeout=timeout))

        spend.reopen()
        fleet.bind(send)
        self._fleet = spend
        fleet.sync()  # a restart takes up this agent's grant and spend of the day (Spend.synced)

    async def _start_tasks(self) -> None:
        if _proxied(self.link.url):
            self._aclient = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=45.0), verify=verify_for(self.link.url))
        _acks.use(self)
        loop = asyncio.get_running_loop()
        for name, coro in (("heartbeat", self._heartbeats()), ("push", self._push()), ("lease", self._lease())):
            task = loop.create_task(coro, name=f"m99-{name}-{self.guard.name}")
            self._tasks.append(task)

    def close(self, *, deregister: bool = True) -> None:
        """Stop the background work, send what is pending and deregister (never longer than a few
        seconds, and never raising: closing must not crash or hang the host)."""
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        self.guard.remove_on_change(self._acknowledge_termination)
        self.guard.remove_on_frameworks(self._frameworks_changed)
        try:
            _Loop.run(self._stop_tasks(), timeout=CLOSE_TIMEOUT + 1)
        except Exception as exc:
            log.warning("m99 session close: %s", exc or type(exc).__name__)
        if self._fleet is not None:
            if deregister and not self.guard.terminating:
                self._fleet.give_back(CLOSE_TIMEOUT)  # the unspent grant goes back to the fleet (never raises)
            self._fleet.fleet.bind(None)
        if deregister and self.link.agent_id is not None and not self.guard.terminating:
            try:
                self.link.deregister(timeout=CLOSE_TIMEOUT)
            except M99Error as exc:
                log.warning("m99 deregister failed: %s", exc)
        self.link.close()
        network.retire(self.guard)

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT)
        await _acks.flush_for(self, CLOSE_TIMEOUT)
        if self.policy_reports is not None and self.policy_reports.pending:
            try:
                await asyncio.wait_for(self.policy_reports.flush(), CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("m99: %d policy reports not sent at close", len(self.policy_reports.pending))
        await _acks.release(self)
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
            return _scope(directive["scope"]).matches(g.name, g.kind, g.frameworks)
        except (KeyError, TypeError, ValueError):
            return False

    def _apply_level(self, version: int, ack: bool, fresh: bool = False) -> None:
        """Apply the level the directives add up to; ``fresh``: the directives governing this agent
        changed (a new one, even at the level it already holds, is acknowledged too)."""
        level = max((int(d["level"]) for d in self._directives.values()), default=0)
        if version < self._applied_version:
            return  # an older document than one already applied (a push overtook a heartbeat)
        self._applied_version = version
        reason = stop_reason(list(self._directives.values()))
        # On the loop, what follows the change (log, callbacks) waits until every connection that was
        # ready with this push has been read: a fleet-wide stop is enforced on all of a process's Guards
        # first.  A state applied on another thread (registration, an explicit heartbeat) runs inline.
        on_loop = _Loop.on_loop()
        old = self.guard.level
        defer = asyncio.get_running_loop().call_soon if on_loop else None
        changed = self.guard.apply_state(level, reason=reason, version=version, defer=defer, log=not on_loop)
        if changed and on_loop:
            _changes.add(self.guard.name, old, self.guard.level, reason)
        if self.guard.policy is not None:  # an operator's restore of the policy's L3 resumes the policy
            held = any(d.get("origin") == "policy" for d in self._directives.values())
            if self._policy_held and not held:
                self.guard.policy.lifted_by_operator()
            self._policy_held = held
        if changed and self.guard.level > old and level < Level.TARGETED_TERMINATION:
            self._send_evidence(on_loop)
        # From L5 on, _acknowledge_termination acknowledges before the terminator runs.
        if (changed or fresh) and ack and level < Level.TARGETED_TERMINATION and self._acked_version < version:
            # Held already (a second kill of a halted agent): confirmed now, when the push arrived.
            self._acknowledge(version, self.guard.applied_at if changed else time.time())

    def _apply_document(self, doc: dict[str, Any], *, ack: bool = True) -> None:
        """A full, signed state document (registration, heartbeat, stream start): authoritative."""
        epoch = str(doc.get("epoch") or "")
        if epoch and self.link.epoch and epoch != self.link.epoch:
            # The same control plane (its key is pinned) on a new database: its versions start again.
            log.warning("m99: %s: the control plane's database is new; taking its state", self.guard.name)
            self._applied_version = self._acked_version = -1
            self.guard.reset_version()
        if epoch:
            self.link.epoch = epoch
        if int(doc["version"]) < self._applied_version:
            return
        before = set(self._directives)
        self._directives = {d["id"]: d for d in doc.get("directives", [])}
        if doc.get("tombstoned"):
            self._directives["tombstone"] = {"id": "tombstone", "level": 5, "scope": f"agent:{self.guard.name}"}
        self._apply_level(int(doc["version"]), ack, fresh=set(self._directives) != before)

    def _apply_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "policy":  # an operator's act on the agent's KILLSWITCH.md (m99 policy)
            if self.guard.policy is not None:
                self.guard.policy.command(event, agent_id=self.link.agent_id)
            return
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
        self._apply_level(version, ack=True, fresh=fresh)

    def receipt(self) -> dict[str, Any]:
        """The positive checks an acknowledgement carries (``m99.effects.receipt``)."""
        return effects.receipt(self.guard, self.link.key.derive("evidence-fingerprints"))

    def _new_executions(self) -> list[str]:
        ids = {str(d["execution_id"]) for d in self._directives.values() if d.get("execution_id")}
        fresh = sorted(ids - self._evidenced)
        self._evidenced |= ids
        return fresh

    def _send_evidence(self, on_loop: bool) -> None:
        """The evidence the Guard captured before this kill, uploaded after it (never awaited here)."""
        taken, ids = self.guard.captured, self._new_executions()
        if taken is None or not ids or self.link.agent_id is None:
            return
        if on_loop:
            _evidence.uploads.add(self.link, self.guard, taken, ids)
        else:
            _Loop.get().call_soon_threadsafe(_evidence.uploads.add, self.link, self.guard, taken, ids)

    def _acknowledge(self, version: int, applied_at: float) -> None:
        self._acked_version = version
        if _Loop.on_loop():
            _acks.add(self, version, applied_at)
        else:  # a state applied on another thread
            _Loop.get().call_soon_threadsafe(_acks.add, self, version, applied_at)

    def _acknowledge_termination(self, guard: Guard, old: int, new: int) -> None:
        """At L5+ the Guard's terminator runs right after its callbacks: acknowledge now, or never."""
        if new < Level.TARGETED_TERMINATION or old >= Level.TARGETED_TERMINATION or self.link.agent_id is None:
            return
        version = self._applied_version
        self._acked_version = version
        try:
            self.link.acknowledge(version, guard.applied_at or time.time(), receipt=self.receipt(), timeout=2.0)
        except M99Error as exc:
            log.warning("m99 acknowledgement of termination (version %s) failed: %s", version, exc)
        taken, ids = guard.captured, self._new_executions()
        if taken is not None and ids:
            _evidence.send_now(self.link, guard, taken, ids, timeout=1.0)

    def _frameworks_changed(self, guard: Guard) -> None:
        """An adapter installed into another framework: tell the control plane now, not at the next beat."""
        if self._closed or not self._tasks:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._heartbeat_quietly(), _Loop.get())
        except RuntimeError:  # the loop is gone (interpreter exit)
            pass

    async def _heartbeat_quietly(self) -> None:
        try:
            await self._heartbeat_once()
        except (M99Error, httpx.HTTPError) as exc:
            log.info("m99 heartbeat failed: %s", exc)

    # ------------------------------------------------------------------ tasks
    async def _heartbeats(self) -> None:
        while True:
            try:
                await self._heartbeat_once()
                delay = self.heartbeat_interval
            except NotFound:
                # The control plane lost this identity (a new database, or it was forgotten): register
                # again with the same key, which resumes it.
                await asyncio.to_thread(self._reregister)
                delay = min(1.0, self.heartbeat_interval)
            except ServerKeyMismatch as exc:
                self._distrust(exc)
                delay = min(5.0, self.heartbeat_interval)
            except (M99Error, httpx.HTTPError) as exc:
                log.info("m99 heartbeat failed: %s", exc)
                self.link.failover()
                delay = min(1.0, self.heartbeat_interval)  # retry soon, to recover quickly
            await asyncio.sleep(delay)

    def _distrust(self, exc: ServerKeyMismatch) -> None:
        """Another server answers at this URL: no contact counts (the lease runs out, fail closed)."""
        if not self._untrusted:
            self._untrusted = True
            log.error("m99: %s: %s", self.guard.name, exc)

    def _register(self, patience: float = 0.0) -> dict[str, Any]:
        g = self.guard
        deadline = time.monotonic() + patience
        while True:
            try:
                return self.link.register(
                    g.name,
                    g.kind,
                    frameworks=g.frameworks,
                    read_only_tools=sorted(g.read_only_tools),
                    credentials=[
                        {"label": c["label"], "fingerprint": c["fingerprint"], "kind": c["kind"]}
                        for c in g.credential_fingerprints()
                    ],
                    policy=f"sha256:{g.policy.digest}" if g.policy is not None and g.policy.digest else None,
                )
            except RateLimited as exc:
                if time.monotonic() + exc.retry_after > deadline:
                    raise
                time.sleep(min(exc.retry_after, 5.0))

    def _reregister(self) -> None:
        try:
            answer = self._register()
            self._apply_document(self.link.verify_state(answer["state"]))
            self._contact()
        except ServerKeyMismatch as exc:
            self._distrust(exc)
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
                headers = self.link.events_headers()
                if self._aclient is None:
                    await push.follow(
                        self.link.url,
                        path,
                        self._on_push,
                        headers=headers,
                        tls=tls_context() if self.link.url.startswith("https") else None,
                        on_open=opened,
                    )
                else:
                    await self._push_via_proxy(path, headers, opened)
            except asyncio.CancelledError:
                raise
            except (M99Error, httpx.HTTPError, OSError, ValueError) as exc:
                log.info("m99 push stream: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _push_via_proxy(self, path: str, headers: dict[str, str], opened: Callable[[], None]) -> None:
        assert self._aclient is not None
        async with self._aclient.stream("GET", self.link.url + path, headers=headers) as response:
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
        doc = await asyncio.to_thread(self.link.heartbeat, self.guard.frameworks)
        self._untrusted = False
        self._contact()
        self._apply_document(doc)
        if self.policy_reports is not None and self.policy_reports.pending:
            await self.policy_reports.flush()
        return doc

    # ------------------------------------------------------------------ async twins
    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
