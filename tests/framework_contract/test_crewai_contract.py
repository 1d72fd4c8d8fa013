"""CrewAI behaviours ``m99.adapters.crewai`` relies on; a failure here means an upgrade changed one of
them (the most dangerous: a hook exception that is swallowed, so the tool runs anyway)."""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from crewai.hooks import (
    HookAborted,
    register_after_llm_call_hook,
    register_after_tool_call_hook,
    register_before_llm_call_hook,
    register_before_tool_call_hook,
    unregister_after_llm_call_hook,
    unregister_after_tool_call_hook,
    unregister_before_llm_call_hook,
    unregister_before_tool_call_hook,
)
from crewai.llms.base_llm import LLMCallBlockedError

from tests.adapters.crew_fakes import FINAL, agent, crew, llm, native, react, tools

pytestmark = pytest.mark.timeout(60)


class Halt(BaseException):
    pass


class Deny(HookAborted):
    pass


@pytest.fixture
def hooks() -> Iterator[Callable[[str, Callable[[Any], Any]], None]]:
    added: list[tuple[str, Callable[[Any], Any]]] = []
    register = {
        "before_tool": register_before_tool_call_hook,
        "after_tool": register_after_tool_call_hook,
        "before_llm": register_before_llm_call_hook,
        "after_llm": register_after_llm_call_hook,
    }
    unregister = {
        "before_tool": unregister_before_tool_call_hook,
        "after_tool": unregister_after_tool_call_hook,
        "before_llm": unregister_before_llm_call_hook,
        "after_llm": unregister_after_llm_call_hook,
    }

    def add(kind: str, hook: Callable[[Any], Any]) -> None:
        register[kind](hook)
        added.append((kind, hook))

    yield add
    for kind, hook in added:
        unregister[kind](hook)


def one_writer(effects: list[str], *script: Any, native_calls: bool = False) -> Any:
    write_file, _ = tools(effects)
    model = llm(*script, native_calls=native_calls)
    return model, crew(agent("writer", model, [write_file]))


@pytest.mark.parametrize("native_calls", [False, True], ids=["react", "native"])
def test_an_ordinary_exception_in_a_tool_hook_is_swallowed_and_the_tool_runs(hooks: Any, native_calls: bool) -> None:
    # THE trap: this is why the adapter never raises anything but HookAborted from a tool hook.
    def broken(ctx: Any) -> None:
        raise RuntimeError("a bug or a refusal, CrewAI cannot tell")

    hooks("before_tool", broken)
    effects: list[str] = []
    step = native("write_file", {"text": "x"}) if native_calls else react("write_file", {"text": "x"})
    _, team = one_writer(effects, step, FINAL if not native_calls else "done", native_calls=native_calls)
    team.kickoff()
    assert effects == ["write:x"]


def test_a_base_exception_in_a_tool_hook_escapes_kickoff(hooks: Any) -> None:
    def halt(ctx: Any) -> None:
        raise Halt("hard stop")

    hooks("before_tool", halt)
    effects: list[str] = []
    _, team = one_writer(effects, react("write_file", {"text": "x"}), FINAL)
    with pytest.raises(Halt):
        team.kickoff()
    assert effects == []


@pytest.mark.parametrize("native_calls", [False, True], ids=["react", "native"])
def test_hook_aborted_blocks_the_tool_and_the_after_hook_rewrites_what_the_agent_reads(
    hooks: Any, native_calls: bool
) -> None:
    inputs: list[int] = []

    def deny(ctx: Any) -> None:
        inputs.append(id(ctx.tool_input))
        assert ctx.agent.role == "writer"
        raise Deny("not now")

    def explain(ctx: Any) -> str:
        inputs.append(id(ctx.tool_input))
        return "EXPLAINED REFUSAL"

    hooks("before_tool", deny)
    hooks("after_tool", explain)
    effects: list[str] = []
    step = native("write_file", {"text": "x"}) if native_calls else react("write_file", {"text": "x"})
    model, team = one_writer(effects, step, FINAL if not native_calls else "done", native_calls=native_calls)
    assert team.kickoff().raw == "done"  # the run goes on
    assert effects == [] and "EXPLAINED REFUSAL" in str(model.seen)
    assert inputs[0] == inputs[1]  # both hooks see the same tool_input dict (the adapter keys on it)


def test_hook_aborted_from_the_llm_hook_leaves_kickoff_at_once(hooks: Any) -> None:
    calls: list[int] = []

    def deny(ctx: Any) -> None:
        calls.append(1)
        raise Deny("stop")

    hooks("before_llm", deny)
    effects: list[str] = []
    model, team = one_writer(effects, FINAL)
    with pytest.raises(Deny):
        team.kickoff()
    assert calls == [1] and model.seen == []  # a deliberate deny: no max_retry_limit retries


