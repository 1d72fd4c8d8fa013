"""The control plane's push stream: each agent's Server-Sent Events connection.

A fleet-wide stop writes one event to every connection at once, so the per-event path is kept short:
the event's frame is built once per publication, each connection waits on its own queue (a slow
reader never holds up the others) and writes straight to the ASGI ``send``; one task per connection
watches for the client going away, and one task for the whole hub sends keep-alives.

An agent has one stream: opening it needs the agent's signature, and a new one replaces the old.
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
from ..protocol import KEEPALIVE_FRAME, event_frame

__all__ = ["EventStream", "OperatorHub", "OperatorStream", "PushHub"]

QUEUE_SIZE = 1000  # events a stuck reader may fall behind by; beyond, it repairs at its next heartbeat
KEEPALIVE_SECONDS = 15.0  # the agents treat 45 s of silence as a dead stream
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

Queue = asyncio.Queue[bytes | None]


class PushHub:
    """Per-agent queues of Server-Sent Events frames; ``publish`` is the control plane's push listener."""

    def __init__(self) -> None:
        self.queues: dict[str, Queue] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.replaced = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The server's loop: the queues belong to it, and publications from other threads go through it."""
        self.loop, self._thread = loop, threading.current_thread()

    def add(self, name: str) -> Queue:
        """The agent's new stream; an older one of the same agent is told to end."""
        queue: Queue = asyncio.Queue(maxsize=QUEUE_SIZE)
        old = self.queues.get(name)
        self.queues[name] = queue
        if old is not None:
            self.replaced += 1
            _close(old)
        return queue

    def remove(self, name: str, queue: Queue) -> None:
        if self.queues.get(name) is queue:
            del self.queues[name]

    def publish(self, payload: bytes, names: list[str]) -> None:
        frame = event_frame("directive", payload)
        if self.loop is not None and threading.current_thread() is not self._thread:
            self.loop.call_soon_threadsafe(self._deliver, frame, names)
        else:
            self._deliver(frame, names)

    def _deliver(self, frame: bytes, names: list[str]) -> None:
        queues = self.queues
        for name in names:
            queue = queues.get(name)
            if queue is not None:
                with contextlib.suppress(asyncio.QueueFull):  # a stuck client repairs at its next heartbeat
                    queue.put_nowait(frame)

    async def keep_alive(self, period: float = KEEPALIVE_SECONDS) -> None:
        """Send every connection a comment each ``period``, so readers and proxies see it alive."""
        while True:
            await asyncio.sleep(period)
            for queue in list(self.queues.values()):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(KEEPALIVE_FRAME)

    @property
    def connections(self) -> int:
        return len(self.queues)


def _close(queue: Queue) -> None:
    """Wake a stream's writer with the end marker, dropping a queued frame if it is full."""
    while True:
        try:
            queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            queue.get_nowait()


class EventStream(Response):
    """The response of ``GET /api/agents/{id}/events``: the agent's signed state document first, then
    every event published for it, until the agent goes away or opens a newer stream."""

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
            state = event_frame("state", canonical_json(self.cp.state.signed(self.agent)))
            await send({"type": "http.response.body", "body": state, "more_body": True})
            while True:
                frame = await queue.get()
                if frame is None:
                    break
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self.hub.remove(name, queue)

    @staticmethod
    async def _watch(receive: Callable[[], Awaitable[Any]], queue: Queue) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        _close(queue)  # wake the writer: the client is gone


class OperatorHub:
    """The operators' feed as Server-Sent Events: one queue per dashboard or watcher connection."""

    MAX_CONNECTIONS = 100

    def __init__(self) -> None:
        self.queues: set[Queue] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def publish(self, payload: bytes) -> None:
        """The feed's listener; called on any thread."""
        if self.loop is None:
            return
        frame = event_frame("change", payload)
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self._deliver, frame)

    def _deliver(self, frame: bytes) -> None:
        for queue in list(self.queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(frame)

    async def ticks(self, period: float = 5.0) -> None:
        """A ``tick`` every ``period``: clients refresh what ages (heartbeats, countdowns) and see the
        stream alive; it is also the keep-alive."""
        while True:
            await asyncio.sleep(period)
            self._deliver(event_frame("tick", b'{"type":"tick"}'))


class OperatorStream(Response):
    """``GET /api/events``: a ``hello`` event, then every change of the control plane as it happens."""

    def __init__(self, hub: OperatorHub, hello: bytes) -> None:
        super().__init__(media_type="text/event-stream")
        self.hub, self.hello = hub, hello

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        queue: Queue = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.hub.queues.add(queue)
        watcher = asyncio.ensure_future(EventStream._watch(receive, queue))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": event_frame("hello", self.hello), "more_body": True})
            while True:
                frame = await queue.get()
                if frame is None:
                    break
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self.hub.queues.discard(queue)
