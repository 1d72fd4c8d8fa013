"""Signed heartbeats and the dead man's switch, server side."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from m99.control import Settings
from m99.crypto import SigningKey, canonical_json
from m99.errors import Conflict, NotAuthorised, NotFound
from m99.link import ControlLink
from m99.server import EmbeddedControlPlane, build

from .test_session import wait_for


def raw_heartbeat(link: ControlLink, seq: int, ts: float, key: SigningKey | None = None) -> httpx.Response:
    body = {"seq": seq, "ts": ts}
    message = canonical_json({"type": "heartbeat", "agent_id": link.agent_id, **body})
    body["signature"] = (key or link.key).sign(message)
    return httpx.post(f"{link.url}/api/agents/{link.agent_id}/heartbeat", json=body)


def rejected(admin: httpx.Client, at_least: int = 1) -> list[dict]:
    """The audited heartbeat refusals: written apart from the refused request, within a moment."""

    def found() -> list[dict]:
        return [e for e in admin.get("/api/audit", params={"limit": 1000}).json() if e["kind"] == "heartbeat.rejected"]

    wait_for(lambda: len(found()) >= at_least)
    return found()


def test_good_heartbeats_are_accepted_and_answer_with_signed_state(embedded: EmbeddedControlPlane) -> None:
    link = ControlLink(embedded.url)
    link.register("a")
    for _ in range(3):
        state = link.heartbeat()  # verify_state checks the server's signature
    assert state["level"] == 0 and state["agent"] == "a"


def test_forged_heartbeat_is_rejected_and_audited(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    link = ControlLink(embedded.url)
    link.register("a")
    r = raw_heartbeat(link, 1, time.time(), key=SigningKey.generate())
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_signature"
    assert rejected(admin)[-1]["data"]["reason"] == "bad signature"


def test_replayed_and_out_of_order_heartbeats_are_rejected(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    link = ControlLink(embedded.url)
    link.register("a")
    assert raw_heartbeat(link, 5, time.time()).status_code == 200
    replay = raw_heartbeat(link, 5, time.time())
    older = raw_heartbeat(link, 4, time.time())
    assert replay.status_code == 409 and older.status_code == 409
    assert replay.json()["error"]["code"] == "replayed"
    # One entry for the burst from this source: the rest of it is folded in (counted when its window ends).
    assert [e["data"]["seq"] for e in rejected(admin)] == [5]


def test_stale_heartbeat_is_rejected(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    link = ControlLink(embedded.url)
    link.register("a")
    r = raw_heartbeat(link, 1, time.time() - 3600)
    assert r.status_code == 409 and r.json()["error"]["code"] == "stale"
    assert "skew" in rejected(admin)[-1]["data"]["reason"]


def test_unknown_and_superseded_agents(embedded: EmbeddedControlPlane) -> None:
    link = ControlLink(embedded.url)
    link.register("a")
    old_id = link.agent_id
    newer = ControlLink(embedded.url, key=link.key)
    newer.register("a")  # a restarted agent: same key, new registration and incarnation
    link.agent_id = old_id
    with pytest.raises(NotFound):
        link.heartbeat()
    newer.heartbeat()
    unknown = httpx.get(f"{embedded.url}/api/agents/agt_nope/state")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_agent"


def test_dead_mans_switch_fires_on_silence(tmp_path: Path) -> None:
    settings = Settings(heartbeat_interval=0.2, missed_heartbeats=3, deadman_level=3)
    with EmbeddedControlPlane(tmp_path / "d", settings=settings) as cp:
        admin = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"})
        silent, alive = ControlLink(cp.url), ControlLink(cp.url)
        silent.register("silent")
        alive.register("alive")
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:
            alive.heartbeat()
            time.sleep(0.1)
        assert silent.fetch_state()["level"] == 3
        assert alive.fetch_state()["level"] == 0
        entries = admin.get("/api/audit", params={"limit": 1000}).json()
        kinds = [e["kind"] for e in entries]
        evidence = kinds.index("deadman.evidence")
        assert evidence < kinds.index("execution.started")  # evidence first
        started = next(e for e in entries if e["kind"] == "execution.started")
        assert started["data"]["origin"] == "deadman" and started["data"]["scope"] == "agent:silent"
        assert started["data"]["last_heartbeat"]["last_seq"] == 0
        assert admin.get("/api/agents/silent").json()["status"] == "silent"
        # Fires once per silence, not every round.
        time.sleep(0.5)
        fired_for_silent = [
            e
            for e in admin.get("/api/audit", params={"limit": 1000}).json()
            if e["kind"] == "deadman.evidence" and e["data"]["agent"] == "silent"
        ]
        assert len(fired_for_silent) == 1
        # The agent comes back: it is alive again but stays frozen until an operator restores it.
        silent.heartbeat()
        wait_for(lambda: admin.get("/api/agents/silent").json()["status"] == "active")  # at the next group commit
        assert silent.fetch_state()["level"] == 3
        admin.close()


def test_silence_is_counted_from_when_the_server_serves_not_from_before(tmp_path: Path) -> None:
    settings = Settings(heartbeat_interval=0.2, missed_heartbeats=2, deadman_level=3)
    cp = build(tmp_path / "d", settings)
    try:
        cp.register(ControlLink("http://127.0.0.1:9").registration_body("early"))
        time.sleep(0.6)  # longer than the window: what loading the web framework can take on a busy host
        cp.serving()
        assert cp.check_deadman() == []  # no agent could have reached a server not yet listening
        time.sleep(0.5)
        assert [r["scope"] for r in cp.check_deadman()] == ["agent:early"]  # now it really is silent
    finally:
        cp.close()


def test_link_errors_map_to_classes(embedded: EmbeddedControlPlane) -> None:
    link = ControlLink(embedded.url)
    link.register("a")
    link._seq = 10
    link.heartbeat()
    link._seq = 3
    with pytest.raises(Conflict):
        link.heartbeat()
    link.key = SigningKey.generate()
    link._seq = 100
    with pytest.raises(NotAuthorised):
        link.heartbeat()