def test_returning_false_from_the_llm_hook_is_retried_then_raised(hooks: Any) -> None:
    calls: list[int] = []

    def block(ctx: Any) -> bool:
        calls.append(1)
        return False

    hooks("before_llm", block)
    effects: list[str] = []
    model, team = one_writer(effects, FINAL)
    with pytest.raises(LLMCallBlockedError):
        team.kickoff()
    assert len(calls) == 3 and model.seen == []  # why the adapter raises HookAborted instead


def test_tool_input_is_changed_in_place_only(hooks: Any) -> None:
    def rewrite(ctx: Any) -> None:
        ctx.tool_input["text"] = "in place"
        ctx.tool_input = {"text": "reassigned"}

    hooks("before_tool", rewrite)
    effects: list[str] = []
    _, team = one_writer(effects, native("write_file", {"text": "x"}), "done", native_calls=True)
    team.kickoff()
    assert effects == ["write:in place"]


def test_executors_copy_the_llm_hooks_once(hooks: Any) -> None:
    calls: list[int] = []
    effects: list[str] = []
    _, team = one_writer(effects, FINAL)
    team.kickoff()
    executor = team.agents[0].agent_executor
    hooks("before_llm", lambda ctx: calls.append(1))
    team.kickoff()
    assert team.agents[0].agent_executor is executor and calls == []  # why the adapter heals executors
    assert isinstance(executor.before_llm_call_hooks, list)


def test_after_llm_hooks_skip_tool_call_answers(hooks: Any) -> None:
    calls: list[Any] = []
    hooks("after_llm", lambda ctx: calls.append(ctx.response))
    effects: list[str] = []
    _, team = one_writer(effects, native("write_file", {"text": "x"}), "done", native_calls=True)
    team.kickoff()
    assert calls == ["done"]  # why the adapter reports a model call at the next one


# -- what a stopped run leaves in the user's terminal (why m99.adapters._crewai_stop does what it does) -----


def _stopped_run(deny: type[HookAborted], capfd: Any, caplog: Any) -> tuple[BaseException, str]:
    steps = 6
    effects: list[str] = []
    model, team = one_writer(effects, *(react("write_file", {"text": str(n)}) for n in range(steps)))
    team.agents[0].max_iter = 100

    def halt(ctx: Any) -> None:
        if len(model.seen) >= steps - 1:
            raise deny("stop")

    register_before_llm_call_hook(halt)
    capfd.readouterr()
    caplog.clear()
    try:
        with caplog.at_level(logging.INFO), pytest.raises(deny) as stopped:
            team.kickoff()
    finally:
        unregister_before_llm_call_hook(halt)
    out = capfd.readouterr()
    return stopped.value, out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)


def test_a_hook_aborted_run_logs_an_error_unless_marked_logged_and_leaves_the_event_scopes_unpaired(
    capfd: Any, caplog: Any
) -> None:
    stopped, said = _stopped_run(Deny, capfd, caplog)
    assert "Error executing listener call_llm_and_parse: stop" in said
    assert "Event pairing mismatch" in said  # CrewAI emits no agent execution error for a HookAborted
    frames = [f for f in traceback.extract_tb(stopped.__traceback__) if "flow" in f.filename]
    assert len(frames) > 10  # the flow runtime recurses once per step: a long traceback

    class Logged(HookAborted):
        _flow_listener_logged = True

    _, said = _stopped_run(Logged, capfd, caplog)
    assert "Error executing listener" not in said


def test_a_hook_aborted_passes_check_execution_error_which_emits_no_error_event() -> None:
    from crewai import Agent
    from crewai.events.event_bus import crewai_event_bus
    from crewai.events.types.agent_events import AgentExecutionErrorEvent

    seen: list[Any] = []
    assert list(inspect.signature(Agent._check_execution_error).parameters) == ["self", "e", "task"]
    handler = crewai_event_bus.on(AgentExecutionErrorEvent)(lambda source, event: seen.append(event))
    writer = agent("writer", llm(FINAL), [])
    task = crew(writer).tasks[0]
    try:
        try:
            raise Deny("stop")
        except Deny as exc:  # as CrewAI calls it: inside the except clause (it re-raises with a bare raise)
            with pytest.raises(Deny):
                writer._check_execution_error(exc, task)
        crewai_event_bus.flush()
    finally:
        crewai_event_bus.off(AgentExecutionErrorEvent, handler)
    assert seen == []  # the adapter emits the one for M99's stop; a CrewAI that emits it breaks this test
