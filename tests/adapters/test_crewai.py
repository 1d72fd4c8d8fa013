"""The CrewAI adapter driving real crews with scripted offline LLMs (ReAct text and native calls).

A refused tool never runs (CrewAI's "blocked by hook"), and a halted agent's next model call ends
``kickoff`` with ``M99RunStopped`` — never CrewAI's fail-open path for ordinary hook exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from crewai import LLM
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMCallFailedEvent
from crewai.hooks import (
    HookAborted,
    get_after_llm_call_hooks,
    get_after_tool_call_hooks,
    get_before_llm_call_hooks,
    get_before_tool_call_hooks,
    tool_hooks,
)

import m99.adapters._crewai_hooks as hooks
import m99.adapters.crewai as cra
from m99.adapters import GuardResolver, default_resolver
from m99.adapters._patch import is_ours
from m99.credentials import REDACTED
from m99.errors import M99KillSwitchTriggered
from m99.guard import Guard

from .conftest import SECRET, OpenAIServer
from .crew_fakes import FINAL, agent, crew, llm, native, react, tools

pytestmark = pytest.mark.timeout(60)


def freeze_on_first_call(guard: Guard, level: int = 3) -> Callable[[int], None]:
    return lambda n: guard.apply_state(level, reason="drill") if n == 1 else None


def said(model: Any) -> str:
    """Everything the LLM was sent, as one string."""
    return str(model.seen)


# -- L3 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("native_calls", [False, True], ids=["react", "native"])
def test_l3_mid_run_blocks_the_tool_and_ends_kickoff(guard: Guard, native_calls: bool) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    step = native("write_file", {"text": "x"}) if native_calls else react("write_file", {"text": "x"})
    model = llm(step, FINAL, native_calls=native_calls)
    model.on_call = freeze_on_first_call(guard)
    cra.install()
    with pytest.raises(cra.M99RunStopped) as stopped:
        crew(agent("writer", model, [write_file])).kickoff()
    assert isinstance(stopped.value, M99KillSwitchTriggered) and isinstance(stopped.value, HookAborted)
    assert stopped.value.level == 3 and "drill" in str(stopped.value)
    assert effects == []
    assert len(model.seen) == 1  # no retries, no second model call


def test_l3_kickoff_async_and_standalone_agent(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    cra.install()
    model = llm(react("write_file", {"text": "x"}), FINAL)
    model.on_call = freeze_on_first_call(guard)
    with pytest.raises(cra.M99RunStopped):
        asyncio.run(asyncio.wait_for(crew(agent("writer", model, [write_file])).kickoff_async(), 30))
    guard.apply_state(0)
    model = llm(native("write_file", {"text": "y"}), "done", native_calls=True)
    model.on_call = freeze_on_first_call(guard)
    with pytest.raises(cra.M99RunStopped):
        agent("writer", model, [write_file]).kickoff("write y")
    guard.apply_state(0)
    model = llm(native("write_file", {"text": "z"}), "done", native_calls=True)
    model.on_call = freeze_on_first_call(guard)
    with pytest.raises(cra.M99RunStopped):
        asyncio.run(asyncio.wait_for(agent("writer", model, [write_file]).kickoff_async("write z"), 30))
    assert effects == []


def test_l3_before_the_run_and_restore(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    cra.install()
    guard.apply_state(3)
    model = llm(react("write_file", {"text": "x"}), FINAL)
    with pytest.raises(cra.M99RunStopped):
        crew(agent("writer", model, [write_file])).kickoff()
    assert model.seen == [] and effects == []
    guard.apply_state(0)
    assert crew(agent("writer", llm(react("write_file", {"text": "x"}), FINAL), [write_file])).kickoff().raw == "done"
    assert effects == ["write:x"]


def test_executor_built_before_install_gets_the_hooks(guard: Guard) -> None:
    # CrewAI copies the LLM-hook list into an agent's executor once; this agent's was built earlier.
    effects: list[str] = []
    write_file, _ = tools(effects)
    model = llm(react("write_file", {"text": "a"}), FINAL, react("write_file", {"text": "b"}), FINAL)
    old = crew(agent("writer", model, [write_file]))
    old.kickoff()
    cra.install()
    guard.apply_state(3)
    with pytest.raises(cra.M99RunStopped):
        old.kickoff()
    assert effects == ["write:a"]


# -- L4 ------------------------------------------------------------------------------------------------


def test_l4_read_only_runs_write_refused_and_the_agent_is_told(guard: Guard) -> None:
    effects: list[str] = []
    write_file, search = tools(effects)
    cra.install()
    guard.apply_state(4)
    model = llm(react("search", {"query": "q"}), react("write_file", {"text": "x"}), FINAL)
    result = crew(agent("writer", model, [write_file, search])).kickoff()
    assert result.raw == "done"
    assert effects == ["search:q"]
    assert "only read-only tools may run" in said(model) and "did not run" in said(model)


def test_l4_looping_on_refused_tools_is_stopped(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    cra.install()
    guard.apply_state(4)
    model = llm(*(native("write_file", {"text": str(n)}, n) for n in range(30)), native_calls=True)
    with pytest.raises(cra.M99RunStopped, match="3 refused tool calls in a row"):
        crew(agent("writer", model, [write_file])).kickoff()
    assert effects == [] and len(model.seen) == 3


# -- L1 ------------------------------------------------------------------------------------------------


def test_l1_redacts_tool_input_output_and_history(guard: Guard) -> None:
    effects: list[str] = []
    from crewai.tools import tool

    @tool("read_config")
    def read_config(name: str) -> str:
        """Read a config value."""
        effects.append(name)
        return f"{name}={SECRET}"

    guard.protect_secret(SECRET)
    guard.apply_state(1)
    cra.install()
    model = llm(native("read_config", {"name": f"key {SECRET}"}), "done", native_calls=True)
    crew(agent("writer", model, [read_config])).kickoff()
    assert effects == [f"key {REDACTED}"]
    assert SECRET not in said(model) and REDACTED in said(model)


def test_l1_revokes_a_crewai_llm_key(guard: Guard, openai_server: OpenAIServer) -> None:
    model = cra.protect_llm(LLM(model="gpt-4o-mini", api_key=SECRET, base_url=openai_server.url, max_retries=0))
    assert model.call("ping") == "pong"
    guard.apply_state(1)
    with pytest.raises(Exception, match="authentication"):
        model.call("ping")
    guard.apply_state(0)
    assert model.call("ping") == "pong"
    assert openai_server.authorizations() == [f"Bearer {SECRET}"] * 2


def test_l1_revokes_the_key_of_an_llm_the_hooks_saw(guard: Guard, openai_server: OpenAIServer) -> None:
    openai_server.reply = FINAL
    cra.install()
    real = LLM(model="gpt-4o-mini", api_key=SECRET, base_url=openai_server.url, max_retries=0)
    assert crew(agent("writer", real, [])).kickoff().raw == "done"
    guard.apply_state(1)
    with pytest.raises(Exception, match="authentication"):
        crew(agent("writer", real, [])).kickoff()
    guard.apply_state(0)
    assert crew(agent("writer", real, [])).kickoff().raw == "done"
    assert set(openai_server.authorizations()) == {f"Bearer {SECRET}"}


# -- identity, usage, fail-closed, install ----------------------------------------------------------------


def test_per_agent_identity_in_a_crew(guard: Guard, make_guard: Callable[..., Guard]) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    writer_guard = default_resolver.bind("writer", make_guard("research-bot-writer"))
    cra.install()
    researcher = agent("researcher", llm(react("write_file", {"text": "r"}), FINAL), [write_file])
    writer = agent("writer", llm(react("write_file", {"text": "w"}), FINAL), [write_file])

    writer_guard.apply_state(4)  # only the writer is restricted: the crew completes
    assert crew(researcher, writer).kickoff().raw == "done"
    assert effects == ["write:r"]

    writer_guard.apply_state(0)
    writer_guard.apply_state(3)
    researcher = agent("researcher", llm(react("write_file", {"text": "r2"}), FINAL), [write_file])
    writer = agent("writer", llm(react("write_file", {"text": "w2"}), FINAL), [write_file])
    with pytest.raises(cra.M99RunStopped) as stopped:
        crew(researcher, writer).kickoff()
    assert stopped.value.agent == "research-bot-writer"
    assert effects == ["write:r", "write:r2"]
    assert writer_guard.usage["refusals"] >= 1 and guard.usage["tool_calls"] == 2


def test_l2_refuses_delegation_between_agents(guard: Guard, make_guard: Callable[..., Guard]) -> None:
    cra.install()
    coworker_llm = llm(FINAL)
    researcher = agent("researcher", coworker_llm, [])
    delegate = native("delegate_work_to_coworker", {"task": f"use {SECRET}", "context": "c", "coworker": "researcher"})
    lead_llm = llm(delegate, "done", native_calls=True)
    lead = agent("lead", lead_llm, [])
    lead.allow_delegation = True
    team = crew(lead)
    team.agents.append(researcher)
    default_resolver.bind("researcher", make_guard("research-bot-researcher")).apply_state(2)
    assert team.kickoff().raw == "done"
    assert coworker_llm.seen == []  # the message never reached the coworker
    assert "agent-to-agent messages are cut" in said(lead_llm)


def test_usage_feed(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    from crewai.tools import tool

    @tool("broken")
    def broken(x: str) -> str:
        """Always fails."""
        raise ValueError("user bug")

    cra.install()
    model = llm(native("write_file", {"text": "x"}), native("broken", {"x": "y"}, 2), "done", native_calls=True)
    crew(agent("writer", model, [write_file, broken])).kickoff()
    usage = guard.usage
    assert usage["tool_calls"] == 2 and usage["tool_errors"] == 1 and usage["model_calls"] == 3
    assert guard.snapshot()["task"] == "writer: do the work"  # evidence: what the agent was doing


def test_a_failing_resolver_fails_closed(make_guard: Callable[..., Guard]) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)

    def broken() -> Guard:
        raise RuntimeError("no guard today")

    cra.install(GuardResolver(default=broken))
    with pytest.raises(cra.M99RunStopped, match="failing closed"):
        crew(agent("writer", llm(react("write_file", {"text": "x"}), FINAL), [write_file])).kickoff()
    assert effects == []


def test_wrap_tool_refuses_without_the_global_hooks(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    guarded = cra.wrap_tool(write_file, guard)
    assert crew(agent("writer", llm(react("write_file", {"text": "a"}), FINAL), [guarded])).kickoff().raw == "done"
    guard.apply_state(3)
    model = llm(react("write_file", {"text": "b"}), FINAL)
    assert crew(agent("writer", model, [guarded])).kickoff().raw == "done"
    assert effects == ["write:a"]
    assert "tool-call freeze" in said(model)
    assert guard.usage["tool_calls"] == 1


def test_wrap_tool_guards_an_async_tool_and_redacts_its_result(guard: Guard) -> None:
    from crewai.tools import BaseTool as CrewTool

    effects: list[str] = []

    class Lookup(CrewTool):
        name: str = "lookup"
        description: str = "Look a key up."

        def _run(self, key: str) -> str:
            raise AssertionError("the async body is the one CrewAI runs here")

        async def _arun(self, key: str) -> str:
            effects.append(key)
            return f"{key}={SECRET}"

    guard.protect_secret(SECRET, label="db")
    guarded = cra.wrap_tool(Lookup(), guard)
    assert asyncio.run(guarded.arun(key="a")) == f"a={SECRET}"  # below L1: as the tool said it
    guard.apply_state(1)
    assert asyncio.run(guarded.arun(key="b")) == f"b={REDACTED}"
    guard.apply_state(3)
    assert "tool-call freeze" in asyncio.run(guarded.arun(key="c"))
    assert effects == ["a", "b"]


def test_install_and_uninstall_are_idempotent_and_exact(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    lists = (get_before_tool_call_hooks, get_after_tool_call_hooks, get_before_llm_call_hooks, get_after_llm_call_hooks)
    before = [f() for f in lists]
    crewai_dispatch = tool_hooks.dispatch
    cra.install()
    cra.install()
    # The tool path goes through M99's wrapper of CrewAI's tool-hook dispatcher, not a registered hook.
    assert [len(f()) for f in lists] == [len(b) + d for b, d in zip(before, (0, 0, 1, 1), strict=True)]
    assert is_ours(tool_hooks.dispatch) and tool_hooks.dispatch.__wrapped__ is crewai_dispatch
    assert hooks._on_llm_failed in crewai_event_bus._sync_handlers.get(LLMCallFailedEvent, ())
    cra.uninstall()
    cra.uninstall()
    assert [f() for f in lists] == before and not cra.installed()
    assert tool_hooks.dispatch is crewai_dispatch
    assert hooks._on_llm_failed not in crewai_event_bus._sync_handlers.get(LLMCallFailedEvent, ())
    guard.apply_state(3)
    assert crew(agent("writer", llm(react("write_file", {"text": "x"}), FINAL), [write_file])).kickoff().raw == "done"
    assert effects == ["write:x"]


def test_uninstall_leaves_a_dispatcher_wrapped_after_it_and_goes_inert(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    crewai_dispatch = tool_hooks.dispatch
    cra.install()
    ours = tool_hooks.dispatch
    seen: list[Any] = []

    def theirs(point: Any, ctx: Any, **kwargs: Any) -> Any:
        seen.append(point)
        return ours(point, ctx, **kwargs)

    tool_hooks.dispatch = theirs
    try:
        cra.uninstall()
        assert tool_hooks.dispatch is theirs  # another library's wrapper stays
        guard.apply_state(3)
        assert (
            crew(agent("writer", llm(native("write_file", {"text": "x"}), "done", native_calls=True), [write_file]))
            .kickoff()
            .raw
            == "done"
        )
        assert effects == ["write:x"]  # ours under it no longer refuses
        cra.install()  # a new install goes on top, and only it refuses
        with pytest.raises(cra.M99RunStopped):
            crew(
                agent("writer", llm(native("write_file", {"text": "y"}), "done", native_calls=True), [write_file])
            ).kickoff()
        assert effects == ["write:x"]
    finally:
        cra.uninstall()
        tool_hooks.dispatch = crewai_dispatch
    assert seen  # their wrapper kept running


# -- a stopped run ends with M99's one-line error, not CrewAI's noise ---------------------------------------


def looping(guard: Guard, steps: int) -> tuple[Any, list[str]]:
    """An agent calling a tool on every step; the switch is pressed before model call ``steps``."""
    effects: list[str] = []
    write_file, _ = tools(effects)
    model = llm(*(react("write_file", {"text": str(n)}) for n in range(steps)))
    model.on_call = lambda n: guard.apply_state(3, reason="drill") if n == steps else None
    writer = agent("writer", model, [write_file])
    writer.max_iter = 100
    return writer, effects


def noise(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> list[str]:
    """What CrewAI printed or logged (warnings and up) about the run, its fake LLM's notes aside."""
    out = capfd.readouterr()
    printed = (out.out + out.err).splitlines()
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("crewai") and r.levelno >= logging.WARNING]
    return [line for line in printed + logged if line.strip() and "approximate input token count" not in line]


