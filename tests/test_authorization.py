"""Two-phase ARM/EXECUTE: single use, expiry, scope and level binding, the ladder fired in
order, restore and lift, and roles."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from m99.link import ControlLink, agent_key_path
from m99.server import EmbeddedControlPlane

from .test_session import wait_for


def agent(
    cp: EmbeddedControlPlane, name: str, kind: str = "autonomous", framework: str = "custom", **options: object
) -> ControlLink:
    link = ControlLink(cp.url, key_file=agent_key_path(name))  # its key, kept on this host as agents do
    link.register(name, kind, framework=framework, **options)  # type: ignore[arg-type]
    return link


def arm(admin: httpx.Client, **body: object) -> dict:
    body = {"by": "admin@example.com", "reason": "test", **body}
    r = admin.post("/api/arm", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def execute(admin: httpx.Client, auth_id: str, **extra: object) -> httpx.Response:
    return admin.post("/api/execute", json={"authorization_id": auth_id, **extra})


def audit_kinds(admin: httpx.Client) -> list[dict]:
    return admin.get("/api/audit", params={"limit": 1000}).json()


def test_arm_shape_and_execute_shape(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    a, b = agent(embedded, "a"), agent(embedded, "b")
    auth = arm(admin)
    assert auth["status"] == "armed" and auth["id"].startswith("auth_") and auth["expires_at"].endswith("Z")
    assert auth["level"] == 3 and auth["scope"] == "global" and set(auth["agents_in_scope"]) == {"a", "b"}
    result = execute(admin, auth["id"]).json()
    assert result["success"] is True and result["agents_terminated"] == 2
    assert result["levels_fired"] == ["L1", "L2", "L3"] and result["execution_id"].startswith("exe_")
    assert a.fetch_state()["level"] == 3 and b.fetch_state()["level"] == 3


def test_authorisation_is_single_use(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    agent(embedded, "a")
    auth = arm(admin)
    assert execute(admin, auth["id"]).status_code == 200
    again = execute(admin, auth["id"])
    assert again.status_code == 409 and "single-use" in again.json()["error"]["message"]
    refused = [e for e in audit_kinds(admin) if e["kind"] == "execution.refused"]
    assert refused and refused[-1]["data"]["authorization_id"] == auth["id"]


def test_authorisation_expires(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    link = agent(embedded, "a")
    auth = arm(admin, window=1)
    time.sleep(1.2)
    late = execute(admin, auth["id"])
    assert late.status_code == 409 and "expired" in late.json()["error"]["message"]
    assert link.fetch_state()["level"] == 0
    # Reads never write: the expiry is recorded by the control plane's own upkeep, within a second.
    wait_for(lambda: "authorization.expired" in [e["kind"] for e in audit_kinds(admin)], timeout=3)
    assert "execution.refused" in [e["kind"] for e in audit_kinds(admin)]


def test_disarmed_and_unknown_authorisations_are_refused(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    link = agent(embedded, "a")
    auth = arm(admin)
    assert admin.post("/api/disarm", json={"authorization_id": auth["id"]}).json()["disarmed"] == [auth["id"]]
    assert execute(admin, auth["id"]).status_code == 409
    assert execute(admin, "auth_doesnotexist").status_code == 404
    assert link.fetch_state()["level"] == 0
    # Disarming every armed authorisation takes an explicit all: true (an empty body is refused).
    first, second = arm(admin), arm(admin)
    assert admin.post("/api/disarm").status_code == 400
    assert set(admin.post("/api/disarm", json={"all": True}).json()["disarmed"]) == {first["id"], second["id"]}


def test_scope_binding(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    one = agent(embedded, "one", kind="researcher", framework="langchain")
    two = agent(embedded, "two", kind="researcher", framework="crewai")
    three = agent(embedded, "three", kind="coder", framework="crewai")
    execute(admin, arm(admin, scope="agent:one")["id"])
    assert [x.fetch_state()["level"] for x in (one, two, three)] == [3, 0, 0]
    execute(admin, arm(admin, scope="class:coder", level=2)["id"])
    assert [x.fetch_state()["level"] for x in (one, two, three)] == [3, 0, 2]
    execute(admin, arm(admin, scope="framework:crewai", level=1)["id"])
    assert [x.fetch_state()["level"] for x in (one, two, three)] == [3, 1, 2]


def test_levels_fire_in_sequence_each_audited(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    agent(embedded, "a", credentials=[{"label": "openai", "fingerprint": "sha256:" + "ab" * 32, "kind": "env"}])
    execute(admin, arm(admin, level=5, scope="agent:a")["id"])
    entries = audit_kinds(admin)
    fired = [e["data"]["level"] for e in entries if e["kind"] == "level.fired"]
    assert fired == [1, 2, 3, 4, 5]
    l1 = next(e for e in entries if e["kind"] == "level.fired" and e["data"]["level"] == 1)
    assert l1["data"]["credentials_revoked"] == 1
    assert admin.get("/api/agents/a").json()["credentials"][0]["revoked"] == "revoked for good"


def test_restore_reverses_l1_to_l3_only(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    fp = "sha256:" + "cd" * 32
    a = agent(embedded, "a", credentials=[{"label": "key", "fingerprint": fp, "kind": "secret"}])
    execute(admin, arm(admin)["id"])
    assert admin.get("/api/agents/a").json()["credentials"][0]["revoked"] == "revoked"
    restored = admin.post("/api/restore", json={"scope": "global", "by": "ops@example.com", "reason": "ok"})
    assert restored.status_code == 200 and restored.json()["agents"] == ["a"]
    assert a.fetch_state()["level"] == 0
    assert admin.get("/api/agents/a").json()["credentials"][0]["revoked"] == "no"
    # L4 is not reversible by restore, only by an authority's lift.
    execute(admin, arm(admin, level=4, scope="agent:a")["id"])
    refused = admin.post("/api/restore", json={"scope": "agent:a", "by": "ops@example.com", "reason": "x"})
    assert refused.status_code == 409 and "m99 lift" in refused.json()["error"]["message"]
    assert a.fetch_state()["level"] == 4
    lifted = admin.post("/api/lift", json={"scope": "agent:a", "by": "boss@example.com", "reason": "cleared"})
    assert lifted.status_code == 200 and a.fetch_state()["level"] == 0


def test_restore_of_a_narrower_scope_reports_what_still_holds(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    a = agent(embedded, "a", kind="researcher")
    execute(admin, arm(admin, scope="global")["id"])
    execute(admin, arm(admin, scope="class:researcher", level=2)["id"])
    out = admin.post("/api/restore", json={"scope": "class:researcher", "by": "o@example.com", "reason": "r"}).json()
    assert out["still_held"] == ["a"] and a.fetch_state()["level"] == 3


def test_l5_tombstones_and_refuses_resurrection_until_lifted(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    agent(embedded, "bad")
    execute(admin, arm(admin, level=5, scope="agent:bad")["id"])
    with pytest.raises(Exception, match="tombstoned"):
        agent(embedded, "bad")
    wait_for(lambda: any(e["kind"] == "agent.resurrection_refused" for e in audit_kinds(admin)))
    admin.post("/api/lift", json={"scope": "agent:bad", "by": "boss@example.com", "reason": "rebuilt"})
    assert agent(embedded, "bad").fetch_state()["level"] == 0


def test_l6_needs_the_typed_confirmation(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    agent(embedded, "a")
    auth = arm(admin, level=6)
    assert auth["confirmation_phrase"] == "KILL FLEET global"
    wrong = execute(admin, auth["id"], confirm="yes")
    assert wrong.status_code == 400 and "KILL FLEET global" in wrong.json()["error"]["message"]
    ok = execute(admin, auth["id"], confirm="KILL FLEET global")
    assert ok.status_code == 200 and ok.json()["levels_fired"] == ["L1", "L2", "L3", "L4", "L5", "L6"]


@pytest.mark.parametrize(
    ("role", "level", "allowed"),
    [
        ("viewer", 1, False),
        ("operator", 3, True),
        ("operator", 4, False),
        ("authority", 5, True),
        ("authority", 6, False),
        ("fleet", 6, True),
    ],
)
def test_roles(embedded: EmbeddedControlPlane, admin: httpx.Client, role: str, level: int, allowed: bool) -> None:
    agent(embedded, "a")
    token = admin.post("/api/tokens", json={"name": f"{role}-person", "role": role}).json()["token"]
    with httpx.Client(base_url=embedded.url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/api/status").status_code == 200  # every role may look
        r = client.post("/api/arm", json={"by": "x@example.com", "reason": "r", "level": level})
        assert (r.status_code == 200) is allowed, r.text
        if not allowed:
            assert r.status_code == 403 and role in r.json()["error"]["message"]
            wait_for(lambda: any(e["kind"] == "authority.refused" for e in audit_kinds(admin)))
            misuse = [e for e in audit_kinds(admin) if e["kind"] == "authority.refused"]
            assert misuse[-1]["actor"]["token"] == f"{role}-person"


def test_execute_records_the_token_identity_beside_by(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    agent(embedded, "a")
    token = admin.post("/api/tokens", json={"name": "oncall", "role": "operator"}).json()["token"]
    with httpx.Client(base_url=embedded.url, headers={"Authorization": f"Bearer {token}"}) as client:
        auth = client.post("/api/arm", json={"by": "alice@example.com", "reason": "r"}).json()
        client.post("/api/execute", json={"authorization_id": auth["id"]})
    started = next(e for e in audit_kinds(admin) if e["kind"] == "execution.started")
    assert started["actor"]["by"] == "alice@example.com" and started["actor"]["token"] == "oncall"
    assert started["actor"]["role"] == "operator"


def test_tokens_need_a_token_and_revoked_ones_stop_working(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    assert httpx.get(f"{embedded.url}/api/status").status_code == 401
    assert httpx.post(f"{embedded.url}/api/arm", json={"by": "a@b", "reason": "r"}).status_code == 401
    made = admin.post("/api/tokens", json={"name": "temp", "role": "operator"}).json()
    listed = admin.get("/api/tokens").json()
    assert all("token_hash" not in t and "token" not in t for t in listed)
    assert admin.delete(f"/api/tokens/{made['id']}").status_code == 200
    r = httpx.get(f"{embedded.url}/api/status", headers={"Authorization": f"Bearer {made['token']}"})
    assert r.status_code == 401
    raw = (embedded.data_dir / "m99.db").read_bytes()
    assert made["token"].encode() not in raw and embedded.token.encode() not in raw


def test_execute_latency_is_recorded(embedded: EmbeddedControlPlane, admin: httpx.Client) -> None:
    agent(embedded, "a")
    result = execute(admin, arm(admin)["id"]).json()
    record = admin.get(f"/api/executions/{result['execution_id']}").json()
    assert record["levels_fired"] == ["L1", "L2", "L3"] and record["agents"] == ["a"]
    assert json.loads(json.dumps(record))["time_to_halt"]["in_scope"] == 1
