"""The time-to-halt SLO: an agent not confirmed within ``--halt-slo`` is audited as a breach, once, and
shown by ``m99 status`` and ``m99 executions ID``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from m99.control import Settings
from m99.link import ControlLink
from m99.server import EmbeddedControlPlane

from .receipts import halted


def test_an_agent_not_confirmed_within_the_slo_is_audited_once_and_shown(tmp_path: Path) -> None:
    with EmbeddedControlPlane(tmp_path / "cp", settings=Settings(halt_slo=0.3)) as cp:
        admin = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"})
        quick, mute = ControlLink(cp.url), ControlLink(cp.url)
        quick.register("quick", "worker")
        mute.register("mute", "worker")
        auth = admin.post("/api/arm", json={"by": "ops@example.com", "reason": "slo", "level": 3}).json()
        result = admin.post("/api/execute", json={"authorization_id": auth["id"]}).json()
        quick.acknowledge(result["version"], time.time(), receipt=halted(3))

        def breaches() -> list[dict]:  # type: ignore[type-arg]
            entries = admin.get("/api/audit", params={"limit": 1000}).json()
            return [e for e in entries if e["kind"] == "execution.slo_breach"]

        deadline = time.monotonic() + 10
        while not breaches() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.5)  # more upkeep rounds: still one entry
        found = breaches()
        assert len(found) == 1 and found[0]["data"]["execution_id"] == result["execution_id"]
        assert found[0]["data"]["agents"] == ["mute"] and found[0]["data"]["not_confirmed"] == ["mute"]
        env = {**os.environ, "M99_URL": cp.url, "M99_TOKEN": cp.token}
        status = subprocess.run([sys.executable, "-m", "m99.cli", "status"], env=env, capture_output=True, text=True)
        assert "over the time-to-halt SLO: mute" in status.stdout
        shown = subprocess.run(
            [sys.executable, "-m", "m99.cli", "executions", result["execution_id"]],
            env=env,
            capture_output=True,
            text=True,
        )
        assert "over the 0.3 s time-to-halt SLO: mute" in shown.stdout
        admin.close()
