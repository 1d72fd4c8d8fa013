"""The control plane's push stream: each agent's Server-Sent Events connection.

A fleet-wide stop writes one event to every connection at once, so the per-event path is kept short:
the event's frame is built once per publication, each connection waits on its own queue (a slow
reader never holds up the others) and writes straight to the ASGI ``send``; one task per
connection watches for the client going away, and one task for the whole hub sends keep-alives.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response

from ..control import Agent, ControlPlane
from ..crypto import canonical_json

__all__ = ["EventStream", "PushHub"]

QUEUE_SIZE = 1000  # events a stuck reader may fall behind by; beyond, it repairs at its next heartbeat
KEEPALIVE_SECONDS = 15.0  # the agents treat 45 s of silence as a dead stream
_KEEPALIVE = b": keep-alive\n\n"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class PushHub:
    """Per-agent queues of Server-Sent Events frames; ``publish`` is ``ControlPlane.subscribe``'s listener."""

    def __init__(self) -> None:
        self.queues: dict[str, set[asyncio.Queue[bytes | None]]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The server's loop: the queues belong to it, and publications from other threads go through it."""
        self.loop, self._thread = loop, threading.current_thread()

    def add(self, name: str) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.queues.setdefault(name, set()).add(queue)
        return queue

    def remove(self, name: str, queue: asyncio.Queue[bytes | None]) -> None:
        group = self.queues.get(name)
        if group is not None:
            group.discard(queue)
            if not group:
                del self.queues[name]

    def publish(self, payload: bytes, names: list[str]) -> None:
        frame = b"event: directive\ndata: " + payload + b"\n\n"
        if self.loop is not None and threading.current_thread() is not self._thread:
            self.loop.call_soon_threadsafe(self._deliver, frame, names)
        else:
            self._deliver(frame, names)

    def _deliver(self, frame: bytes, names: list[str]) -> None:
        queues = self.queues
        for name in names:
            for queue in queues.get(name, ()):
                with contextlib.suppress(asyncio.QueueFull):  # a stuck client repairs at its next heartbeat
                    queue.put_nowait(frame)

    async def keep_alive(self, period: float = KEEPALIVE_SECONDS) -> None:
        """Send every connection a comment each ``period``, so readers and proxies see it alive."""
        while True:
            await asyncio.sleep(period)
            for group in list(self.queues.values()):
                for queue in list(group):
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(_KEEPALIVE)

    @property
    def connections(self) -> int:
        return sum(len(q) for q in self.queues.values())


class EventStream(Response):
    """The response of ``GET /api/agents/{id}/events``: the agent's signed state document first, then
    every event published for it, until the agent goes away."""

    def __init__(self, cp: ControlPlane, hub: PushHub, agent: Agent) -> None:
        super().__init__(media_type="text/event-stream")
        self.cp, self.hub, self.agent = cp, hub, agent

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        name = self.agent.name
        # Subscribe before the state document is taken, so no event falls between the two.
        queue = self.hub.add(name)
        watcher = asyncio.ensure_future(self._watch(receive, queue))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            state = b"event: state\ndata: " + canonical_json(self.cp.signed_state(self.agent)) + b"\n\n"
            await send({"type": "http.response.body", "body": state, "more_body": True})
            while True:
                frame = await queue.get()
                if frame is None:
                    break
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        finally:
            watcher.cancel()
            self.hub.remove(name, queue)

    @staticmethod
    async def _watch(receive: Callable[[], Awaitable[Any]], queue: asyncio.Queue[bytes | None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        while True:  # wake the writer: the client is gone
            try:
                queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                queue.get_nowait()
