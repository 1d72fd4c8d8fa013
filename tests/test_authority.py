"""Authority that holds up in an audit: with ``--two-person`` the token that executes must belong to
another identity than the one that armed; a refusal is audited and leaves the authorisation armed."""

from __future__ import annotations

from pathlib import Path

import httpx

from m99.control import Settings
from m99.link import ControlLink
from m99.server import EmbeddedControlPlane

from .servers import ServeProcess


def test_two_person_rule_refuses_the_arming_identity_and_audits_it(tmp_path: Path) -> None:
    with EmbeddedControlPlane(tmp_path / "cp", settings=Settings(two_person=True)).start() as cp:
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
