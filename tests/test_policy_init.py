"""``m99.init``, ``M99Client`` and ``m99 run`` load KILLSWITCH.md: ./KILLSWITCH.md when present,
``policy=PATH`` to choose, ``policy=False`` to opt out; an invalid file fails before the agent runs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import m99
from m99.cli import main
from m99.client import M99Client
from m99.errors import ToolCallRefused
from m99.policy import PolicyError
from m99.server import EmbeddedControlPlane

pytestmark = pytest.mark.timeout(60)

FORBID = "# KILLSWITCH\n\n## FORBIDDEN\nactions:\n  - drop_database\n"


@pytest.fixture(autouse=True)
def _shutdown() -> object:
    yield
    m99.shutdown()


def test_init_loads_the_killswitch_md_of_the_working_directory(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_core.tools import tool

    (tmp_path / "KILLSWITCH.md").write_text(FORBID)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("M99_POLICY", raising=False)
    ran: list[str] = []

    @tool
    def drop_database(name: str) -> str:
        """Drop a database."""
        ran.append(name)
        return "dropped"

    runtime = m99.init("policy-bot", url=embedded.url, exclude=["crewai", "autogen"])
    assert runtime.guard.policy is not None and len(runtime.guard.policy.digest) == 64
    with pytest.raises(ToolCallRefused, match="forbidden action 'drop_database'"):
        drop_database.invoke({"name": "prod"})
    assert ran == []
    # The control plane records which policy it runs under (sent in the signed registration) ...
    digest = hashlib.sha256(FORBID.encode()).hexdigest()
    listed = {a["name"]: a for a in admin.get("/api/agents").json()}
    assert listed["policy-bot"]["policy"] == f"sha256:{digest}"
    assert {a["name"]: a for a in admin.get("/api/status").json()["agents"]}["policy-bot"]["policy"]
    # ... and the operator sees it in `m99 agents` and `m99 status`.
    monkeypatch.setenv("M99_URL", embedded.url)
    monkeypatch.setenv("M99_DATA_DIR", str(embedded.data_dir))
    monkeypatch.delenv("M99_TOKEN", raising=False)
    for command in ("agents", "status"):
        out = CliRunner().invoke(main, [command], catch_exceptions=False).output
        assert "POLICY" in out and digest[:12] in out, out


def test_an_agent_without_a_policy_shows_none(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("M99_POLICY", raising=False)
    m99.init("free-bot", url=embedded.url, exclude=["crewai", "autogen", "langchain"])
    assert {a["name"]: a for a in admin.get("/api/agents").json()}["free-bot"]["policy"] is None


def test_init_policy_false_opts_out_and_a_path_chooses(
    embedded: EmbeddedControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "KILLSWITCH.md").write_text(FORBID)
    monkeypatch.chdir(tmp_path)
    runtime = m99.init("policy-bot", url=embedded.url, policy=False, exclude=["crewai", "autogen", "langchain"])
    assert runtime.guard.policy is None and runtime.guard.quiet
    m99.shutdown()
    other = tmp_path / "other.md"
    other.write_text("## TRIGGERS\nconsecutive_failures: 2\n")
    runtime = m99.init("policy-bot", url=embedded.url, policy=other, exclude=["crewai", "autogen", "langchain"])
    assert runtime.guard.policy is not None and runtime.guard.policy.policy.triggers.consecutive_failures == 2


def test_an_invalid_policy_fails_init_before_registering(embedded: EmbeddedControlPlane, tmp_path: Path) -> None:
    bad = tmp_path / "KILLSWITCH.md"
    bad.write_text("## TRIGGERS\ncost_limit_usd: -5\n")
    with pytest.raises(PolicyError, match="cost_limit_usd"):
        m99.init("policy-bot", url=embedded.url, policy=bad)
    from m99.runtime import current

    assert current() is None


def test_m99_client_takes_a_policy(embedded: EmbeddedControlPlane, tmp_path: Path) -> None:
    path = tmp_path / "KILLSWITCH.md"
    path.write_text("## TRIGGERS\nruntime_limit_minutes: 0.005\n")  # 0.3 s
    with M99Client(embedded.url, policy=path) as client:
        client.register("sdk-bot", "autonomous")
        client.check_status()
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                client.check_status()
            except m99.M99KillSwitchTriggered as exc:
                assert "runtime_limit_minutes" in str(exc)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the runtime limit never stopped the agent")


def test_m99_run_checks_the_policy_and_hands_it_to_the_command(embedded: EmbeddedControlPlane, tmp_path: Path) -> None:
    path = tmp_path / "KILLSWITCH.md"
    path.write_text(FORBID)
    script = tmp_path / "show.py"
    script.write_text(
        textwrap.dedent("""
        import json, os
        print(json.dumps({"policy": os.environ.get("M99_POLICY")}))
    """)
    )
    base = [sys.executable, "-m", "m99.cli", "--url", embedded.url, "run", "--name", "run-bot"]
    done = subprocess.run([*base, "--policy", str(path), "--", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"policy": str(path.resolve())}
    path.write_text("## TRIGGERS\nconsecutive_failures: zero\n")
    done = subprocess.run([*base, "--policy", str(path), "--", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "consecutive_failures" in done.stderr and "policy" not in done.stdout
