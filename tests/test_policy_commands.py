"""An operator's acts on a running agent's KILLSWITCH.md, through a real control plane and a real agent
Session: `m99 policy resume|escalate` (operator role) and `m99 policy override` (authority role, with an
expiry).  Each is audited on the server, pushed signed to the agent, enforced there, and the transition
it makes is reported back as a policy execution; a caller without the role, a bad request, a stale or
replayed push changes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import m99
from m99.cli import main
from m99.errors import ToolCallRefused
from m99.policy import Stage
from m99.policy.cli import parse_duration
from m99.server import EmbeddedControlPlane

pytestmark = pytest.mark.timeout(60)

PAUSING = """# KILLSWITCH
## TRIGGERS
consecutive_failures: 1
---
## ESCALATION
level_2_pause:
  action: pause_and_notify
level_3_shutdown:
  action: full_stop
"""


def wait_for(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _shutdown() -> Iterator[None]:
    yield
    m99.shutdown()


@pytest.fixture
def agent(embedded: EmbeddedControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A LangChain agent process governed by PAUSING, registered with the embedded control plane; its
    tools: ``flaky`` (fails on "bad") and the runtime."""
    from langchain_core.tools import tool

    (tmp_path / "KILLSWITCH.md").write_text(PAUSING)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("M99_POLICY", raising=False)
    ran: list[str] = []

    @tool
    def flaky(x: str) -> str:
        """Fails on 'bad'."""
        ran.append(x)
        if x == "bad":
            raise ValueError("flaky")
        return x

    runtime = m99.init("paused-bot", url=embedded.url, exclude=["crewai", "autogen"])
    return runtime, flaky, ran


def cli(embedded: EmbeddedControlPlane, monkeypatch: pytest.MonkeyPatch, *args: str, token: str | None = None) -> Any:
    monkeypatch.setenv("M99_URL", embedded.url)
    monkeypatch.setenv("M99_DATA_DIR", str(embedded.data_dir))
    if token is None:
        monkeypatch.delenv("M99_TOKEN", raising=False)
    else:
        monkeypatch.setenv("M99_TOKEN", token)
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def policy_executions(admin: httpx.Client) -> list[dict[str, Any]]:
    return [e for e in admin.get("/api/executions").json() if e["origin"] == "policy"]


def audit_kinds(admin: httpx.Client) -> list[str]:
    entries = admin.get("/api/audit", params={"limit": 500}).json()
    entries = entries["entries"] if isinstance(entries, dict) else entries
    return [e.get("kind") or e.get("action") for e in entries]


def token(admin: httpx.Client, role: str) -> str:
    made = admin.post("/api/tokens", json={"name": f"{role}-person", "role": role})
    assert made.status_code == 200, made.text
    return str(made.json()["token"])


