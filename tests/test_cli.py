"""Every `m99` command, through click's runner against a real control plane."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from m99.cli import main
from m99.link import ControlLink
from m99.server import EmbeddedControlPlane

from .receipts import halted


@pytest.fixture
def m99(embedded: EmbeddedControlPlane, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("M99_URL", embedded.url)
    monkeypatch.setenv("M99_DATA_DIR", str(embedded.data_dir))
    monkeypatch.delenv("M99_TOKEN", raising=False)
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)

    return run


def armed_id(result: Result) -> str:
    found = re.search(r"armed: (auth_\w+)", result.output)
    assert found, result.output
    return found.group(1)


def test_help_explains_every_command(m99) -> None:  # type: ignore[no-untyped-def]
    top = m99("--help")
    assert top.exit_code == 0 and "Quick start" in top.output
    for command in (
        "serve",
        "status",
        "agents",
        "arm",
        "execute",
        "disarm",
        "restore",
        "lift",
        "executions",
        "run",
        "audit",
        "token",
    ):
        assert command in top.output
        sub = m99(command, "--help")
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_executions_show_each_agents_time_to_halt(m99, embedded: EmbeddedControlPlane) -> None:  # type: ignore[no-untyped-def]
    assert m99("executions").output.strip() == "no executions yet"
    links = [ControlLink(embedded.url) for _ in range(2)]
    links[0].register("fast", "autonomous")
    links[1].register("mute", "autonomous")
    auth = armed_id(m99("arm", "--by", "a@example.com", "--reason", "drill", "--level", "3"))
    execution = re.search(r"exe_\w+", m99("execute", "--auth", auth, "--force").output)
    assert execution
    pending = m99("executions", execution.group(0)).output
    assert "no acknowledgement yet from the 2 agents" in pending
    version = links[0].fetch_state()["version"]
    links[0].acknowledge(version, time.time(), receipt=halted())
    shown = m99("executions", execution.group(0)).output
    assert "L3 on global (L1, L2, L3), execute by a@example.com" in shown and "drill" in shown
    assert "1 of 2 agents acknowledged" in shown and re.search(r"fast\s+\d+\.\d ms", shown)
    assert re.search(r"mute\s+NOT confirmed halted: never acknowledged", shown)
    listed = m99("executions").output
    assert execution.group(0) in listed and "L3 on global" in listed and "2 agents" in listed
    as_json = json.loads(m99("executions", execution.group(0), "--json").output)
    assert set(as_json["time_to_halt"]["per_agent"]) == {"fast"}
    missing = m99("executions", "exe_nope")
    assert missing.exit_code == 7 and "unknown execution" in missing.output
    for link in links:
        link.close()


def test_status_agents_arm_execute_restore(m99, embedded: EmbeddedControlPlane) -> None:  # type: ignore[no-untyped-def]
    link = ControlLink(embedded.url)
    link.register("bot", "autonomous", framework="langchain")
    assert "bot" in m99("status").output
    agents = json.loads(m99("agents", "--json").output)
    assert agents[0]["name"] == "bot" and agents[0]["framework"] == "langchain"
    auth = armed_id(m99("arm", "--by", "a@example.com", "--reason", "r", "--scope", "agent:bot", "--level", "2"))
    done = m99("execute", "--auth", auth, "--force")
    assert done.exit_code == 0 and "L1, L2 on agent:bot" in done.output
    assert link.fetch_state()["level"] == 2
    restored = m99("restore", "--scope", "agent:bot", "--by", "a@example.com", "--reason", "fine")
    assert restored.exit_code == 0 and "bot" in restored.output
    assert link.fetch_state()["level"] == 0


def test_execute_without_force_shows_and_asks(m99, embedded: EmbeddedControlPlane) -> None:  # type: ignore[no-untyped-def]
    ControlLink(embedded.url).register("bot")
    auth = armed_id(m99("arm", "--by", "a@example.com", "--reason", "r"))
    # Not a terminal and no --force: explained refusal, nothing fired.
    refused = m99("execute", "--auth", auth)
    assert refused.exit_code == 5 and "--force" in refused.output
    assert "L3 tool-call freeze" in refused.output and "bot" in refused.output
    assert json.loads(m99("status", "--json").output)["directives"] == []


def test_l6_needs_the_phrase(m99, embedded: EmbeddedControlPlane) -> None:  # type: ignore[no-untyped-def]
    ControlLink(embedded.url).register("bot")
    armed = m99("arm", "--by", "a@example.com", "--reason", "r", "--level", "6")
    assert "--confirm 'KILL FLEET global'" in armed.output
    auth = armed_id(armed)
    wrong = m99("execute", "--auth", auth, "--force")
    assert wrong.exit_code == 5 and "KILL FLEET global" in wrong.output
    asked = m99("execute", "--auth", auth, input="KILL FLEET global\n")
    assert asked.exit_code == 0 and "L6" in asked.output


def test_disarm_lift_and_expected_errors(m99, embedded: EmbeddedControlPlane) -> None:  # type: ignore[no-untyped-def]
    ControlLink(embedded.url).register("bot")
    auth = armed_id(m99("arm", "--by", "a@example.com", "--reason", "r"))
    assert auth in m99("disarm").output
    again = m99("execute", "--auth", auth, "--force")
    assert again.exit_code == 8 and again.output.startswith("m99: error:") and "Traceback" not in again.output
    missing = m99("execute", "--auth", "auth_nothing", "--force")
    assert missing.exit_code == 7
    bad_scope = m99("arm", "--by", "a@example.com", "--reason", "r", "--scope", "nowhere")
    assert bad_scope.exit_code == 2 and "bad scope" in bad_scope.output
    auth = armed_id(m99("arm", "--by", "a@example.com", "--reason", "r", "--level", "5", "--scope", "agent:bot"))
    m99("execute", "--auth", auth, "--force")
    lifted = m99("lift", "--scope", "agent:bot", "--by", "boss@example.com", "--reason", "rebuilt")
    assert lifted.exit_code == 0 and "bot" in lifted.output


def test_audit_verify_and_export_offline(m99, embedded: EmbeddedControlPlane, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ControlLink(embedded.url).register("bot")
    m99("execute", "--auth", armed_id(m99("arm", "--by", "a@example.com", "--reason", "r")), "--force")
    assert "audit chain valid" in m99("audit", "verify").output
    out = tmp_path / "audit.jsonl"
    assert m99("audit", "export", "--jsonl", "-o", str(out)).exit_code == 0
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "genesis" and "checkpoint" in json.loads(lines[-1])
    assert "audit chain valid" in m99("audit", "verify", "--jsonl", str(out)).output
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(out.read_text().replace('"reason":"r"', '"reason":"nothing to see"'))
    bad = m99("audit", "verify", "--jsonl", str(tampered))
    assert bad.exit_code == 9 and "INVALID" in bad.output
    db = m99("audit", "verify", "--db", str(embedded.data_dir / "m99.db"))
    assert db.exit_code == 0 and "valid" in db.output


def test_tokens(m99) -> None:  # type: ignore[no-untyped-def]
    made = m99("token", "create", "--name", "oncall", "--role", "operator")
    assert made.exit_code == 0
    token_id = re.search(r"token (tok_\w+)", made.output).group(1)  # type: ignore[union-attr]
    assert "oncall" in m99("token", "list").output
    assert m99("token", "revoke", token_id).exit_code == 0
    assert "revoked" in m99("token", "list").output
    refused = m99("--token", "m99_wrong", "status")
    assert refused.exit_code == 6 and "token" in refused.output


def test_unreachable_control_plane_is_one_line(m99, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("M99_URL", "http://127.0.0.1:9")
    out = m99("status")
    assert out.exit_code == 4 and "m99 serve" in out.output and len(out.output.strip().splitlines()) == 1
