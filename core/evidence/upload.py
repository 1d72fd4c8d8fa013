"""The agents' evidence, uploaded after the kill: built, signed and sent off the enforcement path.

A kill is enforced first and acknowledged first; the evidence its Guard captured before applying it
is turned into a signed document on a worker thread and sent to ``POST /api/evidence`` in batches,
one request at a time per control plane.  A failed upload is logged, retried a few times, never
raised into the host.  At L5+ the process is about to end: ``send_now`` uploads synchronously.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from ..crypto import canonical_json
from ..effects import Capture, evidence
from ..errors import ControlPlaneError, M99Error
from ..fleet import acks as _acks
from ..http import raise_for_answer, verify_for
from ..protocol import sign_request

if TYPE_CHECKING:
    from ..guard import Guard
    from ..link import ControlLink

__all__ = ["MAX_DOCUMENT", "Uploads", "signed_evidence", "uploads"]

log = logging.getLogger("m99.session")

MAX_DOCUMENT = 48 * 1024  # bytes of one agent's evidence (the control plane takes 64 KiB a request)
BATCH_BYTES = 56 * 1024
QUIET = 0.3  # seconds without acknowledgements in flight before evidence is built and sent


def signed_evidence(link: ControlLink, guard: Guard, taken: Capture, execution_ids: list[str]) -> dict[str, Any]:
    """One agent's signed evidence for ``POST /api/evidence``, trimmed (oldest calls first) to fit."""
    doc = evidence(guard, taken, execution_ids=execution_ids, fingerprint_key=link.key.derive("evidence-fingerprints"))
    effects = doc["side_effects"]
    while len(canonical_json(doc)) > MAX_DOCUMENT and (effects["completed"] or effects["in_flight"]):
        if effects["completed"]:
            effects["completed"] = effects["completed"][len(effects["completed"]) // 4 + 1 :]
        else:
            effects["in_flight"] = effects["in_flight"][len(effects["in_flight"]) // 4 + 1 :]
        effects["trimmed"] = True
    if len(canonical_json(doc)) > MAX_DOCUMENT:
        doc["snapshot"] = {"trimmed": True, "agent": guard.name}
    agent_id = link.agent_id or ""
    body = sign_request(link.key, "evidence", agent_id, {"ts": time.time(), "evidence": doc})
    return {"agent_id": agent_id, **body}


Item = tuple["ControlLink", "Guard", Capture, list[str]]


class Uploads:
    """Every session's evidence of the process, sent in batches after the acknowledgements."""

    ATTEMPTS = 3

    def __init__(self) -> None:
        self._pending: dict[str, list[Item]] = {}
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._signing: ThreadPoolExecutor | None = None

    def add(self, link: ControlLink, guard: Guard, taken: Capture, execution_ids: list[str]) -> None:
        """On the sessions' loop: queue one agent's evidence."""
        url = link.url
        self._pending.setdefault(url, []).append((link, guard, taken, execution_ids))
        if url not in self._busy:
            self._busy[url] = asyncio.get_running_loop().create_task(self._drain(url))

    async def _drain(self, url: str) -> None:
        try:
            # The acknowledgements of the same kill go first, and the pushes still arriving are applied
            # before this process spends time on evidence (the freeze never waits for it).
            await asyncio.sleep(QUIET)
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < QUIET:
                if _acks.busy():
                    quiet_since = time.monotonic()
                await asyncio.sleep(0.02)
            while self._pending.get(url):
                items, self._pending[url] = self._pending[url], []
                loop = asyncio.get_running_loop()
                try:
                    docs = await loop.run_in_executor(self._signer(), _sign_all, items)
                except RuntimeError:  # the interpreter is shutting down
                    docs = _sign_all(items)
                # A client per round, closed after it: no pooled connection outlives a control plane that
                # went away (a restarted one on the same address must not inherit it).
                async with httpx.AsyncClient(base_url=url, timeout=10.0, verify=verify_for(url)) as client:
                    for batch in _batches(docs):
                        await self._send(client, batch)
        except Exception as exc:  # observation never crashes the host
            log.warning("m99: evidence upload failed: %s", exc or type(exc).__name__)
        finally:
            self._busy.pop(url, None)

    async def _send(self, client: httpx.AsyncClient, batch: list[dict[str, Any]]) -> None:
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                raise_for_answer(await client.post("/api/evidence", json={"items": batch}))
                return
            except (M99Error, httpx.HTTPError) as exc:
                log.warning("m99: sending %d evidence document(s) failed (attempt %d): %s", len(batch), attempt, exc)
                if isinstance(exc, ControlPlaneError) and 400 <= exc.http_status < 500:
                    return
                await asyncio.sleep(0.2 * attempt)

    async def drain(self, timeout: float) -> None:
        """What is queued or in flight, sent (the interpreter is exiting)."""
        busy = list(self._busy.values())
        if busy:
            await asyncio.wait(busy, timeout=timeout)

    def _signer(self) -> ThreadPoolExecutor:
        if self._signing is None:
            self._signing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m99-evidence")
        return self._signing


def send_now(link: ControlLink, guard: Guard, taken: Capture, execution_ids: list[str], timeout: float) -> None:
    """Upload one agent's evidence synchronously (at L5+, before the terminator runs)."""
    try:
        doc = signed_evidence(link, guard, taken, execution_ids)
        link._call("POST", "/api/evidence", json={"items": [doc]}, timeout=timeout)
    except Exception as exc:
        log.warning("m99: evidence upload before termination failed: %s", exc or type(exc).__name__)


def _sign_all(items: list[Item]) -> list[dict[str, Any]]:
    out = []
    for link, guard, taken, ids in items:
        if link.agent_id is None:
            continue
        try:
            out.append(signed_evidence(link, guard, taken, ids))
        except Exception as exc:
            log.warning("m99: evidence of %s not built: %s", guard.name, exc or type(exc).__name__)
    return out


def _batches(docs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    batches: list[list[dict[str, Any]]] = []
    size = 0
    for doc in docs:
        n = len(canonical_json(doc))
        if not batches or size + n > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(doc)
        size += n
    return batches


uploads = Uploads()
