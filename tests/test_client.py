"""The seed SDK beyond the quick start: a persistent identity, async use, context managers, an
explicit heartbeat, and a client that registers again after closing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from m99 import M99Client, M99Error, M99KillSwitchTriggered
from m99.server import EmbeddedControlPlane
from m99.session import _Loop

from .test_session import fire as fire_at
from .test_session import wait_for


def test_a_key_file_keeps_the_agents_identity_across_restarts(embedded: EmbeddedControlPlane, tmp_path: Path) -> None:
    key_file = tmp_path / "agent.key"
    with M99Client(embedded.url, key_file=str(key_file)) as first:
        first.register("keeper", "autonomous")
        key = first.session.link.key.public_b64 if first.session else ""
    assert key_file.stat().st_mode & 0o777 == 0o600  # the private key, owner-only
    with M99Client(embedded.url, key_file=str(key_file)) as second:
        second.register("keeper", "autonomous")
        assert second.session is not None and second.session.link.key.public_b64 == key
    with M99Client(embedded.url) as stranger:  # without the file: a new key every time
        stranger.register("stranger", "autonomous")
        assert stranger.session is not None and stranger.session.link.key.public_b64 != key


def test_async_context_manager_registers_checks_and_deregisters(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    async def agent() -> str:
        async with M99Client(embedded.url) as client:
            client.register("async-bot", "autonomous")
            client.check_status()
            fire_at(admin, scope="agent:async-bot")
            for _ in range(400):
                try:
                    client.check_status()
                except M99KillSwitchTriggered:
                    return "stopped"
                await asyncio.sleep(0.005)
        return "still running"

    assert asyncio.run(agent()) == "stopped"
    assert admin.get("/api/agents/async-bot").json()["status"] == "stopped"  # deregistered on exit


def test_an_explicit_heartbeat_applies_its_state_on_the_sessions_loop(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    with M99Client(embedded.url) as client:
        client.register("beater", "autonomous")
        assert client.session is not None
        push = next(t for t in client.session._tasks if t.get_name().startswith("m99-push"))
        _Loop.get().call_soon_threadsafe(push.cancel)  # no push: only the heartbeat can tell it
        wait_for(push.done)
        fire_at(admin, scope="agent:beater")
        client.check_status()  # not told yet
        seen = []
        client.guard.on_change(lambda guard, old, new: seen.append(_Loop.on_loop()))  # type: ignore[union-attr]
        doc = client.heartbeat()
        assert doc["level"] == 3 and seen == [True]
        with pytest.raises(M99KillSwitchTriggered):
            client.check_status()


def test_a_closed_client_may_register_again(embedded: EmbeddedControlPlane) -> None:
    client = M99Client(embedded.url)
    with pytest.raises(M99Error, match="not registered"):
        client.heartbeat()
    client.register("again", "autonomous")
    with pytest.raises(M99Error, match="already registered"):
        client.register("again", "autonomous")
    client.close()
    client.close()  # idempotent
    client.register("again", "autonomous")
    assert client.heartbeat()["agent"] == "again"
    client.close()