def test_an_operator_resumes_a_paused_agent_from_the_cli_and_the_waiting_call_runs(
    embedded: EmbeddedControlPlane, admin: httpx.Client, agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, flaky, ran = agent
    engine = runtime.guard.policy.engine
    with pytest.raises(ValueError):
        flaky.invoke({"x": "bad"})
    assert engine.stage == Stage.PAUSE
    wait_for(lambda: len(policy_executions(admin)) == 1)
    done: list[str] = []
    waiting = threading.Thread(target=lambda: done.append(flaky.invoke({"x": "queued"})), daemon=True)
    waiting.start()
    time.sleep(0.3)
    assert done == [] and "queued" not in ran  # paused: new actions wait
    result = cli(embedded, monkeypatch, "policy", "resume", "paused-bot", "--by", "ops@example.com", "--reason", "ok")
    assert result.exit_code == 0, result.output
    assert "resume: sent to paused-bot" in result.output
    waiting.join(10)
    assert done == ["queued"] and engine.stage == Stage.NONE
    # The agent reported the transition: an execution of origin policy by the operator; both audited.
    wait_for(lambda: len(policy_executions(admin)) == 2)
    resumed = policy_executions(admin)[0]
    assert resumed["by_email"] == "ops@example.com" and "none" in resumed["reason"]
    kinds = audit_kinds(admin)
    assert "policy.resume" in kinds and kinds.count("policy.transition") == 2


def test_an_operator_escalates_a_pause_to_the_policys_stop_over_rest(
    embedded: EmbeddedControlPlane, admin: httpx.Client, agent: Any
) -> None:
    runtime, flaky, ran = agent
    with pytest.raises(ValueError):
        flaky.invoke({"x": "bad"})
    answer = admin.post(
        "/api/policy/escalate", json={"agent": "paused-bot", "by": "ops@example.com", "reason": "it is spending"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["connected"] is True
    wait_for(lambda: runtime.guard.policy.engine.stage == Stage.SHUTDOWN)
    with pytest.raises(ToolCallRefused):
        flaky.invoke({"x": "after"})
    wait_for(lambda: any(e["level"] == 3 for e in policy_executions(admin)))
    stop = policy_executions(admin)[0]
    assert stop["scope"] == "agent:paused-bot" and stop["by_email"] == "ops@example.com"
    wait_for(lambda: runtime.guard.level == 3)
    assert ran == ["bad"]


def test_roles_and_bad_requests_are_refused_with_nothing_pushed(
    embedded: EmbeddedControlPlane, admin: httpx.Client, agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, flaky, _ = agent
    engine = runtime.guard.policy.engine
    with pytest.raises(ValueError):
        flaky.invoke({"x": "bad"})
    assert engine.stage == Stage.PAUSE
    body = {"agent": "paused-bot", "by": "ops@example.com", "reason": "r"}
    viewer, operator = token(admin, "viewer"), token(admin, "operator")
    url = embedded.url
    as_viewer = httpx.post(f"{url}/api/policy/resume", json=body, headers={"Authorization": f"Bearer {viewer}"})
    assert as_viewer.status_code == 403
    override = {**body, "trigger": "consecutive_failures", "seconds": 60}
    as_operator = httpx.post(
        f"{url}/api/policy/override", json=override, headers={"Authorization": f"Bearer {operator}"}
    )
    assert as_operator.status_code == 403
    assert httpx.post(f"{url}/api/policy/resume", json=body).status_code == 401  # no token at all
    for bad, status in (
        ({**body, "agent": "nobody"}, 404),
        ({**body, "by": ""}, 422),
        ({**body, "by": "not an email"}, 400),
        ({**body, "extra": 1}, 422),
        ({**override, "trigger": "made_up"}, 400),
        ({**override, "seconds": 0}, 422),
        ({**override, "seconds": 8 * 86400}, 422),
        ({**body, "by": "ops@example.com\x1b[2J"}, 400),
    ):
        op = "override" if "trigger" in bad else "resume"
        answer = admin.post(f"/api/policy/{op}", json=bad)
        assert answer.status_code == status, (bad, answer.text)
    assert admin.post("/api/policy/unpause", json=body).status_code == 404
    # The CLI says the same, with the CLI's exit codes.
    result = cli(
        embedded,
        monkeypatch,
        "policy",
        "resume",
        "paused-bot",
        "--by",
        "ops@example.com",
        "--reason",
        "r",
        token=viewer,
    )
    assert result.exit_code != 0 and "operator role" in result.output
    time.sleep(0.3)
    assert engine.stage == Stage.PAUSE  # nothing reached the agent
    kinds = audit_kinds(admin)
    assert "policy.resume" not in kinds and "policy.override" not in kinds and "authority.refused" in kinds


def test_an_agent_without_a_policy_is_a_conflict(
    embedded: EmbeddedControlPlane, admin: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    m99.init("free-bot", url=embedded.url, policy=False, exclude=["crewai", "autogen", "langchain"])
    answer = admin.post("/api/policy/resume", json={"agent": "free-bot", "by": "ops@example.com", "reason": "r"})
    assert answer.status_code == 409


def test_a_stale_replayed_or_foreign_push_is_not_applied(agent: Any) -> None:
    runtime, flaky, _ = agent
    gate = runtime.guard.policy
    agent_id = runtime.session.link.agent_id
    with pytest.raises(ValueError):
        flaky.invoke({"x": "bad"})
    fresh = {
        "type": "policy",
        "op": "resume",
        "id": "pol_1",
        "agent_id": agent_id,
        "by": "a@b.c",
        "issued_at": time.time(),
    }
    assert not gate.command({**fresh, "issued_at": time.time() - 3600}, agent_id=agent_id)  # stale
    assert not gate.command({**fresh, "agent_id": "someone-else"}, agent_id=agent_id)  # not this agent
    assert not gate.command({**fresh, "op": "delete", "id": "pol_0"}, agent_id=agent_id)
    nan = {**fresh, "op": "override", "id": "pol_n", "trigger": "consecutive_failures", "until": float("nan")}
    assert not gate.command(nan, agent_id=agent_id) and gate.engine.overrides() == {}
    assert gate.engine.stage == Stage.PAUSE
    assert gate.command(fresh, agent_id=agent_id)
    with pytest.raises(ValueError):
        flaky.invoke({"x": "bad"})
    assert gate.engine.stage == Stage.PAUSE
    assert not gate.command(fresh, agent_id=agent_id)  # the same act pushed again: applied once
    assert gate.engine.stage == Stage.PAUSE


def test_an_authority_override_suspends_one_trigger_until_its_expiry(
    embedded: EmbeddedControlPlane, admin: httpx.Client, agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, flaky, ran = agent
    engine = runtime.guard.policy.engine
    result = cli(
        embedded, monkeypatch, "policy", "override", "paused-bot", "--trigger", "consecutive_failures",
        "--until", "1.5s", "--by", "boss@example.com", "--reason", "known flaky upstream",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    wait_for(lambda: "consecutive_failures" in engine.overrides())
    for _ in range(3):
        with pytest.raises(ValueError):
            flaky.invoke({"x": "bad"})
    assert engine.stage == Stage.NONE  # suspended: three failures in a row and no pause
    assert flaky.invoke({"x": "good"}) == "good"
    with pytest.raises(ValueError):
        flaky.invoke({"x": "bad"})
    # At the expiry the timer measures the trigger again: the failure in a row pauses the agent.
    wait_for(lambda: engine.stage == Stage.PAUSE, timeout=5)
    assert engine.overrides() == {}
    assert ran == ["bad", "bad", "bad", "good", "bad"]  # every call ran while the trigger was suspended
    kinds = audit_kinds(admin)
    assert "policy.override" in kinds
    wait_for(lambda: len(policy_executions(admin)) == 1)
    assert "consecutive_failures" in policy_executions(admin)[0]["reason"]


def test_durations() -> None:
    assert parse_duration("90") == 90 and parse_duration("15m") == 900 and parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400 and parse_duration("1.5s") == 1.5
    for bad in ("", "m", "-1m", "0", "1w", "nan", "abc"):
        with pytest.raises(Exception, match="bad duration"):
            parse_duration(bad)


def test_policy_check_says_how_a_pause_is_resolved_and_how_to_override(tmp_path: Path) -> None:
    path = tmp_path / "KILLSWITCH.md"
    path.write_text(PAUSING)
    out = " ".join(CliRunner().invoke(main, ["policy", "check", str(path)], catch_exceptions=False).output.split())
    assert "m99 policy resume AGENT" in out and "m99 policy escalate AGENT" in out
    assert "m99 policy override AGENT --trigger KEY" in out
    assert "cannot resume it yet" not in out
