"""KILLSWITCH.md parsing: the published template as it is, partial files, and every problem naming its line
and key."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest
import yaml

from m99.errors import ConfigError
from m99.policy import MAX_BYTES, PolicyError, Stage, load_policy, parse_file, parse_text
from m99.policy.model import DEFAULT_LOG_FIELDS

TEMPLATE = Path(__file__).parent / "data" / "KILLSWITCH.template.md"
TEMPLATE_SHA256 = "1fbc371b1e0223de7f8b03f7e3cfa175ab5ba2ca3573f57faa7565fb74c03c3f"


def md(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def only(result, severity: str = "error"):
    found = [p for p in result.problems if p.severity == severity]
    assert len(found) == 1, result.problems
    return found[0]


def test_the_fixture_is_the_published_template_byte_for_byte() -> None:
    assert hashlib.sha256(TEMPLATE.read_bytes()).hexdigest() == TEMPLATE_SHA256


def test_the_published_template_is_not_one_yaml_document() -> None:
    with pytest.raises(yaml.YAMLError):
        list(yaml.safe_load_all(TEMPLATE.read_text(encoding="utf-8")))


def test_the_official_template_parses_unchanged_without_a_problem() -> None:
    result = parse_file(TEMPLATE)
    assert result.problems == ()
    policy = result.policy
    assert policy is not None
    assert policy.title == "KILLSWITCH"
    assert "Emergency shutdown protocol" in policy.description
    assert policy.sections == ("TRIGGERS", "FORBIDDEN", "ESCALATION", "AUDIT", "OVERRIDE", "METADATA")
    t = policy.triggers
    assert (t.cost_limit_usd, t.cost_limit_daily_usd, t.tokens_per_minute, t.api_calls_per_minute) == (
        50,
        200,
        100000,
        60,
    )
    assert (t.error_rate_threshold, t.runtime_limit_minutes, t.consecutive_failures) == (0.25, 60, 5)
    f = policy.forbidden
    assert f.files[:3] == (".env", ".env.*", "**/*.pem") and "~/.ssh/**" in f.files
    assert f.directories == ("/etc", "/var", "/sys", "/proc")
    assert f.network.block_public_egress is False and f.network.allowlist == ()
    assert "drop_database" in f.actions and len(f.actions) == 7
    esc = policy.escalation
    assert esc.level(Stage.THROTTLE).timeout_minutes == 5
    pause = esc.level(Stage.PAUSE)
    assert pause.notify and [(c.kind, c.target) for c in pause.channels] == [
        ("email", "ops@example.com"),
        ("slack", "#ai-alerts"),
    ]
    stop = esc.level(Stage.SHUTDOWN)
    assert stop.save_state and stop.allow_restart and stop.action == "full_stop"
    assert policy.audit.log_file == ".killswitch.log" and policy.audit.log_fields == DEFAULT_LOG_FIELDS
    assert policy.audit.retain_logs_days == 90
    assert policy.override.allow_agent_modification is False and policy.override.protected_branch == "main"
    assert policy.metadata["spec_version"] == "1.0" and policy.metadata["last_reviewed"] == "2026-03-10"
    # every key keeps the line it is on in the file
    lines = TEMPLATE.read_text(encoding="utf-8").split("\n")
    for key in (
        "TRIGGERS.cost_limit_usd",
        "FORBIDDEN.actions",
        "ESCALATION.level_2_pause.timeout_minutes",
        "OVERRIDE.allow_agent_modification",
    ):
        assert lines[policy.line(key) - 1].lstrip().startswith(key.rsplit(".", 1)[1]), key


def test_the_default_entry_levels_follow_the_spec_intent() -> None:
    esc = load_policy(TEMPLATE).escalation
    assert esc.entry("tokens_per_minute") == esc.entry("api_calls_per_minute") == Stage.THROTTLE
    assert esc.entry("error_rate_threshold") == esc.entry("consecutive_failures") == Stage.PAUSE
    assert (
        esc.entry("cost_limit_usd")
        == esc.entry("cost_limit_daily_usd")
        == esc.entry("runtime_limit_minutes")
        == Stage.SHUTDOWN
    )


def test_a_file_with_only_some_sections_parses() -> None:
    result = parse_text(
        md("""
        # KILLSWITCH

        ## TRIGGERS
        cost_limit_usd: 5
        consecutive_failures: 3
    """)
    )
    assert result.problems == ()
    policy = result.policy
    assert policy is not None and policy.sections == ("TRIGGERS",)
    assert policy.triggers.cost_limit_usd == 5 and policy.triggers.tokens_per_minute is None
    # no ESCALATION: every trigger halts at once
    assert not policy.escalation.present
    assert policy.escalation.entry("consecutive_failures") == Stage.SHUTDOWN
    assert policy.override.allow_agent_modification is False
    assert policy.audit.log_file is None


def test_a_partial_ladder_sends_a_trigger_to_the_next_declared_level() -> None:
    policy = load_policy_text("""
        ## ESCALATION
        level_1_throttle:
          action: reduce_rate
    """)
    esc = policy.escalation
    assert esc.defined() == (Stage.THROTTLE, Stage.SHUTDOWN)
    assert esc.entry("consecutive_failures") == Stage.SHUTDOWN  # its pause is not declared
    assert esc.next_after(Stage.THROTTLE) == Stage.SHUTDOWN


def load_policy_text(text: str):
    result = parse_text("# KILLSWITCH\n\n" + md(text))
    assert result.policy is not None, result.problems
    return result.policy


def test_code_fences_around_the_yaml_and_crlf_are_accepted() -> None:
    result = parse_text("# KILLSWITCH\r\n\r\n## TRIGGERS\r\n```yaml\r\ntokens_per_minute: 1000\r\n```\r\n")
    assert result.problems == () and result.policy.triggers.tokens_per_minute == 1000


def test_unknown_keys_and_sections_are_warnings_naming_line_and_key() -> None:
    result = parse_text(
        md("""
        # KILLSWITCH

        ## TRIGGERS
        cost_limit_usd: 5
        cost_limit_usdd: 7

        ## NOTES
        anything: here
    """)
    )
    assert result.policy is not None  # warnings do not invalidate
    warnings = {(p.line, p.key) for p in result.warnings}
    assert (5, "TRIGGERS.cost_limit_usdd") in warnings
    assert (7, "NOTES") in warnings
    typo = next(p for p in result.warnings if p.key == "TRIGGERS.cost_limit_usdd")
    assert "did you mean 'cost_limit_usd'" in typo.message
    assert str(typo) == f"KILLSWITCH.md:5: warning: TRIGGERS.cost_limit_usdd: {typo.message}"


@pytest.mark.parametrize(
    ("body", "line", "key", "words"),
    [
        ("## TRIGGERS\ncost_limit_usd: -5\n", 4, "TRIGGERS.cost_limit_usd", "at least 0"),
        ("## TRIGGERS\ntokens_per_minute: 0\n", 4, "TRIGGERS.tokens_per_minute", "at least 1"),
        ("## TRIGGERS\nerror_rate_threshold: 25\n", 4, "TRIGGERS.error_rate_threshold", "at most 1"),
        ("## TRIGGERS\nerror_rate_threshold: 0\n", 4, "TRIGGERS.error_rate_threshold", "greater than 0"),
        ('## TRIGGERS\ncost_limit_usd: "50"\n', 4, "TRIGGERS.cost_limit_usd", "must be a number"),
        ("## TRIGGERS\ncost_limit_usd: true\n", 4, "TRIGGERS.cost_limit_usd", "must be a number"),
        ("## TRIGGERS\ncost_limit_usd: .nan\n", 4, "TRIGGERS.cost_limit_usd", "finite"),
        ("## TRIGGERS\nconsecutive_failures: 2.5\n", 4, "TRIGGERS.consecutive_failures", "whole number"),
        ("## FORBIDDEN\nfiles: .env\n", 4, "FORBIDDEN.files", "must be a list"),
        ("## FORBIDDEN\nfiles:\n  - ok\n  - 12\n", 6, "FORBIDDEN.files[1]", "must be a text"),
        ('## FORBIDDEN\nfiles:\n  - "[abc"\n', 5, "FORBIDDEN.files[0]", "glob"),
        (
            '## FORBIDDEN\nnetwork:\n  - block_public_egress: "yes"\n',
            5,
            "FORBIDDEN.network.block_public_egress",
            "true or false",
        ),
        ('## FORBIDDEN\nnetwork:\n  - allowlist: ["bad host!"]\n', 5, "FORBIDDEN.network.allowlist[0]", "not a host"),
        (
            "## ESCALATION\nlevel_1_throttle:\n  action: slow_down\n",
            5,
            "ESCALATION.level_1_throttle.action",
            "unknown action 'slow_down'",
        ),
        (
            "## ESCALATION\nlevel_2_pause:\n  action: full_stop\n",
            5,
            "ESCALATION.level_2_pause.action",
            "action of level_3_shutdown",
        ),
        (
            "## ESCALATION\nlevel_2_pause:\n  timeout_minutes: -1\n",
            5,
            "ESCALATION.level_2_pause.timeout_minutes",
            "greater than 0",
        ),
        (
            "## ESCALATION\nlevel_2_pause:\n  channels:\n    - just-a-string\n",
            6,
            "ESCALATION.level_2_pause.channels[0]",
            "kind: target",
        ),
        (
            "## ESCALATION\ntrigger_levels:\n  cost_limit_usd: 7\n",
            5,
            "ESCALATION.trigger_levels.cost_limit_usd",
            "must be 1, 2, 3",
        ),
        ("## AUDIT\nlog_format: csv\n", 4, "AUDIT.log_format", "jsonl"),
        ("## AUDIT\nretain_logs_days: -3\n", 4, "AUDIT.retain_logs_days", "at least 0"),
        ("## OVERRIDE\nallow_agent_modification: maybe\n", 4, "OVERRIDE.allow_agent_modification", "true or false"),
        ("## TRIGGERS\ncost_limit_usd: 1\ncost_limit_usd: 2\n", 5, "TRIGGERS", "given twice"),
        ("## TRIGGERS\nbase: &b 1\ncost_limit_usd: *b\n", 4, "TRIGGERS", "aliases are not allowed"),
        ("## TRIGGERS\ncost_limit_usd: [1\n", 4, "TRIGGERS", "not valid YAML"),
        ("## TRIGGERS\n- 1\n- 2\n", 3, "TRIGGERS", "must be a mapping"),
        ("## TRIGGERS\ncost_limit_usd: 1\n\n## TRIGGERS\ncost_limit_usd: 2\n", 6, "TRIGGERS", "given twice"),
        ("cost_limit_usd: 50\n\n## TRIGGERS\n", 3, "cost_limit_usd", "belongs to no section"),
    ],
)
def test_every_error_names_its_line_and_key(body: str, line: int, key: str, words: str) -> None:
    result = parse_text("# KILLSWITCH\n\n" + body)
    assert result.policy is None
    problem = next((p for p in result.errors if p.key == key), None)
    assert problem is not None, result.problems
    assert problem.line == line, problem
    assert words in problem.message, problem
    assert str(problem).startswith(f"KILLSWITCH.md:{line}: error: {key}: ")


def test_load_policy_raises_a_config_error_listing_every_error(tmp_path: Path) -> None:
    path = tmp_path / "KILLSWITCH.md"
    path.write_text("# KILLSWITCH\n\n## TRIGGERS\ncost_limit_usd: -1\ntokens_per_minute: x\n", encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert isinstance(err.value, ConfigError) and err.value.exit_code == 2
    assert len(err.value.problems) == 2
    assert str(err.value).startswith("KILLSWITCH.md:4: error: TRIGGERS.cost_limit_usd:") and "(and 1 more)" in str(
        err.value
    )


def test_hostile_files_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    big = tmp_path / "big.md"
    big.write_bytes(b"# KILLSWITCH\n" + b"#" * MAX_BYTES)
    with pytest.raises(PolicyError, match="larger than 1024 KiB"):
        parse_file(big)
    binary = tmp_path / "bin.md"
    binary.write_bytes(b"# KILLSWITCH\n\n\xff\xfe\x00")
    with pytest.raises(PolicyError, match=r":3: not UTF-8"):
        parse_file(binary)
    with pytest.raises(PolicyError, match="no policy file"):
        parse_file(tmp_path / "missing.md")
    with pytest.raises(PolicyError, match="is a directory"):
        parse_file(tmp_path)


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    bomb = "## TRIGGERS\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    bomb += "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("bcdefgh", "cdefghi", strict=True)
    )
    result = parse_text("# KILLSWITCH\n\n" + bomb)
    assert "aliases are not allowed" in only(result).message


def test_unsafe_yaml_tags_are_refused() -> None:
    result = parse_text('# KILLSWITCH\n\n## METADATA\nowner: !!python/object/apply:os.system ["true"]\n')
    assert result.policy is None and "is not allowed" in only(result).message
    result = parse_text("# KILLSWITCH\n\n## METADATA\nowner: !!python/name:os.system\n")
    assert result.policy is None and "unreadable value" in only(result).message


def test_network_accepts_the_template_list_and_a_plain_mapping() -> None:
    listed = load_policy_text("""
        ## FORBIDDEN
        network:
          - block_public_egress: true
          - allowlist: [api.openai.com, "*.example.com", "10.0.0.0/8", "db.internal:5432"]
    """).forbidden.network
    mapped = load_policy_text("""
        ## FORBIDDEN
        network:
          block_public_egress: true
          allowlist:
            - api.openai.com
            - "*.example.com"
            - 10.0.0.0/8
            - db.internal:5432
    """).forbidden.network
    assert listed == mapped
    assert listed.allows("api.openai.com", 443) and listed.allows("a.b.example.com")
    assert not listed.allows("example.com") and not listed.allows("evil.com", 443)
    assert listed.allows("10.1.2.3") and listed.allows("192.168.1.1") and listed.allows("127.0.0.1")
    assert listed.allows("localhost") and listed.allows("::1") and not listed.allows("8.8.8.8")
    assert not listed.allows("::ffff:8.8.8.8")
    assert listed.allows("db.internal", 5432) and not listed.allows("db.internal", 22)


def test_an_allowlist_without_blocking_warns_that_it_does_nothing() -> None:
    result = parse_text("# KILLSWITCH\n\n## FORBIDDEN\nnetwork:\n  - allowlist: [a.com]\n")
    assert "no effect" in only(result, "warning").message
    assert result.policy.forbidden.network.allows("anything.example", 1)


def test_the_trigger_levels_extension_moves_a_trigger() -> None:
    policy = load_policy_text("""
        ## ESCALATION
        level_1_throttle: {action: reduce_rate}
        level_2_pause: {action: pause_and_notify}
        trigger_levels:
          consecutive_failures: level_1_throttle
          tokens_per_minute: 3
    """)
    assert policy.escalation.entry("consecutive_failures") == Stage.THROTTLE
    assert policy.escalation.entry("tokens_per_minute") == Stage.SHUTDOWN


def test_a_missing_title_and_a_newer_spec_version_warn() -> None:
    result = parse_text('## METADATA\nspec_version: "2.0"\n')
    assert {p.message.split(";")[0] for p in result.warnings} >= {
        "no '# KILLSWITCH' title line",
        "written for KILLSWITCH.md 2.0",
    }


def test_the_policy_package_imports_no_framework_and_no_server() -> None:
    import subprocess
    import sys

    code = "import sys, m99.policy, m99.policy.cli; print(','.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        .stdout.strip()
        .split(",")
    )
    heavy = {
        "langchain_core",
        "langchain",
        "langgraph",
        "crewai",
        "autogen_agentchat",
        "autogen_core",
        "fastapi",
        "uvicorn",
        "pydantic",
        "httpx",
    }
    assert not loaded & heavy, loaded & heavy


def test_a_problem_without_a_key_still_says_its_severity() -> None:
    result = parse_text("## TRIGGERS\ncost_limit_usd: 1\n")
    assert [str(p) for p in result.problems] == ["KILLSWITCH.md:1: warning: no '# KILLSWITCH' title line"]


def test_the_policy_package_all_is_its_public_api() -> None:
    import types

    import m99.policy as pkg

    public = {n for n in dir(pkg) if not n.startswith("_") and not isinstance(getattr(pkg, n), types.ModuleType)}
    assert set(pkg.__all__) == public - {"annotations"}
