"""Agent identity: a live agent's name cannot be taken over, acknowledgements are bound to the registration
in scope, tokens cannot lock the fleet out, and an agent trusts only the control plane it pinned.

Each test reproduces a finding of the hostile review of the control plane (issue: "a kill switch nobody
can switch off")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from m99.control import Settings
from m99.crypto import SigningKey
from m99.errors import Conflict
from m99.guard import Guard
from m99.link import ControlLink, agent_key_path
from m99.server import EmbeddedControlPlane, free_port
from m99.session import Session

from .receipts import halted as halted_receipt
from .servers import ServeProcess
from .test_session import fire, wait_for


def audit(admin: httpx.Client) -> list[dict]:
    return admin.get("/api/audit", params={"limit": 1000}).json()


def test_a_live_agents_name_cannot_be_taken_over_with_another_key(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    victim = ControlLink(embedded.url)
    victim.register("victim", "worker")
    impostor = ControlLink(embedded.url)  # a fresh key
    with pytest.raises(Conflict, match="bound to another key") as refused:
        impostor.register("victim", "worker")
    assert refused.value.code == "name_bound"
    # The registry still shows the real agent, whose heartbeats go on.
    listed = admin.get("/api/agents/victim").json()
    assert listed["agent_id"] == victim.agent_id and listed["pid"] == os.getpid()
    victim.heartbeat()
    wait_for(lambda: any(e["kind"] == "agent.name_refused" for e in audit(admin)))
    # Re-registering over and over changes nothing either: the refusal is audited once, folded.
    for _ in range(5):
        with pytest.raises(Conflict):
            impostor.register("victim", "worker")
    time.sleep(0.3)
    assert sum(e["kind"] == "agent.name_refused" for e in audit(admin)) == 1


def test_the_same_key_resumes_the_identity_and_a_replayed_registration_is_refused(
    embedded: EmbeddedControlPlane,
) -> None:
    key = SigningKey.generate()
    first = ControlLink(embedded.url, key=key)
    body = first.registration_body("keeper")
    assert httpx.post(f"{embedded.url}/api/agents/register", json=body).status_code == 200
    again = httpx.post(f"{embedded.url}/api/agents/register", json=body)  # the same signed bytes
    assert again.status_code == 409 and again.json()["error"]["code"] == "replayed"
    restarted = ControlLink(embedded.url, key=key)
    assert restarted.register("keeper")["incarnation"] == 2  # same key: same identity, resumed


def test_a_registration_must_be_signed_by_the_key_it_binds(embedded: EmbeddedControlPlane) -> None:
    link = ControlLink(embedded.url)
    body = link.registration_body("signer")
    body["public_key"] = SigningKey.generate().public_b64  # someone else's key, not proven
    r = httpx.post(f"{embedded.url}/api/agents/register", json=body)
    assert r.status_code == 401 and "signature" in r.json()["error"]["message"]


def test_a_restarted_agent_resumes_its_name_with_no_operator_step(
    embedded: EmbeddedControlPlane, tmp_path: Path
) -> None:
    script = (
        "import sys, m99\n"
        "c = m99.M99Client(sys.argv[1])\n"
        "c.register('restartable', 'worker')\n"
        "print(c.agent_id, flush=True)\n"
    )
    env = {**os.environ, "M99_KEY_DIR": str(tmp_path / "keys")}
    ids = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", script, embedded.url], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        ids.append(out.stdout.strip())
    assert len(set(ids)) == 2  # two registrations of one identity
    assert next(iter((tmp_path / "keys").iterdir())).stat().st_mode & 0o777 == 0o600


def test_forget_frees_a_name_only_by_an_authority_and_keeps_its_directives(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    old = ControlLink(embedded.url)
    old.register("retired", "worker")
    fire(admin, scope="agent:retired", level=3)
    old.deregister()
    operator = admin.post("/api/tokens", json={"name": "ops", "role": "operator"}).json()["token"]
    body = {"by": "ops@example.com", "reason": "decommissioned"}
    refused = httpx.post(
        f"{embedded.url}/api/agents/retired/forget", json=body, headers={"Authorization": f"Bearer {operator}"}
    )
    assert refused.status_code == 403
    assert admin.post("/api/agents/retired/forget", json=body).status_code == 200
    successor = ControlLink(embedded.url)  # a new key may take the name now ...
    successor.register("retired", "worker")
    assert successor.fetch_state()["level"] == 3  # ... but the stop aimed at the name still holds it
    assert any(e["kind"] == "agent.forgotten" for e in audit(admin))


def test_acknowledgements_are_bound_to_the_registration_in_scope(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    key = SigningKey.generate()
    halted = ControlLink(embedded.url, key=key)
    halted.register("sleeper", "worker")
    result = fire(admin, scope="agent:sleeper")
    # The process is SIGSTOPped and never acknowledges; whoever registers the name again (even with its
    # key) is another registration, and cannot confirm a halt that was aimed at the first one.
    later = ControlLink(embedded.url, key=key)
    later.register("sleeper", "worker")
    later.acknowledge(result["version"], time.time(), receipt=halted_receipt())
    halt = admin.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]
    assert halt["confirmed"] == 0 and halt["not_confirmed"] == ["sleeper"]


def test_applied_at_before_the_execution_is_refused_and_time_to_halt_is_never_negative(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    link = ControlLink(embedded.url)
    link.register("clock", "worker")
    result = fire(admin, scope="agent:clock")
    early = admin.post(
        "/api/acks", json={"acks": [link.signed_ack(result["version"], time.time() - 3600, halted_receipt())]}
    ).json()
    assert early["results"][0]["ok"] is False and early["results"][0]["error"]["code"] == "bad_applied_at"
    # Within the allowed skew, a little early: counted as 0 ms, never negative.
    link.acknowledge(result["version"], time.time() - 5, receipt=halted_receipt())
    halt = admin.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]
    assert halt["confirmed"] == 1 and halt["per_agent"]["clock"] >= 0


def test_token_ids_are_unique_and_the_last_fleet_token_cannot_be_revoked(
    embedded: EmbeddedControlPlane, admin: httpx.Client
) -> None:
    tokens = admin.get("/api/tokens").json()
    (original,) = tokens
    made = admin.post("/api/tokens", json={"name": "admin", "role": "fleet"}).json()  # the same name again
    assert made["id"] != original["id"]
    assert admin.delete(f"/api/tokens/{made['id']}").status_code == 200
    live = [t for t in admin.get("/api/tokens").json() if t["revoked_at"] is None]
    assert [t["id"] for t in live] == [original["id"]]  # exactly the one revoked, not the admin token
    last = admin.delete(f"/api/tokens/{original['id']}")
    assert last.status_code == 409 and last.json()["error"]["code"] == "last_fleet_token"
    assert admin.get("/api/status").status_code == 200


def test_token_recover_mints_an_admin_token_from_the_data_dir(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data").start()
    try:
        first = server.token
        out = server.cli("token", "recover", "--by", "root@example.com")
        assert out.returncode == 0, out.stderr
        assert server.token != first
        with server.api(server.token) as api:
            assert api.get("/api/tokens").status_code == 200
            kinds = [e["kind"] for e in api.get("/api/audit", params={"limit": 1000}).json()]
        assert "token.recovered" in kinds
    finally:
        server.kill()


def test_an_agent_refuses_another_server_at_its_url_and_never_restores(tmp_path: Path) -> None:
    port = free_port()
    real = ServeProcess(tmp_path / "real", "--heartbeat-interval", "0.3", "--lease", "2")
    real.port, real.url = port, f"http://127.0.0.1:{port}"
    real.start()
    guard = Guard("pinned", kind="worker")
    guard.protect_env("PINNED_API_KEY")
    os.environ["PINNED_API_KEY"] = "s3cret-value"
    session = Session(guard, real.url, key_file=agent_key_path("pinned")).start()
    try:
        with real.api() as api:
            fire(api, scope="agent:pinned", level=1)
        wait_for(lambda: guard.level == 1)
        assert "PINNED_API_KEY" not in os.environ
        real.kill()
        # Another control plane (another key, an empty database) answers at the same address.
        other = ServeProcess(tmp_path / "other", "--heartbeat-interval", "0.3")
        other.port, other.url = port, real.url
        other.start()
        try:
            wait_for(lambda: guard.lease_lost, timeout=10)  # it never gave the impostor its trust
            assert guard.level == 1 and "PINNED_API_KEY" not in os.environ  # still held: nothing restored
            assert guard.frozen
        finally:
            other.kill()
        real.start()  # the real one is back: contact again, and it still holds the agent at L1
        wait_for(lambda: not guard.lease_lost, timeout=10)
        assert guard.level == 1
    finally:
        session.close()
        os.environ.pop("PINNED_API_KEY", None)
        real.kill()


def test_a_configured_server_key_is_the_only_one_trusted(embedded: EmbeddedControlPlane) -> None:
    key = SigningKey.generate()
    with pytest.raises(Exception, match="not the pinned one"):
        ControlLink(embedded.url, key=key, server_public_key=SigningKey.generate().public_b64).register("strict")
    ok = ControlLink(embedded.url, key=key, server_public_key=embedded.server_key)
    assert ok.register("strict")["server_public_key"] == embedded.server_key


def test_enrolment_by_token_with_a_grant(tmp_path: Path) -> None:
    settings = Settings(enrol="token")
    with EmbeddedControlPlane(tmp_path / "d", settings=settings) as cp:
        admin = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"})
        with pytest.raises(Exception, match="enrols agents by token"):
            ControlLink(cp.url).register("worker-1", "worker")
        grant = {"name": "pool", "role": "agent", "name_prefix": "worker-", "kind": "worker"}
        enrol = admin.post("/api/tokens", json=grant).json()["token"]
        ControlLink(cp.url, enrol_token=enrol).register("worker-1", "worker")
        with pytest.raises(Exception, match="may register names starting 'worker-'"):
            ControlLink(cp.url, enrol_token=enrol).register("boss", "worker")
        # An enrolment token can do nothing else.
        assert httpx.get(f"{cp.url}/api/status", headers={"Authorization": f"Bearer {enrol}"}).status_code == 403
        # Without "rebind" it cannot take over a name either; with it, it may (and that is audited).
        with pytest.raises(Conflict):
            ControlLink(cp.url, enrol_token=enrol).register("worker-1", "worker")
        rebinder = admin.post("/api/tokens", json={**grant, "name": "redeploy", "rebind": True}).json()["token"]
        ControlLink(cp.url, enrol_token=rebinder).register("worker-1", "worker")
        kinds = [e["kind"] for e in admin.get("/api/audit", params={"limit": 1000}).json()]
        assert "agent.rebound" in kinds
        admin.close()
