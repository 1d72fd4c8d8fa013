"""What the sessions of one process do together: their acknowledgements go to the control plane in
batches, and the level changes one push brings them are logged in one line.

A process may hold a Guard per framework agent, and a fleet-wide stop reaches all of them at once; done
one by one, this work would compete with the enforcement it follows.  Everything here runs on the
sessions' event loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from .errors import ControlPlaneError, M99Error
from .guard import log_change
from .guard import logger as guard_log
from .link import raise_for_answer, tls_context

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Acks", "Changes", "acks", "changes"]

log = logging.getLogger("m99.session")


class Acks:
    """The acknowledgements of every session in the process, sent together.

    A fleet-wide stop reaches every Guard of a process at once; a request per acknowledgement would
    compete for the CPU, on both ends, with the pushes still being delivered.  So they wait until the
    process's pushes have been quiet for ``QUIET`` seconds (at most ``MAX_DELAY`` after the first) and
    go ``BATCH`` to a request.  Each carries the moment its Guard applied the change, so the wait does
    not count in the time-to-halt the control plane records.  Runs on the sessions' loop only.
    """

    QUIET = 0.5
    MAX_DELAY = 2.0
    BATCH = 200  # about 50 KB: under the control plane's request body limit
    ATTEMPTS = 3

    def __init__(self) -> None:
        self._pending: list[tuple[Session, int, float]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._first = self._last = 0.0
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._users: dict[str, int] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._signing: ThreadPoolExecutor | None = None

    def add(self, session: Session, version: int, applied_at: float) -> None:
        self._pending.append((session, version, applied_at))
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        if self._timer is None:  # one timer per burst, not one per acknowledgement
            self._first = self._last
            self._timer = loop.call_at(self._last + self.QUIET, self._due)

    def _due(self) -> None:
        loop = asyncio.get_running_loop()
        due = min(self._last + self.QUIET, self._first + self.MAX_DELAY)
        if loop.time() < due:
            self._timer = loop.call_at(due, self._due)
            return
        self._flush()

    def _flush(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, []
        by_url: dict[str, list[tuple[Session, int, float]]] = {}
        for item in pending:
            by_url.setdefault(item[0].link.url, []).append(item)
        loop = asyncio.get_running_loop()
        for url, items in by_url.items():
            for start in range(0, len(items), self.BATCH):
                task = loop.create_task(self._send(url, items[start : start + self.BATCH]))
                self._sending.add(task)  # the loop holds tasks weakly
                task.add_done_callback(self._sending.discard)

    async def flush_for(self, session: Session) -> None:
        """Send ``session``'s pending acknowledgements now (it is closing)."""
        mine = [item for item in self._pending if item[0] is session]
        if mine:
            self._pending = [item for item in self._pending if item[0] is not session]
            await self._send(session.link.url, mine)

    async def _send(self, url: str, items: list[tuple[Session, int, float]]) -> None:
        # Signed on one thread (Ed25519 releases the GIL): the loop goes on reading pushes meanwhile.
        loop = asyncio.get_running_loop()
        acks = await loop.run_in_executor(self._signer(), _sign_acks, items)
        if not acks:
            return
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                client = self._client(url)
                response = await client.post("/api/acks", json={"acks": acks})
                answer = raise_for_answer(response)
                refused = [r for r in answer.get("results", ()) if not r.get("ok")]
                if refused:
                    log.warning("m99: the control plane refused %d acknowledgement(s): %s", len(refused), refused[0])
                return
            except (M99Error, httpx.HTTPError) as exc:
                # The next heartbeat still shows the control plane the state each Guard holds.
                log.warning("m99: sending %d acknowledgement(s) failed (attempt %d): %s", len(acks), attempt, exc)
                if isinstance(exc, ControlPlaneError) and 400 <= exc.status_code < 500:
                    return
                await asyncio.sleep(0.5 * attempt)

    def _signer(self) -> ThreadPoolExecutor:
        if self._signing is None:
            self._signing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m99-ack-sign")
        return self._signing

    def _client(self, url: str) -> httpx.AsyncClient:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = httpx.AsyncClient(base_url=url, timeout=10.0, verify=tls_context())
        return client

    def use(self, url: str) -> None:
        self._users[url] = self._users.get(url, 0) + 1

    async def release(self, url: str) -> None:
        """One session of ``url`` closed; the last one closes the shared client."""
        left = self._users.get(url, 1) - 1
        if left > 0:
            self._users[url] = left
            return
        self._users.pop(url, None)
        client = self._clients.pop(url, None)
        if client is not None:
            await client.aclose()


def _sign_acks(items: list[tuple[Session, int, float]]) -> list[dict[str, Any]]:
    return [s.link.signed_ack(v, t) for s, v, t in items if s.link.agent_id is not None]


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
