"""Policy transitions reach the control plane after they are enforced: each one an execution of origin
``policy``, audited (with the evidence snapshot of a save_state stop); a shutdown also fires L3 on the
agent's own scope, which the agent confirms; a forged or foreign report is refused with no state change."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import m99
from m99.cli import main
from m99.crypto import SigningKey
from m99.errors import ToolCallRefused
from m99.protocol import sign_request
from m99.server import EmbeddedControlPlane

pytestmark = pytest.mark.timeout(60)

POLICY = """# KILLSWITCH
## TRIGGERS
consecutive_failures: 2
api_calls_per_minute: 3
---
## ESCALATION
level_1_throttle:
  action: reduce_rate
level_3_shutdown:
  action: full_stop
  save_state: true
"""


def wait_for(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _shutdown() -> object:
    yield
    m99.shutdown()


def test_every_transition_is_an_execution_of_origin_policy_and_a_shutdown_is_confirmed(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_core.tools import tool

    (tmp_path / "KILLSWITCH.md").write_text(POLICY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("M99_POLICY", raising=False)

    @tool
    def flaky(x: str) -> str:
        """Fails."""
        raise ValueError("flaky")

    @tool
    def ok(x: str) -> str:
        """Works."""
        return x

    runtime = m99.init("gov-bot", url=embedded.url, exclude=["crewai", "autogen"])
    for i in range(4):  # the 4th call in a minute passes 3 a minute: throttle
        ok.invoke({"x": str(i)})

    def policy_executions() -> list[dict]:
        return [e for e in admin.get("/api/executions").json() if e["origin"] == "policy"]

    wait_for(lambda: len(policy_executions()) == 1)
    throttle = policy_executions()[0]
    assert throttle["level"] == 0 and throttle["agents"] == [] and "level_1_throttle" in throttle["reason"]
    # Throttled, calls are spaced at half the last minute's rate; an operator resumes (reported too).
    assert runtime.guard.policy.engine.resume("ops@example.com", "looked at it")
    wait_for(lambda: len(policy_executions()) == 2)
    assert policy_executions()[0]["by_email"] == "ops@example.com"
    for i in range(2):
        with pytest.raises(ValueError):
            flaky.invoke({"x": str(i)})  # two failures in a row: shutdown
    with pytest.raises(ToolCallRefused):
        ok.invoke({"x": "after"})  # enforced locally at once
    wait_for(lambda: len(policy_executions()) == 3)
    stop = policy_executions()[0]  # newest first
    assert stop["level"] == 3 and stop["scope"] == "agent:gov-bot" and stop["agents"] == ["gov-bot"]
    assert "consecutive_failures" in stop["reason"]
    wait_for(lambda: admin.get(f"/api/executions/{stop['id']}").json()["time_to_halt"]["confirmed"] == 1)
    wait_for(lambda: runtime.guard.level == 3)  # the control plane holds the stop too
    audit = admin.get("/api/audit", params={"limit": 200}).json()
    entries = audit["entries"] if isinstance(audit, dict) else audit
    kinds = [e["kind"] if "kind" in e else e.get("action") for e in entries]
    assert kinds.count("policy.transition") == 3 and "policy.evidence" in kinds
    evidence = next(e for e in entries if (e.get("kind") or e.get("action")) == "policy.evidence")
    assert evidence["data"]["snapshot"]["agent"] == "gov-bot"
    # The operator sees it.
    monkeypatch.setenv("M99_URL", embedded.url)
    monkeypatch.setenv("M99_DATA_DIR", str(embedded.data_dir))
    monkeypatch.delenv("M99_TOKEN", raising=False)
    out = CliRunner().invoke(main, ["executions"], catch_exceptions=False).output
    assert out.count(" policy by ") == 3, out
    out = CliRunner().invoke(main, ["status"], catch_exceptions=False).output
    assert "L3 on agent:gov-bot (policy" in out, out


def test_a_forged_policy_report_is_refused_and_changes_nothing(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runtime = m99.init("honest-bot", url=embedded.url, policy=False, exclude=["crewai", "autogen", "langchain"])
    agent_id = runtime.session.link.agent_id
    event = {"at": time.time(), "stage": "level_3_shutdown", "previous": "none", "trigger": "x", "action": "full_stop"}
    body = sign_request(SigningKey.generate(), "policy", agent_id, {"seq": 10**6, "ts": time.time(), "event": event})
    answer = httpx.post(f"{embedded.url}/api/agents/{agent_id}/policy", json=body)
    assert answer.status_code == 401
    bad = dict(body, event={**event, "stage": "level_9"})
    assert httpx.post(f"{embedded.url}/api/agents/{agent_id}/policy", json=bad).status_code == 422
    assert [e for e in admin.get("/api/executions").json() if e["origin"] == "policy"] == []
    assert runtime.guard.level == 0


def test_an_operators_restore_of_the_policys_stop_resumes_the_agent(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_core.tools import tool

    from m99.policy import Stage

    (tmp_path / "KILLSWITCH.md").write_text("## TRIGGERS\nconsecutive_failures: 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("M99_POLICY", raising=False)
    ran: list[str] = []

    @tool
    def flaky(x: str) -> str:
        """Fails once."""
        ran.append(x)
        if x == "bad":
            raise ValueError("flaky")
        return x

    runtime = m99.init("resumed-bot", url=embedded.url, exclude=["crewai", "autogen"])
    with pytest.raises(ValueError):
        flaky.invoke({"x": "bad"})
    wait_for(lambda: runtime.guard.level == 3)
    with pytest.raises(ToolCallRefused):
        flaky.invoke({"x": "refused"})
    answer = admin.post("/api/restore", json={"scope": "agent:resumed-bot", "by": "ops@example.com", "reason": "ok"})
    assert answer.status_code == 200, answer.text
    wait_for(lambda: runtime.guard.level == 0 and runtime.guard.policy.engine.stage == Stage.NONE)
    assert flaky.invoke({"x": "good"}) == "good"
    assert ran == ["bad", "good"]

    def reported_by() -> list[str]:
        return [e["by_email"] for e in admin.get("/api/executions").json() if e["origin"] == "policy"]

    # The resume is reported too (after it was enforced: the report travels on its own).
    wait_for(lambda: "operator (m99 restore)" in reported_by(), timeout=10)
    assert reported_by()[0] == "operator (m99 restore)"  # the newest
