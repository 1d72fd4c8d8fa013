"""The operators' feed (`GET /api/events`): every change pushed as it happens, to a token holder only."""

from __future__ import annotations

import json
import queue
import threading
import time

import httpx

from m99.link import ControlLink
from m99.server import EmbeddedControlPlane

from .receipts import halted


def listen(url: str, token: str, into: queue.Queue[dict], stop: threading.Event) -> None:
    try:
        with httpx.stream("GET", f"{url}/api/events", headers={"Authorization": f"Bearer {token}"}, timeout=30) as r:
            kind = ""
            for line in r.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    into.put({"event": kind, **json.loads(line[5:])})
    except httpx.TransportError:
        if not stop.is_set():  # the server going away at the end of the test is expected; earlier is not
            raise


def next_change(events: queue.Queue[dict], kind: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if event["event"] == "change" and kind in event["kinds"]:
            return event


def test_every_change_reaches_the_feed_as_it_happens(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    assert httpx.get(f"{embedded.url}/api/events", timeout=5).status_code == 401
    events: queue.Queue[dict] = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(target=listen, args=(embedded.url, embedded.token, events, stop), daemon=True)
    reader.start()
    hello = events.get(timeout=5)
    assert hello["event"] == "hello" and hello["role"] == "fleet"
    link = ControlLink(embedded.url)
    link.register("watched")
    started = time.monotonic()
    assert next_change(events, "agents")["kinds"]
    auth = admin.post("/api/arm", json={"by": "a@example.com", "reason": "r", "scope": "agent:watched"}).json()
    next_change(events, "authorizations")
    result = admin.post("/api/execute", json={"authorization_id": auth["id"]}).json()
    change = next_change(events, "directives")
    assert change["version"] == result["version"]
    link.acknowledge(result["version"], time.time(), receipt=halted())
    next_change(events, "executions")  # a confirmed halt: the execution's record changed
    assert time.monotonic() - started < 5
    stop.set()
