"""`m99 policy check` and `m99 policy init`, driven with click's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from m99.policy import explain, load_policy, parse_text
from m99.policy.cli import policy
from m99.policy.model import LEVEL_KEYS, TRIGGER_KEYS
from m99.policy.schema import KNOWN_KEYS

TEMPLATE = Path(__file__).parent / "data" / "KILLSWITCH.template.md"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("M99_PRICES", raising=False)
    return CliRunner()


def test_check_prints_the_effective_policy_and_how_each_key_is_enforced(runner: CliRunner, tmp_path: Path) -> None:
    shutil.copy(TEMPLATE, tmp_path / "KILLSWITCH.md")
    with runner.isolated_filesystem(temp_dir=tmp_path) as cwd:
        shutil.copy(TEMPLATE, Path(cwd) / "KILLSWITCH.md")
        result = runner.invoke(policy, ["check"])  # default: ./KILLSWITCH.md
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("KILLSWITCH.md: valid, 0 warnings (spec 1.0; sections: TRIGGERS, FORBIDDEN")
    assert "cost_limit_usd = 50" in out and "[enforced]  line 12" in out
    assert "override_requires_mfa = false" in out and "[not enforced]" in out and "the repository's business" in out
    assert "retain_logs_days = 90" in out
    assert "tokens_per_minute" in out and "-> level_1_throttle (reduce_rate)" in out
    assert "error_rate_threshold" in out and "-> level_2_pause (pause_and_notify)" in out
    assert "price table: none" in out
    assert "does not load KILLSWITCH.md" not in " ".join(out.split())  # the Guard loads it: enforced is what runs


def test_check_of_an_invalid_file_lists_every_error_then_one_error_line(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "KILLSWITCH.md"
    path.write_text(
        "# KILLSWITCH\n\n## TRIGGERS\ncost_limit_usd: -5\nerror_rate_threshold: 1.5\nwhat: 1\n", encoding="utf-8"
    )
    result = runner.invoke(policy, ["check", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines() if hasattr(result, "stderr") else result.output.splitlines()
    assert lines[0].startswith("KILLSWITCH.md:4: error: TRIGGERS.cost_limit_usd: must be at least 0")
    assert lines[1].startswith("KILLSWITCH.md:5: error: TRIGGERS.error_rate_threshold: must be at most 1")
    assert lines[2].startswith("KILLSWITCH.md:6: warning: TRIGGERS.what: unknown key")
    assert lines[-1] == f"m99: error: {path} is not a valid policy (2 errors)"


def test_warnings_alone_exit_zero(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "KILLSWITCH.md"
    path.write_text("# KILLSWITCH\n\n## TRIGGERS\ncost_limit_usd: 5\nmystery: 1\n", encoding="utf-8")
    result = runner.invoke(policy, ["check", str(path)])
    assert result.exit_code == 0
    assert "warning: TRIGGERS.mystery: unknown key" in result.output and "valid, 1 warning " in result.output


def test_check_of_a_missing_or_unreadable_file_is_one_line_and_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(policy, ["check", str(tmp_path / "nope.md")])
    assert result.exit_code == 2 and result.output == f"m99: error: no policy file at {tmp_path / 'nope.md'}\n"
    result = runner.invoke(policy, ["check", str(tmp_path)])
    assert result.exit_code == 2 and result.output.startswith("m99: error: ") and "directory" in result.output


def test_check_json(runner: CliRunner) -> None:
    result = runner.invoke(policy, ["check", "--json", str(TEMPLATE)])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["valid"] and data["problems"] == []
    keys = {k["key"]: k for k in data["keys"]}
    assert keys["TRIGGERS.cost_limit_usd"]["status"] == "enforced" and keys["TRIGGERS.cost_limit_usd"]["line"] == 12
    assert keys["OVERRIDE.override_requires_mfa"]["status"] == "not enforced"
    assert {t["trigger"]: t["enters"] for t in data["triggers"]}["consecutive_failures"] == "level_2_pause"


def test_a_file_without_escalation_shows_every_trigger_stopping(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "KILLSWITCH.md"
    path.write_text("# KILLSWITCH\n\n## TRIGGERS\ntokens_per_minute: 10\nconsecutive_failures: 2\n", encoding="utf-8")
    result = runner.invoke(policy, ["check", str(path)])
    assert result.exit_code == 0
    assert "no ESCALATION section: every trigger stops the agent at once" in result.output
    assert result.output.count("-> level_3_shutdown (full_stop)") == 2


def test_network_blocking_says_the_egress_guard_enforces_it(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "KILLSWITCH.md"
    path.write_text(
        "# KILLSWITCH\n\n## FORBIDDEN\nnetwork:\n  - block_public_egress: true\n  - allowlist: [api.example.com]\n"
    )
    result = runner.invoke(policy, ["check", str(path)])
    out = " ".join(result.output.split())
    assert "[not yet enforced]" not in out and "in-process egress guard" in out and "[enforced]" in out
    assert "no trigger is set" in out


def test_init_writes_a_commented_starter_that_checks_clean(runner: CliRunner, tmp_path: Path) -> None:
    with runner.isolated_filesystem(temp_dir=tmp_path):
        result = runner.invoke(policy, ["init"])
        assert result.exit_code == 0 and result.output.startswith("wrote KILLSWITCH.md")
        text = Path("KILLSWITCH.md").read_text(encoding="utf-8")
        assert text.count("#") > 40  # commented
        parsed = parse_text(text)
        assert parsed.policy is not None and parsed.problems == ()
        assert set(parsed.policy.sections) == set(KNOWN_KEYS)
        again = runner.invoke(policy, ["init"])
        assert (
            again.exit_code == 2 and again.output == "m99: error: KILLSWITCH.md exists: pass --force to overwrite it\n"
        )
        Path("KILLSWITCH.md").write_text("changed")
        forced = runner.invoke(policy, ["init", "--force", "KILLSWITCH.md"])
        assert forced.exit_code == 0 and Path("KILLSWITCH.md").read_text(encoding="utf-8") == text
        assert runner.invoke(policy, ["check"]).exit_code == 0


def test_every_key_the_parser_knows_is_explained() -> None:
    """No key may look enforced when it is not: each known key gets an entry saying what M99 does."""
    text = (
        TEMPLATE.read_text(encoding="utf-8")
        .replace("## ESCALATION\n", "## ESCALATION\ntrigger_levels:\n  tokens_per_minute: 2\n")
        .replace("actions:\n", "action_tools:\n  drop_database: [db_drop]\nactions:\n")
        .replace("  - allowlist: []", "  - allowlist: [a.example.com]")
        .replace("block_public_egress: false", "block_public_egress: true")
    )
    policy_ = parse_text(text).policy
    assert policy_ is not None
    explained = {e.key for entries in explain(policy_).values() for e in entries}
    expected = {f"TRIGGERS.{k}" for k in TRIGGER_KEYS}
    expected |= {f"FORBIDDEN.{k}" for k in ("files", "directories", "actions", "action_tools")}
    expected |= {"FORBIDDEN.network.block_public_egress", "FORBIDDEN.network.allowlist", "ESCALATION.trigger_levels"}
    for name in LEVEL_KEYS.values():
        expected |= {f"ESCALATION.{name}.{f}" for f in ("action", "notify")}
    expected |= {"ESCALATION.level_1_throttle.timeout_minutes", "ESCALATION.level_2_pause.timeout_minutes"}
    expected |= {"ESCALATION.level_2_pause.channels", "ESCALATION.level_3_shutdown.channels"}
    expected |= {"ESCALATION.level_3_shutdown.save_state", "ESCALATION.level_3_shutdown.allow_restart"}
    expected |= {f"AUDIT.{k}" for k in KNOWN_KEYS["AUDIT"]} | {f"OVERRIDE.{k}" for k in KNOWN_KEYS["OVERRIDE"]}
    expected |= {f"METADATA.{k}" for k in KNOWN_KEYS["METADATA"]}
    assert expected <= explained, expected - explained
    statuses = {e.key: e.status for entries in explain(policy_).values() for e in entries}
    assert statuses["FORBIDDEN.network.block_public_egress"] == "enforced"
    assert statuses["ESCALATION.level_2_pause.notify"] == "enforced"  # through the server's webhook


def test_the_command_wires_into_the_main_cli(runner: CliRunner) -> None:
    from m99.cli import main

    main.add_command(policy)
    try:
        result = runner.invoke(main, ["policy", "check", str(TEMPLATE)])
        assert result.exit_code == 0 and "valid, 0 warnings" in result.output
    finally:
        main.commands.pop("policy", None)
    assert load_policy(TEMPLATE).triggers.cost_limit_usd == 50
