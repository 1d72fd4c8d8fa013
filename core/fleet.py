"""What the sessions of one process do together: their acknowledgements go to the control plane in
batches, and the level changes one push brings them are logged in one line.

A process may hold a Guard per framework agent, and a fleet-wide stop reaches all of them at once; done
one by one, this work would compete with the enforcement it follows.  Everything here runs on the
sessions' event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import httpx

from .errors import ControlPlaneError, M99Error
from .guard import log_change
from .guard import logger as guard_log
from .http import raise_for_answer, verify_for
from .link import ControlLink

__all__ = ["AckSource", "Acks", "Changes", "acks", "changes"]

log = logging.getLogger("m99.session")


class AckSource(Protocol):
    """What sends acknowledgements: a session, through its link (no import of the session module)."""

    link: ControlLink

    def receipt(self) -> dict[str, Any]: ...


Pending = tuple[AckSource, int, float]


class Acks:
    """The acknowledgements of every session in the process, sent together.

    An acknowledgement leaves at once: the first of a burst is sent on the loop's next pass, before the
    refusal it confirms can reach the framework (and a run ended by the stop then still confirms it).
    While one request is in flight to a control plane, the acknowledgements of the other Guards that a
    fleet-wide stop reached pile up and go together in the next, ``BATCH`` to a request: one request at
    a time per control plane, so they never compete with the pushes still being delivered.  Each
    carries the moment its Guard applied the change, so batching does not count in the time-to-halt.
    Runs on the sessions' loop only.
    """

    BATCH = 100  # about 50 KB with their receipts: under the control plane's request body limit
    ATTEMPTS = 3
    SIGN_INLINE = 16  # a batch this small is signed on the loop (~50 µs each)

    def __init__(self) -> None:
        self._pending: dict[str, list[Pending]] = {}
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._users: dict[str, int] = {}
        self._signing: ThreadPoolExecutor | None = None

    def busy(self) -> bool:
        """Whether acknowledgements are pending or in flight (evidence uploads wait for them)."""
        return bool(self._busy) or any(self._pending.values())

    def add(self, session: AckSource, version: int, applied_at: float) -> None:
        url = session.link.url
        self._pending.setdefault(url, []).append((session, version, applied_at))
        if url not in self._busy:
            self._start(url)

    def _start(self, url: str) -> None:
        task = asyncio.get_running_loop().create_task(self._drain_url(url))
        self._busy[url] = task

    async def _drain_url(self, url: str) -> None:
        try:
            await asyncio.sleep(0)  # the loop's next pass: acks of the same push burst go together
            while self._pending.get(url):
                items = self._pending[url][: self.BATCH]
                del self._pending[url][: self.BATCH]
                await self._send(url, items)
        finally:
            self._busy.pop(url, None)

    async def flush_for(self, session: AckSource, timeout: float) -> None:
        """Send ``session``'s pending acknowledgements now, and let those in flight arrive (it is closing)."""
        url = session.link.url
        mine = [item for item in self._pending.get(url, ()) if item[0] is session]
        try:
            async with asyncio.timeout(timeout):
                busy = self._busy.get(url)
                if busy is not None:
                    await asyncio.shield(busy)
                if mine:
                    self._pending[url] = [item for item in self._pending.get(url, ()) if item[0] is not session]
                    await self._send(url, mine)
        except TimeoutError:
            log.warning("m99: acknowledgements not sent in %g s: the control plane did not answer", timeout)

    async def drain(self, timeout: float) -> None:
        """Everything pending and in flight, sent (the interpreter is exiting)."""
        deadline = time.monotonic() + timeout
        for url in list(self._pending):
            if self._pending.get(url) and url not in self._busy:
                self._start(url)
        while self._busy and time.monotonic() < deadline:
            await asyncio.wait(list(self._busy.values()), timeout=max(0.0, deadline - time.monotonic()))

    async def _send(self, url: str, items: list[Pending]) -> None:
        if len(items) <= self.SIGN_INLINE:
            acks = _sign_acks(items)
        else:  # Ed25519 releases the GIL: the loop goes on reading pushes meanwhile
            try:
                acks = await asyncio.get_running_loop().run_in_executor(self._signer(), _sign_acks, items)
            except RuntimeError:  # executors refuse work once the interpreter is shutting down
                acks = _sign_acks(items)
        if not acks:
            return
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                response = await self._client(url).post("/api/acks", json={"acks": acks})
                answer = raise_for_answer(response)
                refused = [r for r in answer.get("results", ()) if not r.get("ok")]
                if refused:
                    log.warning("m99: the control plane refused %d acknowledgement(s): %s", len(refused), refused[0])
                return
            except (M99Error, httpx.HTTPError) as exc:
                # The next heartbeat still shows the control plane the state each Guard holds.
                log.warning("m99: sending %d acknowledgement(s) failed (attempt %d): %s", len(acks), attempt, exc)
                if isinstance(exc, ControlPlaneError) and 400 <= exc.http_status < 500:
                    return
                url = _failover(items, url)  # another replica, if the agents know of one
                await asyncio.sleep(0.2 * attempt)

    def _signer(self) -> ThreadPoolExecutor:
        if self._signing is None:
            self._signing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m99-ack-sign")
        return self._signing

    def _client(self, url: str) -> httpx.AsyncClient:
        client = self._clients.get(url)
        if client is None:
            verify = verify_for(url)
            client = self._clients[url] = httpx.AsyncClient(base_url=url, timeout=10.0, verify=verify)
        return client

    def use(self, session: AckSource) -> None:
        for url in session.link.urls:
            self._users[url] = self._users.get(url, 0) + 1

    async def release(self, session: AckSource) -> None:
        """One session closed; the last one of a control plane closes the shared client."""
        for url in session.link.urls:
            left = self._users.get(url, 1) - 1
            if left > 0:
                self._users[url] = left
                continue
            self._users.pop(url, None)
            client = self._clients.pop(url, None)
            if client is not None:
                await client.aclose()


def _failover(items: list[Pending], url: str) -> str:
    """The URL to retry at: the sessions that sent to ``url`` move to their next replica."""
    for session, _, _ in items:
        if session.link.url == url:
            session.link.failover()
    return items[0][0].link.url


def _sign_acks(items: list[Pending]) -> list[dict[str, Any]]:
    return [s.link.signed_ack(v, t, s.receipt()) for s, v, t in items if s.link.agent_id is not None]


acks = Acks()


class Changes:
    """The level changes the sessions of a process applied in one pass of their loop, logged together:
    one line for one agent (the Guard's own), one line per distinct change for a fleet of them."""

    SHOWN = 5  # names listed in a fleet's line

    def __init__(self) -> None:
        self._pending: list[tuple[str, int, int, str]] = []

    def add(self, agent: str, old: int, new: int, reason: str) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append((agent, old, new, reason))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        groups: dict[tuple[int, int, str], list[str]] = {}
        for agent, old, new, reason in pending:
            groups.setdefault((old, new, reason), []).append(agent)
        for (old, new, reason), agents in groups.items():
            if len(agents) == 1:
                log_change(agents[0], old, new, reason)
                continue
            more = len(agents) - self.SHOWN
            shown = ", ".join(agents[: self.SHOWN]) + (f" and {more} more" if more > 0 else "")
            why = f" ({reason})" if reason else ""
            guard_log.warning("m99: %d agents L%d -> L%d%s: %s", len(agents), old, new, why, shown)


changes = Changes()
