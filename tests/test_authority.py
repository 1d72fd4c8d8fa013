"""Authority that holds up in an audit: with ``--two-person`` the token that executes must belong to
another identity than the one that armed; a refusal is audited and leaves the authorisation armed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from m99.control import Settings
from m99.link import ControlLink
from m99.server import EmbeddedControlPlane

from .servers import ServeProcess


def test_two_person_rule_refuses_the_arming_identity_and_audits_it(tmp_path: Path) -> None:
    with EmbeddedControlPlane(tmp_path / "cp", settings=Settings(two_person=True)) as cp:
        first = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"})
        minted = first.post("/api/tokens", json={"name": "second-officer", "role": "fleet"}).json()
        second = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {minted['token']}"})
        ControlLink(cp.url).register("bot", "worker")
        auth = first.post("/api/arm", json={"by": "ops@example.com", "reason": "two", "level": 3}).json()
        refused = first.post("/api/execute", json={"authorization_id": auth["id"]})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "two_person"
        assert first.get(f"/api/authorizations/{auth['id']}").json()["status"] == "armed"
        audited = [e for e in first.get("/api/audit", params={"limit": 500}).json() if e["kind"] == "execution.refused"]
        assert audited[-1]["data"]["code"] == "two_person" and audited[-1]["actor"]["token"] == "admin"
        done = second.post("/api/execute", json={"authorization_id": auth["id"]})
        assert done.status_code == 200 and done.json()["agents"] == ["bot"]
        assert first.get("/api/status").json()["settings"]["two_person"] is True
        first.close()
        second.close()


def test_m99_serve_two_person_flag(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path / "data", "--two-person").start()
    try:
        with serve.api() as api:
            ControlLink(serve.url).register("bot", "worker")
            auth = api.post("/api/arm", json={"by": "ops@example.com", "reason": "two", "level": 3}).json()
        refused = serve.cli("execute", "--auth", auth["id"], "--force")
        assert refused.returncode == 8 and "two-person rule" in refused.stderr
    finally:
        serve.kill()


def test_break_glass_arms_and_executes_once_is_audited_and_shown_until_acknowledged(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path / "data").start()
    try:
        created = serve.cli("breakglass", "create", "--by", "ciso@example.com")
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip().splitlines()[-1]
        token_id = created.stdout.split()[2]
        with serve.api() as admin:
            tokens = {t["id"]: t for t in admin.get("/api/tokens").json()}
            assert token not in str(tokens)  # stored hashed only
            ControlLink(serve.url).register("bot", "worker")
        with serve.api(token) as glass:
            assert (
                glass.post("/api/restore", json={"scope": "global", "by": "x@example.com", "reason": "r"}).status_code
                == 403
            )
            assert glass.get("/api/status").status_code == 403
            assert glass.post("/api/tokens", json={"name": "evil", "role": "fleet"}).status_code == 403
            auth = glass.post("/api/arm", json={"by": "ciso@example.com", "reason": "auth is down", "level": 3})
            assert auth.status_code == 200, auth.text
            done = glass.post("/api/execute", json={"authorization_id": auth.json()["id"]})
            assert done.status_code == 200 and done.json()["agents"] == ["bot"]
            again = glass.post("/api/arm", json={"by": "ciso@example.com", "reason": "again", "level": 3})
            assert again.status_code == 401  # single use: spent by its execute
        status = serve.cli("status")
        assert f"BREAK-GLASS {token_id} used to execute" in status.stdout
        with serve.api() as admin:
            kinds = [e["kind"] for e in admin.get("/api/audit", params={"limit": 1000}).json()]
            assert kinds.count("breakglass.used") == 2 and "breakglass.refused" in kinds
        acked = serve.cli("breakglass", "ack", token_id, "--by", "ciso@example.com")
        assert acked.returncode == 0, acked.stderr
        time.sleep(1.1)  # status reads these notices from the store at most once a second
        assert "BREAK-GLASS" not in serve.cli("status").stdout
    finally:
        serve.kill()


def test_two_person_rule_makes_a_restore_two_phase(tmp_path: Path) -> None:
    with EmbeddedControlPlane(tmp_path / "cp", settings=Settings(two_person=True)) as cp:
        first = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"})
        minted = first.post("/api/tokens", json={"name": "second-officer", "role": "fleet"}).json()
        second = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {minted['token']}"})
        ControlLink(cp.url).register("bot", "worker")
        auth = first.post("/api/arm", json={"by": "ops@example.com", "reason": "two", "level": 3}).json()
        second.post("/api/execute", json={"authorization_id": auth["id"]}).raise_for_status()
        body = {"scope": "global", "by": "ops@example.com", "reason": "all clear"}
        asked = first.post("/api/restore", json=body).json()
        assert asked["pending"] is True and first.get("/api/status").json()["directives"]
        again = first.post("/api/restore", json=body).json()  # the same person twice is still one person
        assert again["pending"] is True and first.get("/api/status").json()["directives"]
        done = second.post("/api/restore", json={**body, "by": "second-officer"}).json()
        assert not done.get("pending") and done["lifted"] and not first.get("/api/status").json()["directives"]
        kinds = [e["kind"] for e in first.get("/api/audit", params={"limit": 500}).json()]
        assert kinds.count("restore.requested") == 2 and "restore.confirmed" in kinds
        first.close()
        second.close()