def short(exc: BaseException) -> list[str]:
    return "".join(traceback.format_exception(exc)).splitlines()


def crewai_frames(exc: BaseException) -> list[str]:
    return [f.filename for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}crewai{os.sep}" in f.filename]


@pytest.mark.parametrize("entry", ["kickoff", "kickoff_async", "akickoff", "agent.kickoff", "agent.kickoff_async"])
def test_a_stopped_run_ends_with_m99s_one_line_error_and_no_crewai_noise(
    guard: Guard, entry: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Measured before: a ~20-line traceback more per step (CrewAI's flow runtime recurses once per
    step), "Error executing listener" logged and two "Event pairing mismatch" warnings printed."""
    cra.install()
    writer, effects = looping(guard, 25)
    runs: dict[str, Callable[[], Any]] = {
        "kickoff": lambda: crew(writer).kickoff(),
        "kickoff_async": lambda: asyncio.run(crew(writer).kickoff_async()),
        "akickoff": lambda: asyncio.run(crew(writer).akickoff()),
        "agent.kickoff": lambda: writer.kickoff("write"),
        "agent.kickoff_async": lambda: asyncio.run(writer.kickoff_async("write")),
    }
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        with pytest.raises(cra.M99RunStopped) as stopped:
            runs[entry]()
    assert len(effects) == 24  # it ran 24 steps; the 25th tool call was refused, then the model call
    lines = short(stopped.value)
    assert lines[-1] == f"m99.adapters.crewai.M99RunStopped: {stopped.value}"
    assert crewai_frames(stopped.value) == [], "\n".join(lines)  # this test's, asyncio's and M99's frames
    assert noise(capfd, caplog) == []


def test_an_error_not_caused_by_m99_keeps_crewais_traceback_and_log(
    guard: Guard, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(HookAborted):
        pass

    def deny(ctx: Any) -> None:
        raise Broken("the user's own hook denied it")

    from crewai.hooks import register_before_llm_call_hook, unregister_before_llm_call_hook

    cra.install()
    writer, _ = looping(guard, 25)
    register_before_llm_call_hook(deny)
    try:
        with caplog.at_level(logging.INFO), pytest.raises(Broken) as raised:
            crew(writer).kickoff()
    finally:
        unregister_before_llm_call_hook(deny)
    assert len(crewai_frames(raised.value)) > 10  # CrewAI's traceback, untouched
    said = noise(capfd, caplog)
    assert any("Error executing listener" in line for line in said), said
