"""KILLSWITCH.md enforced inside real LangChain runs (offline scripted models that report usage): each
trigger at its threshold and not before, hard budgets refusing a model call before it is sent (also
under concurrency), each FORBIDDEN class with the tool body never run, the policy file protected, and
the escalation ladder walked on short timeouts.  No control plane: enforcement is local."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

import m99.adapters.langchain as lca
from m99.errors import M99KillSwitchTriggered, ModelCallRefused, ToolCallRefused
from m99.guard import Guard
from m99.network import EgressRefusedByM99
from m99.policy import Stage
from m99.policy.gate import PolicyGate, load_for_process

from .adapters.conftest import _clean_adapters, guard, make_guard  # noqa: F401  (fixtures)
from .adapters.lc_fakes import call, model

pytestmark = pytest.mark.timeout(60)

GO = {"messages": [HumanMessage("go")]}
PRICES = {"*": {"input": 1000.0, "output": 1000.0}}  # every model $0.001 a token: round figures

Govern = Callable[..., PolicyGate]


@pytest.fixture
def govern(tmp_path: Path, guard: Guard) -> Iterator[Govern]:  # noqa: F811
    """Write a KILLSWITCH.md, load it as ``m99.init`` does, and attach it to the process Guard."""
    gates: list[PolicyGate] = []

    def attach(text: str, **options: Any) -> PolicyGate:
        path = tmp_path / "KILLSWITCH.md"
        path.write_text(text)
        options.setdefault("prices", PRICES)
        gate = load_for_process(path, agent=guard.name, data_dir=tmp_path, **options)
        assert gate is not None
        guard.attach_policy(gate)
        gates.append(gate)
        lca.install()
        return gate

    yield attach
    guard.attach_policy(None)
    for gate in gates:
        gate.close()


def _tools(effects: list[str]) -> list[Any]:
    @tool
    def read_file(path: str) -> str:
        """Read a file."""
        effects.append(f"read:{path}")
        return "contents"

    @tool
    def write_file(path: str, text: str) -> str:
        """Write a file."""
        effects.append(f"write:{path}")
        return "written"

    @tool
    def drop_db(name: str) -> str:
        """Drop a database."""
        effects.append(f"drop:{name}")
        return "dropped"

    @tool
    def flaky(x: str) -> str:
        """Fails."""
        effects.append(f"flaky:{x}")
        raise ValueError("flaky failed")

    @tool
    def fetch(host: str) -> str:
        """Open a connection."""
        effects.append(f"fetch:{host}")
        sock = socket.socket()
        sock.settimeout(0.2)
        try:
            sock.connect((host, 9))
        except EgressRefusedByM99 as exc:
            return f"refused: {exc}"
        except OSError as exc:
            return f"network: {exc}"
        finally:
            sock.close()
        return "connected"

    return [read_file, write_file, drop_db, flaky, fetch]


def named(effects: list[str]) -> dict[str, Any]:
    return {t.name: t for t in _tools(effects)}


# -- triggers -------------------------------------------------------------------------------------------


def test_consecutive_failures_stop_at_the_count_and_not_before(govern: Govern, guard: Guard) -> None:  # noqa: F811
    gate = govern("## TRIGGERS\nconsecutive_failures: 3\n")
    effects: list[str] = []
    t = named(effects)
    for i in range(2):
        with pytest.raises(ValueError):
            t["flaky"].invoke({"x": str(i)})
    assert gate.engine.stage == Stage.NONE
    t["read_file"].invoke({"path": "notes.txt"})  # a success breaks the run of failures
    for i in range(2):
        with pytest.raises(ValueError):
            t["flaky"].invoke({"x": str(i)})
    assert gate.engine.stage == Stage.NONE
    with pytest.raises(ValueError):
        t["flaky"].invoke({"x": "third"})
    assert gate.engine.stage == Stage.SHUTDOWN  # no ESCALATION section: every trigger halts
    with pytest.raises(ToolCallRefused, match="stopped by the policy"):
        t["read_file"].invoke({"path": "after.txt"})
    assert "read:after.txt" not in effects
    with pytest.raises(M99KillSwitchTriggered):
        guard.check_status()


def test_api_calls_per_minute_fire_above_the_ceiling_in_a_create_agent_run(govern: Govern) -> None:
    gate = govern("## TRIGGERS\napi_calls_per_minute: 4\n")
    effects: list[str] = []
    t = named(effects)
    chat = model(*[call("read_file", {"path": f"f{i}"}, i) for i in range(2)], "done")
    create_agent(chat, [t["read_file"]]).invoke(GO)  # 3 model calls + 2 tool calls = 5 > 4
    assert gate.engine.stage == Stage.SHUTDOWN
    gate2_effects: list[str] = []
    with pytest.raises(ToolCallRefused):
        named(gate2_effects)["read_file"].invoke({"path": "x"})
    assert gate2_effects == []


def test_api_calls_per_minute_at_the_ceiling_do_not_fire(govern: Govern) -> None:
    gate = govern("## TRIGGERS\napi_calls_per_minute: 5\n")
    t = named([])
    chat = model(*[call("read_file", {"path": f"f{i}"}, i) for i in range(2)], "done")
    create_agent(chat, [t["read_file"]]).invoke(GO)  # 5 calls: at the ceiling, allowed
    assert gate.engine.stage == Stage.NONE


def test_tokens_per_minute_from_reported_usage(govern: Govern) -> None:
    gate = govern("## TRIGGERS\ntokens_per_minute: 1000\n", default_max_tokens=10)
    chat = model("a", "b", "c", usage=400)
    chat.invoke("one")
    chat.invoke("two")  # 800 tokens: under
    assert gate.engine.stage == Stage.NONE
    chat.invoke("three")  # reserved up to 10 tokens each, reported 400: 1200 > 1000
    assert gate.engine.stage == Stage.SHUTDOWN
    with pytest.raises(ModelCallRefused):
        chat.invoke("four")
    assert len(chat.seen) == 3


def test_error_rate_fires_at_the_fraction(govern: Govern) -> None:
    gate = govern("## TRIGGERS\nerror_rate_threshold: 0.5\n")
    gate.engine._meter.error_min_calls = 4  # the engine's minimum sample, small for the test
    t = named([])
    t["read_file"].invoke({"path": "a"})
    with pytest.raises(ValueError):
        t["flaky"].invoke({"x": "1"})
    t["read_file"].invoke({"path": "b"})
    assert gate.engine.stage == Stage.NONE  # 1 of 3: too few calls to judge
    t["read_file"].invoke({"path": "c"})
    assert gate.engine.stage == Stage.NONE  # 1 of 4 = 0.25
    with pytest.raises(ValueError):
        t["flaky"].invoke({"x": "2"})
    assert gate.engine.stage == Stage.NONE  # 2 of 5 = 0.4
    with pytest.raises(ValueError):
        t["flaky"].invoke({"x": "3"})
    assert gate.engine.stage == Stage.SHUTDOWN  # 3 of 6 = 0.5


def test_runtime_limit_is_enforced_by_the_timer_with_no_call_running(govern: Govern, guard: Guard) -> None:  # noqa: F811
    gate = govern("## TRIGGERS\nruntime_limit_minutes: 0.01\n")  # 0.6 s
    time.sleep(0.3)
    assert gate.engine.stage == Stage.NONE
    deadline = time.monotonic() + 5
    while gate.engine.stage != Stage.SHUTDOWN and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gate.engine.stage == Stage.SHUTDOWN
    with pytest.raises(M99KillSwitchTriggered):
        guard.check_status()


def test_session_cost_refuses_the_call_that_would_cross_it_before_it_is_sent(govern: Govern) -> None:
    # $0.001 a token; each call reserves its worst case, 200 output tokens ($0.20), and uses 150.
    gate = govern("## TRIGGERS\ncost_limit_usd: 0.5\n", default_max_tokens=200)
    chat = model("a", usage=150)
    for text in ("x", "y", "z"):
        chat.invoke(text)  # $0.30 + $0.20 worst case = $0.50: the third still fits
    assert gate.engine.stage == Stage.NONE and len(chat.seen) == 3
    with pytest.raises(ModelCallRefused, match="would pass cost_limit_usd"):
        chat.invoke("over")  # $0.45 + $0.20 > $0.50: refused, never sent
    assert len(chat.seen) == 3
    budget = gate.engine.spend.session
    assert budget is not None and budget.spent == pytest.approx(0.45)
    assert gate.engine.stage == Stage.SHUTDOWN  # spend limits shut down at once


def test_a_provider_cost_counts_without_prices_and_the_gate_says_so_at_start(
    govern: Govern, caplog: pytest.LogCaptureFixture
) -> None:
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class PricedModel(type(model("x"))):  # type: ignore[misc]
        def _generate(self, messages: Any, *args: Any, **kwargs: Any) -> ChatResult:
            self.seen.append(list(messages))
            usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12, "cost": 0.3}
            return ChatResult(generations=[ChatGeneration(message=AIMessage("hi"))], llm_output={"token_usage": usage})

    with caplog.at_level("WARNING", logger="m99.policy"):
        gate = govern("## TRIGGERS\ncost_limit_usd: 0.5\n", prices=None)
    assert any("no price table" in r.getMessage() for r in caplog.records)
    chat = PricedModel(responses=[AIMessage("hi")], seen=[])
    chat.invoke("a")
    assert gate.engine.stage == Stage.NONE
    chat.invoke("b")  # $0.60 reported: over
    assert gate.engine.stage == Stage.SHUTDOWN
    with pytest.raises(ModelCallRefused):
        chat.invoke("c")
    assert len(chat.seen) == 2


def test_concurrent_model_calls_overshoot_by_at_most_what_was_in_flight(govern: Govern) -> None:
    # Worst case per call: 100 tokens = $0.10; each call really uses 100 tokens; limit $1.00.
    gate = govern("## TRIGGERS\ncost_limit_usd: 1.0\n", default_max_tokens=100)
    chat = model("a", usage=100)
    sent: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for _ in range(5):
            try:
                chat.invoke(f"call {n}")
                with lock:
                    sent.append(n)
            except ModelCallRefused:
                with lock:
                    refused.append(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    budget = gate.engine.spend.session
    assert budget is not None
    assert len(sent) == 10 and len(refused) == 30  # exactly what fits: the worst cases held
    assert budget.spent == pytest.approx(1.0) and budget.reserved == pytest.approx(0.0)


# -- forbidden ----------------------------------------------------------------------------------------------


def test_forbidden_files_and_directories_are_refused_with_the_body_never_run(govern: Govern, tmp_path: Path) -> None:
    govern('## FORBIDDEN\nfiles:\n  - .env\n  - "**/*.pem"\ndirectories:\n  - secrets\n')
    effects: list[str] = []
    t = named(effects)
    for args in ({"path": ".env"}, {"path": "keys/server.pem"}, {"path": str(tmp_path / "secrets" / "a.txt")}):
        with pytest.raises(ToolCallRefused, match=r"\(files: |\(directories: "):
            t["read_file"].invoke(args)
    assert effects == []
    t["read_file"].invoke({"path": "notes.txt"})
    assert effects == ["read:notes.txt"]


def test_forbidden_action_by_tool_name_in_a_create_agent_run(govern: Govern) -> None:
    gate = govern("## FORBIDDEN\nactions:\n  - drop_database\n")
    effects: list[str] = []
    t = named(effects)
    chat = model(call("drop_db", {"name": "prod"}), "done")
    with pytest.raises(ToolCallRefused, match="forbidden action 'drop_database'"):
        create_agent(chat, [t["drop_db"]]).invoke(GO)
    assert effects == [] and gate.engine.stage == Stage.NONE  # a refused rule is no trigger


def test_forbidden_network_blocks_public_egress_but_not_the_allowlist(govern: Govern) -> None:
    govern("## FORBIDDEN\nnetwork:\n  - block_public_egress: true\n  - allowlist:\n      - 192.0.2.10\n")
    effects: list[str] = []
    t = named(effects)
    assert t["fetch"].invoke({"host": "8.8.8.8"}).startswith("refused: ")
    assert not t["fetch"].invoke({"host": "192.0.2.10"}).startswith("refused")  # allow-listed
    assert not t["fetch"].invoke({"host": "127.0.0.1"}).startswith("refused")  # not public
    with pytest.raises(EgressRefusedByM99):
        socket.getaddrinfo("example.com", 443)


def test_the_policy_file_cannot_be_written_by_a_tool(govern: Govern, guard: Guard, tmp_path: Path) -> None:  # noqa: F811
    guard.declare_read_only("read_file")
    govern("## TRIGGERS\nconsecutive_failures: 3\n---\n## OVERRIDE\nallow_agent_modification: false\n")
    effects: list[str] = []
    t = named(effects)
    with pytest.raises(ToolCallRefused, match=r"\(protected: "):
        t["write_file"].invoke({"path": str(tmp_path / "KILLSWITCH.md"), "text": "cost_limit_usd: 1e9"})
    t["read_file"].invoke({"path": str(tmp_path / "KILLSWITCH.md")})  # a read-only tool may read it
    assert effects == [f"read:{tmp_path / 'KILLSWITCH.md'}"]


def test_the_fast_allowed_path_still_refuses_every_way_of_naming_the_policy_file_and_its_log(
    govern: Govern,
    guard: Guard,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only protected files (no FORBIDDEN paths, nothing in force): the Guard takes the lock-free path
    # for a call that names none of them; every other spelling must still reach the scan and be refused.
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.setenv("HOME", str(tmp_path))
    text = "## TRIGGERS\nconsecutive_failures: 3\n---\n## OVERRIDE\nallow_agent_modification: false\n"
    gate = govern(text + "---\n## AUDIT\nlog_file: ./m99-audit.jsonl\n")
    assert gate.engine.tools_clear and not gate.engine.paths.has_rules
    named_ = (
        {"path": "../KILLSWITCH.md"},  # relative to the working directory
        {"path": "./../sub/../KILLSWITCH.md"},
        {"path": "~/KILLSWITCH.md"},  # ~ expanded
        {"path": "file://" + str(tmp_path / "KILLSWITCH.md")},
        {"cmd": "sed -i s/3/300/ ../killswitch.md ../KILLSWITCH.md"},
        {"opts": {"targets": [{"p": "x"}, {"p": str(tmp_path / "KILLSWITCH.md")}]}},  # nested dict/list
        {"opts": [("a", "../KILLSWITCH.md")]},
        {str(tmp_path / "KILLSWITCH.md"): "a path as a key"},
        {"data": b"rm ../KILLSWITCH.md"},
        {"path": "../m99-audit.jsonl"},  # the policy's own log
        {"path": "~/link.md/../KILLSWITCH.md"},
    )
    for args in named_:
        with pytest.raises(ToolCallRefused, match=r"\(protected: "):
            guard.check_tool("write_file", args)
    # The allowed path: nothing named, nothing refused; and a tool call's end is counted as before.
    for args in (None, {"q": "weather in paris", "n": 3}, "plain text", {"nested": {"list": [1, "two"]}}):
        guard.check_tool("search", args)
    effects: list[str] = []
    t = named(effects)
    for _ in range(2):
        with pytest.raises(ValueError, match="flaky failed"):
            t["flaky"].invoke({"x": "plain"})
    assert gate.engine.measured()["consecutive_failures"] == 2
    assert gate.engine.stage == Stage.NONE


def test_a_symlink_to_the_policy_file_made_by_the_agent_names_it(
    govern: Govern,
    guard: Guard,  # noqa: F811
    tmp_path: Path,
) -> None:
    govern("## TRIGGERS\nconsecutive_failures: 3\n---\n## OVERRIDE\nallow_agent_modification: false\n")
    with pytest.raises(ToolCallRefused, match=r"\(protected: "):
        guard.check_tool("shell", {"cmd": f"ln -s {tmp_path / 'KILLSWITCH.md'} /tmp/innocent.md"})


# -- escalation ---------------------------------------------------------------------------------------------

LADDER = """## TRIGGERS
api_calls_per_minute: 2
---
## ESCALATION
level_1_throttle:
  action: reduce_rate
  timeout_minutes: 0.01
