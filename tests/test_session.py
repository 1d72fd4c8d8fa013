"""The Guard connected to a real control plane: pushed halts in milliseconds, restore,
forged events ignored, independent Guards in one process, and the lease failing closed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from m99.errors import LeaseExpired, M99KillSwitchTriggered, ToolCallRefused
from m99.guard import Guard
from m99.protocol import sign_event
from m99.server import EmbeddedControlPlane
from m99.session import Session, _Loop

from .servers import ServeProcess


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)
    return time.monotonic() - start


def fire(admin: httpx.Client, scope: str = "global", level: int = 3) -> dict:
    auth = admin.post("/api/arm", json={"by": "a@example.com", "reason": "r", "scope": scope, "level": level}).json()
    return admin.post("/api/execute", json={"authorization_id": auth["id"]}).json()


LIVE: list[Session] = []


@pytest.fixture
def session(embedded: EmbeddedControlPlane):  # type: ignore[no-untyped-def]
    sessions = LIVE
    sessions.clear()

    def make(name: str, **kw: object) -> Guard:
        guard = Guard(name, kind=str(kw.pop("kind", "autonomous")), framework=str(kw.pop("framework", "none")), **kw)  # type: ignore[arg-type]
        sessions.append(Session(guard, embedded.url).start())
        return guard

    yield make
    for s in sessions:
        s.close()


def test_execute_reaches_the_guard_by_push(session, admin: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    guard = session("bot")
    guard.check_tool("search")
    result = fire(admin)
    waited = wait_for(lambda: guard.frozen, timeout=2)
    assert waited < 1.0  # pushed, not polled: heartbeats here are 30 s apart
    with pytest.raises(ToolCallRefused):
        guard.check_tool("search")
    with pytest.raises(M99KillSwitchTriggered):
        guard.check_status()
    # The Guard acknowledged, so the execution knows its time-to-halt.
    wait_for(lambda: admin.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]["acknowledged"] == 1)
    halt = admin.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]
    assert 0 <= halt["per_agent"]["bot"] < 1000
    admin.post("/api/restore", json={"scope": "global", "by": "a@example.com", "reason": "ok"})
    wait_for(lambda: not guard.frozen, timeout=2)
    guard.check_tool("search")


def test_two_guards_in_one_process_are_scoped_independently(session, admin: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    lc, crew = session("lc-agent", framework="langchain"), session("crew-agent", framework="crewai")
    fire(admin, scope="agent:crew-agent")
    wait_for(lambda: crew.frozen)
    time.sleep(0.2)
    assert not lc.frozen
    lc.check_tool("anything")
    fire(admin, scope="framework:langchain")
    wait_for(lambda: lc.frozen)


def test_a_second_kill_of_a_halted_agent_is_acknowledged_too(session, admin: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    guard = session("bot")
    fire(admin, scope="agent:bot")
    wait_for(lambda: guard.frozen)
    second = fire(admin, scope="global")  # the level it already holds
    execution = f"/api/executions/{second['execution_id']}"
    wait_for(lambda: admin.get(execution).json()["time_to_halt"]["acknowledged"] == 1)
    assert 0 <= admin.get(execution).json()["time_to_halt"]["per_agent"]["bot"] < 5000


def test_a_replayed_event_does_not_edit_the_directives(session, embedded: EmbeddedControlPlane) -> None:  # type: ignore[no-untyped-def]
    guard = session("bot")
    live = LIVE[-1]
    key = embedded.control.key
    base = live._applied_version

    def event(op: str, version: int, directive_id: str, level: int) -> bytes:
        directive = {"id": directive_id, "level": level, "scope": "agent:bot"}
        return sign_event(key, {"type": "directive", "op": op, "version": version, "directive": directive})

    freeze = event("add", base + 1, "dir_freeze", 3)
    live._on_push("directive", freeze)
    assert guard.level == 3
    live._on_push("directive", event("lift", base + 2, "dir_freeze", 3))
    assert guard.level == 0
    live._on_push("directive", freeze)  # the old signed bytes again
    assert guard.level == 0 and "dir_freeze" not in live._directives
    live._on_push("directive", event("add", base + 3, "dir_credentials", 1))
    assert guard.level == 1  # computed without the replayed freeze


def test_forged_push_events_are_ignored(session, embedded: EmbeddedControlPlane) -> None:  # type: ignore[no-untyped-def]
    guard = session("bot")
    live = LIVE[-1]
    impostor = Session(Guard("impostor"), embedded.url)  # signs with its own key, not the server's
    event = {
        "type": "directive",
        "op": "add",
        "version": 999,
        "directive": {"id": "dir_forged", "level": 3, "scope": "global"},
    }
    live._on_push("directive", sign_event(impostor.link.key, event))
    live._on_push("directive", b'{"event": {"type": "directive"}, "signature": "AAAA"}')
    live._on_push("directive", b"not json")
    impostor.link.close()
    assert not guard.frozen
    # The same event signed by the server's own key is obeyed: the check above could fail.
    live._on_push("directive", sign_event(embedded.control.key, event))
    assert guard.frozen


def test_lease_fails_closed_when_the_server_dies_and_recovers(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", "--heartbeat-interval", "0.3", "--missed", "3").start()
    guard = Guard("bot", kind="autonomous")
    s = Session(guard, server.url).start()
    try:
        assert s.lease_seconds == pytest.approx(0.9)
        time.sleep(0.5)
        assert not guard.frozen
        server.kill()
        killed = time.monotonic()
        wait_for(lambda: guard.frozen, timeout=5)
        assert time.monotonic() - killed <= s.lease_seconds + 1.0
        with pytest.raises(LeaseExpired):
            guard.check_status()
        server.start()  # same port, same data: the agent is still known
        wait_for(lambda: not guard.frozen, timeout=20)
        guard.check_tool("search")
    finally:
        s.close()
        server.kill()


def test_a_control_plane_restarted_on_a_fresh_database_is_obeyed(tmp_path: Path) -> None:
    # The same server identity (its key file) on an empty database: a server with another key on the
    # same address is refused by key pinning (tests/test_identity.py).
    key = ("--key-file", str(tmp_path / "server.key"))
    first = ServeProcess(tmp_path / "first", "--heartbeat-interval", "0.3", *key).start()
    guard = Guard("phoenix", kind="autonomous")
    s = Session(guard, first.url).start()
    try:
        with first.api() as api:  # state versions climb on the first database
            for _ in range(3):
                fire(api, scope="agent:phoenix")
                wait_for(lambda: guard.frozen)
                api.post("/api/restore", json={"scope": "global", "by": "a@example.com", "reason": "ok"})
                wait_for(lambda: not guard.frozen)
        first.kill()
        second = ServeProcess(tmp_path / "second", "--heartbeat-interval", "0.3", *key)
        second.port, second.url = first.port, first.url  # same address, empty database
        second.start()
        try:
            # The agent is unknown there: its next heartbeat registers it again.
            wait_for(lambda: second.api().get("/api/agents/phoenix").status_code == 200, timeout=10)
            wait_for(lambda: not guard.frozen, timeout=10)
            with second.api() as api:
                fire(api, scope="agent:phoenix")  # version 1 again: it must not be taken for stale
            wait_for(lambda: guard.frozen, timeout=5)
            with pytest.raises(ToolCallRefused):
                guard.check_tool("search")
        finally:
            second.kill()
    finally:
        s.close()


def test_a_lost_push_is_repaired_by_the_next_heartbeat(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    guard = Guard("deaf-bot", kind="autonomous")
    s = Session(guard, embedded.url, heartbeat_interval=0.3).start()
    try:
        # Cut the push stream for good (as a proxy that drops SSE would): only heartbeats remain.
        loop = _Loop.get()
        push = next(t for t in s._tasks if t.get_name().startswith("m99-push"))
        loop.call_soon_threadsafe(push.cancel)
        wait_for(push.done, timeout=5)
        fire(admin, scope="agent:deaf-bot")
        wait_for(lambda: guard.frozen, timeout=5)  # the heartbeat answer carries the signed state
        admin.post("/api/restore", json={"scope": "global", "by": "a@example.com", "reason": "ok"})
        wait_for(lambda: not guard.frozen, timeout=5)
    finally:
        s.close()
