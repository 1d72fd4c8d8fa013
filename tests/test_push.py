"""The push path end to end: the agent's stream reader against a real socket and the real control plane,
and acknowledgements sent together by many agents of one process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from m99 import push
from m99.crypto import SigningKey
from m99.errors import ControlPlaneUnreachable, NotFound
from m99.guard import Guard
from m99.link import ControlLink
from m99.server import EmbeddedControlPlane
from m99.session import Session, _proxied

from .receipts import halted


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


class RawServer:
    """A loopback socket server that answers one connection with ``script(conn)``."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.request = b""
        self._script = script
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(4096)
            with contextlib.suppress(OSError):  # the reader may hang up first: that is its right
                self._script(conn)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=5)


def follow(url: str, path: str = "/api/agents/agt_x/events", **kw: object) -> tuple[list[tuple[str, bytes]], Exception]:
    events: list[tuple[str, bytes]] = []

    async def run() -> Exception:
        try:
            await push.follow(url, path, lambda kind, data: events.append((kind, data)), **kw)  # type: ignore[arg-type]
        except Exception as exc:
            return exc
        raise AssertionError("follow() returned without an error")

    return events, asyncio.run(asyncio.wait_for(run(), 20))


def chunked(body: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


SSE = (
    b'event: state\ndata: {"a": 1}\n\n'
    b": keep-alive\n\n"
    b"event: directive\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"data:no space\n\n"
    b'id: 7\nevent: directive\ndata: {"b": 2}\n\n'
)
EXPECTED = [
    ("state", b'{"a": 1}'),
    ("directive", b"line one\nline two"),
    ("message", b"no space"),
    ("directive", b'{"b": 2}'),
]


def test_events_split_at_every_byte_are_reassembled() -> None:
    body = chunked(SSE, 7)

    def dribble(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(len(body)):
            conn.sendall(body[i : i + 1])
            time.sleep(0.0005)

    server = RawServer(dribble)
    try:
        events, error = follow(server.url)
    finally:
        server.close()
    assert events == EXPECTED
    assert isinstance(error, ControlPlaneUnreachable) and "ended the push stream" in str(error)
    assert server.request.startswith(b"GET /api/agents/agt_x/events HTTP/1.1\r\n")
    assert b"Accept: text/event-stream" in server.request


def test_a_stream_without_chunking_ends_with_the_connection() -> None:
    def once(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + SSE)

    server = RawServer(once)
    try:
        events, error = follow(server.url)
    finally:
        server.close()
    assert events == EXPECTED and isinstance(error, ControlPlaneUnreachable)


def test_a_silent_stream_is_given_up() -> None:
    def silent(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        time.sleep(3)

    server = RawServer(silent)
    try:
        started = time.monotonic()
        _, error = follow(server.url, idle_timeout=0.6)
        waited = time.monotonic() - started
    finally:
        server.close()
    assert isinstance(error, ControlPlaneUnreachable) and "silent for 0.6 s" in str(error)
    assert waited < 2.5


def test_bad_framing_is_an_error_not_an_event() -> None:
    def garbage(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\ndata: x\n\n\r\n")
        time.sleep(1)

    server = RawServer(garbage)
    try:
        events, error = follow(server.url)
    finally:
        server.close()
    assert events == [] and "push stream" in str(error)


def test_the_control_planes_refusal_comes_back_as_its_error(embedded: EmbeddedControlPlane) -> None:
    headers = {"X-M99-Timestamp": repr(time.time()), "X-M99-Signature": "AAAA"}
    events, error = follow(embedded.url, "/api/agents/agt_nobody/events", headers=headers)
    assert events == []
    assert isinstance(error, NotFound) and "unknown agent id" in str(error)


def test_the_real_stream_starts_with_the_signed_state(embedded: EmbeddedControlPlane) -> None:
    link = ControlLink(embedded.url)
    link.register("reader", "autonomous")
    seen: list[tuple[str, bytes]] = []

    async def run() -> None:
        task = asyncio.ensure_future(
            push.follow(
                embedded.url,
                f"/api/agents/{link.agent_id}/events",
                lambda k, d: seen.append((k, d)),
                headers=link.events_headers(),
            )
        )
        while not seen:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(run(), 10))
    kind, data = seen[0]
    assert kind == "state"
    assert link.verify_state(json.loads(data))["agent_id"] == link.agent_id
    with httpx.Client(base_url=embedded.url) as client:
        wait_for(lambda: metric(client, "m99_push_connections") == 0)  # the server let the reader go
    link.close()


def test_a_proxy_for_the_control_plane_sends_the_stream_through_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert not _proxied("http://cp.internal:8099")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    assert _proxied("http://cp.internal:8099")
    monkeypatch.setenv("NO_PROXY", "cp.internal")
    assert not _proxied("http://cp.internal:8099")


# -- acknowledgements ------------------------------------------------------------------------------------


def fire(admin: httpx.Client, scope: str = "global", level: int = 3) -> dict:
    auth = admin.post("/api/arm", json={"by": "a@example.com", "reason": "r", "scope": scope, "level": level}).json()
    return admin.post("/api/execute", json={"authorization_id": auth["id"]}).json()


def metric(client: httpx.Client, name: str) -> float:
    return float(client.get("/metrics").text.split(f"\n{name} ")[1].split()[0])


@pytest.fixture
def links(embedded: EmbeddedControlPlane) -> Iterator[list[ControlLink]]:
    made = [ControlLink(embedded.url) for _ in range(3)]
    for i, link in enumerate(made):
        link.register(f"acker-{i}", "autonomous")
    yield made
    for link in made:
        link.close()


def test_one_request_acknowledges_for_several_agents_and_refuses_each_bad_one(
    links: list[ControlLink], admin: httpx.Client
) -> None:
    result = fire(admin)
    version = result["version"]
    good = [link.signed_ack(version, time.time(), halted()) for link in links[:2]]
    forged = links[2].signed_ack(version, time.time(), halted())
    forged["signature"] = SigningKey.generate().sign(b"something else")
    replayed = dict(good[0])
    answer = admin.post("/api/acks", json={"acks": [*good, forged, replayed]}).json()
    outcome = [(r["ok"], r.get("error", {}).get("code")) for r in answer["results"]]
    assert outcome == [(True, None), (True, None), (False, "bad_signature"), (False, "replayed")]
    assert answer["results"][0]["executions"] == [result["execution_id"]]
    halt = admin.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]
    assert halt["acknowledged"] == 2 and set(halt["per_agent"]) == {"acker-0", "acker-1"}

    def refusals() -> list[dict]:
        return [e for e in admin.get("/api/audit", params={"limit": 1000}).json() if e["kind"] == "ack.rejected"]

    wait_for(lambda: len(refusals()) == 2)  # audited apart from the refused request, within a moment


def test_applied_at_is_signed(links: list[ControlLink], admin: httpx.Client) -> None:
    result = fire(admin)
    ack = links[0].signed_ack(result["version"], time.time(), halted())
    ack["applied_at"] -= 100  # a better time-to-halt than the agent reported
    answer = admin.post("/api/acks", json={"acks": [ack]}).json()
    assert answer["results"][0]["error"]["code"] == "bad_signature"


def test_an_ack_overtaken_by_a_later_heartbeat_still_counts(links: list[ControlLink], admin: httpx.Client) -> None:
    result = fire(admin)
    link = links[0]
    ack = link.signed_ack(result["version"], time.time(), halted())  # signed first ...
    link.heartbeat()  # ... but a heartbeat with a higher sequence number arrives first
    answer = admin.post("/api/acks", json={"acks": [ack]}).json()
    assert answer["results"][0]["ok"], answer
    link.heartbeat()  # and heartbeats go on


def test_the_guards_of_one_process_acknowledge_together(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    sessions = [Session(Guard(f"crowd-{i:02d}", kind="crowd"), embedded.url).start() for i in range(20)]
    try:
        requests_before = metric(admin, "m99_ack_requests_total")
        result = fire(admin, scope="class:crowd")
        wait_for(lambda: all(s.guard.frozen for s in sessions))
        execution = f"/api/executions/{result['execution_id']}"
        wait_for(lambda: admin.get(execution).json()["time_to_halt"]["acknowledged"] == 20)
        assert metric(admin, "m99_acks_total") >= 20
        assert metric(admin, "m99_ack_requests_total") - requests_before < 5  # not one request per Guard
        per_agent = admin.get(execution).json()["time_to_halt"]["per_agent"]
        assert all(0 <= ms < 5000 for ms in per_agent.values())
    finally:
        for s in sessions:
            s.close()


def test_a_push_to_many_guards_of_a_process_is_logged_once(
    embedded: EmbeddedControlPlane, admin: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="m99.guard")
    sessions = [Session(Guard(f"herd-{i:02d}", kind="herd"), embedded.url).start() for i in range(12)]
    try:
        fire(admin, scope="class:herd")
        wait_for(lambda: all(s.guard.frozen for s in sessions))
        wait_for(lambda: "herd-" in caplog.text)
        time.sleep(0.2)
        lines = [r.getMessage() for r in caplog.records if "herd-" in r.getMessage()]
        # Usually one line for all twelve (a push read over two loop passes gives two), never one each.
        assert len(lines) < 12, lines
        assert sum(int(line.split()[1]) if " agents " in line else 1 for line in lines) == 12
        assert any(" agents L0 -> L3 " in line for line in lines)
    finally:
        for s in sessions:
            s.close()


def test_a_closing_session_sends_its_pending_acknowledgement(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    s = Session(Guard("leaver", kind="leaver"), embedded.url).start()
    result = fire(admin, scope="agent:leaver")
    wait_for(lambda: s.guard.frozen)
    s.close()  # at once: the batch's quiet period has not passed
    halt = admin.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]
    assert halt["acknowledged"] == 1