level_2_pause:
  action: pause_and_notify
  timeout_minutes: 0.01
level_3_shutdown:
  action: full_stop
  allow_restart: true
"""


def test_escalation_walks_throttle_pause_shutdown_with_short_timeouts(govern: Govern) -> None:
    gate = govern(LADDER)
    seen: list[tuple[str, str]] = []
    gate.on_event(lambda e: seen.append((e.stage.key, e.trigger)) if e.kind == "transition" else None)
    effects: list[str] = []
    t = named(effects)
    for i in range(3):
        t["read_file"].invoke({"path": str(i)})
    assert gate.engine.stage == Stage.THROTTLE
    deadline = time.monotonic() + 10
    while gate.engine.stage != Stage.SHUTDOWN and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == [
        ("level_1_throttle", "api_calls_per_minute"),
        ("level_2_pause", "timeout_minutes"),
        ("level_3_shutdown", "timeout_minutes"),
    ]
    with pytest.raises(ToolCallRefused):
        t["read_file"].invoke({"path": "late"})
    assert "read:late" not in effects


def test_a_paused_call_waits_and_runs_once_an_operator_resumes(govern: Govern) -> None:
    gate = govern(
        LADDER.replace("timeout_minutes: 0.01\nlevel_2", "timeout_minutes: 5\nlevel_2").replace(
            "  timeout_minutes: 0.01\nlevel_3", "  timeout_minutes: 5\nlevel_3"
        )
    )
    effects: list[str] = []
    t = named(effects)
    for i in range(3):
        t["read_file"].invoke({"path": str(i)})
    gate.engine.escalate("ops@example.com", "look first")
    assert gate.engine.stage == Stage.PAUSE
    done = threading.Event()

    def paused_call() -> None:
        t["read_file"].invoke({"path": "held"})
        done.set()

    threading.Thread(target=paused_call, daemon=True).start()
    assert not done.wait(0.5) and "read:held" not in effects  # waits while paused
    gate.engine.resume("ops@example.com", "checked")
    assert done.wait(5) and "read:held" in effects


def test_the_jsonl_audit_log_records_refusals_and_transitions_of_a_real_run(govern: Govern, tmp_path: Path) -> None:
    import json

    govern(
        "## TRIGGERS\nconsecutive_failures: 2\n---\n## FORBIDDEN\nactions:\n  - drop_database\n---\n"
        "## AUDIT\nlog_file: .killswitch.log\nlog_format: jsonl\n"
        "log_fields:\n  - timestamp\n  - trigger_type\n  - trigger_value\n  - trigger_limit\n  - action_taken\n"
    )
    t = named([])
    with pytest.raises(ToolCallRefused, match="protected"):  # the agent's tools may not touch the log
        t["write_file"].invoke({"path": str(tmp_path / ".killswitch.log"), "text": ""})
    with pytest.raises(ToolCallRefused):
        t["drop_db"].invoke({"name": "prod"})
    for i in range(2):
        with pytest.raises(ValueError):
            t["flaky"].invoke({"x": str(i)})
    lines = [json.loads(line) for line in (tmp_path / ".killswitch.log").read_text().splitlines()]
    assert [set(line) for line in lines] == [
        {"timestamp", "trigger_type", "trigger_value", "trigger_limit", "action_taken"}
    ] * 3
    assert lines[0]["trigger_type"] == "forbidden_protected"
    assert lines[1]["trigger_type"] == "forbidden_action" and lines[1]["action_taken"] == "refuse_tool_call"
    assert lines[2]["trigger_type"] == "consecutive_failures" and lines[2]["action_taken"] == "full_stop"
    assert lines[2]["trigger_value"] == 2 and lines[2]["trigger_limit"] == 2
