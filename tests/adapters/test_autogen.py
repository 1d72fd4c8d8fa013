"""The AutoGen adapter driving real AssistantAgents and teams with replayed offline model answers.

Every run is bounded by ``asyncio.wait_for``: the AutoGen traps (an exception or a cancellation on the
tool path, a dropped team message) hang forever rather than fail, so "no hang" is asserted, not hoped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import ToolCallExecutionEvent
from autogen_agentchat.teams import BaseGroupChat, RoundRobinGroupChat
from autogen_core import SingleThreadedAgentRuntime
from autogen_core.tools import StaticWorkbench
from autogen_ext.models.openai import OpenAIChatCompletionClient
from autogen_ext.tools.mcp import McpWorkbench

import m99.adapters.autogen as aga
from m99.adapters import default_resolver
from m99.credentials import REDACTED
from m99.errors import M99KillSwitchTriggered, ModelCallRefused
from m99.guard import Guard

from .ag_fakes import MCP_SERVER, MODEL_INFO, ScriptedClient, agent, call, tools
from .conftest import SECRET, OpenAIServer

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
    """Run with a deadline: a hang fails the test instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def freeze_on_first_call(guard: Guard, level: int = 3) -> Callable[[int], None]:
    return lambda n: guard.apply_state(level, reason="drill") if n == 1 else None


def results(task_result: Any) -> list[Any]:
    return [r for m in task_result.messages if isinstance(m, ToolCallExecutionEvent) for r in m.content]


# -- L3 ------------------------------------------------------------------------------------------------


def test_l3_mid_run_refuses_the_tool_and_ends_the_run_with_an_m99_error(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    aga.install()
    client = ScriptedClient([call("write_file", {"text": "x"})], on_call=freeze_on_first_call(guard))
    with pytest.raises(ModelCallRefused) as refused:
        run(agent("writer", client, [write_file]).run(task="go"))
    assert isinstance(refused.value, M99KillSwitchTriggered) and "drill" in str(refused.value)
    assert effects == [] and client.calls == 1


def test_l3_single_iteration_agent_stops_cleanly_with_the_refusal(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    aga.install()
    client = ScriptedClient([call("write_file", {"text": "x"})], on_call=freeze_on_first_call(guard))
    result = run(agent("writer", client, [write_file], max_tool_iterations=1).run(task="go"))
    (refusal,) = results(result)
    assert refusal.is_error and "tool-call freeze" in refusal.content
    assert "did not run" in str(result.messages[-1].content)
    assert effects == []


def test_l3_before_the_run_streaming_agent_and_restore(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    writer = agent("writer", ScriptedClient([call("write_file", {"text": "x"})]), [write_file])
    aga.install()  # after the agent was built: the class-level seams cover it
    guard.apply_state(3)
    with pytest.raises(ModelCallRefused):
        run(writer.run(task="go"))
    streaming = agent("streamer", ScriptedClient([call("write_file", {"text": "s"})]), [write_file])
    streaming._model_client_stream = True
    with pytest.raises(ModelCallRefused):
        run(streaming.run(task="go"))
    guard.apply_state(0)
    run(writer.run(task="go"))
    assert effects == ["write:x"]


# -- L4 ------------------------------------------------------------------------------------------------


def test_l4_read_only_runs_write_refused(guard: Guard) -> None:
    effects: list[str] = []
    write_file, search = tools(effects)
    aga.install()
    guard.apply_state(4)
    client = ScriptedClient([call("search", {"query": "q"}), call("write_file", {"text": "x"}, 2), "done"])
    result = run(agent("writer", client, [write_file, search]).run(task="go"))
    found, refused = results(result)
    assert not found.is_error and found.content == "results for q"
    assert refused.is_error and "only read-only tools" in refused.content
    assert result.messages[-1].content == "done"
    assert effects == ["search:q"]


# -- L1 ------------------------------------------------------------------------------------------------


def test_l1_redacts_tool_arguments_and_results(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    guard.protect_secret(SECRET)
    guard.apply_state(1)
    aga.install()
    result = run(agent("writer", ScriptedClient([call("write_file", {"text": SECRET})]), [write_file]).run(task="go"))
    assert effects == [f"write:{REDACTED}"]
    assert SECRET not in str(results(result))


def test_l1_revokes_openai_chat_completion_client_keys(guard: Guard, openai_server: OpenAIServer) -> None:
    raw = OpenAIChatCompletionClient(
        model="m99-local-model", api_key=SECRET, base_url=openai_server.url, model_info=MODEL_INFO, max_retries=0
    )
    client = aga.GuardedModelClient(raw, guard)
    ask = lambda: run(client.create([aga_user("hi")]))  # noqa: E731
    assert ask().content == "pong"
    guard.apply_state(1)
    assert raw._client.api_key == "" and raw._raw_config["api_key"] == ""
    with pytest.raises(Exception, match="authentication"):
        ask()
    guard.apply_state(0)
    assert ask().content == "pong" and raw._raw_config["api_key"] == SECRET
    assert openai_server.authorizations() == [f"Bearer {SECRET}"] * 2


def test_l1_global_install_revokes_the_client_an_agent_uses(guard: Guard, openai_server: OpenAIServer) -> None:
    aga.install()
    client = OpenAIChatCompletionClient(
        model="m99-local-model", api_key=SECRET, base_url=openai_server.url, model_info=MODEL_INFO, max_retries=0
    )
    talker = AssistantAgent("talker", model_client=client)
    assert run(talker.run(task="hi")).messages[-1].content == "pong"
    guard.apply_state(1)
    with pytest.raises(Exception, match="authentication"):
        run(talker.run(task="hi"))
    guard.apply_state(0)
    assert run(talker.run(task="hi")).messages[-1].content == "pong"
    assert openai_server.authorizations() == [f"Bearer {SECRET}"] * 2


def aga_user(text: str) -> Any:
    from autogen_core.models import UserMessage

    return UserMessage(content=text, source="user")


# -- teams: L2, per-agent identity, termination ----------------------------------------------------------


def test_l2_withholds_team_messages_without_hanging(guard: Guard, make_guard: Callable[..., Guard]) -> None:
    aga.install()
    alice_guard = default_resolver.bind("alice", make_guard("research-bot-alice"))
    bob = agent("bob", ScriptedClient(["bob says hi"]))
    team = RoundRobinGroupChat(
        [agent("alice", ScriptedClient([f"alice knows {SECRET}"])), bob],
        termination_condition=MaxMessageTermination(4),
    )
    alice_guard.apply_state(2)
    result = run(team.run(task="go"))
    assert [m.source for m in result.messages] == ["user", "alice", "bob", "alice"]
    seen_by_bob = [str(m.content) for m in run(bob._model_context.get_messages())]
    assert seen_by_bob[0] == "go" and seen_by_bob[1] == aga.WITHHELD
    assert all(SECRET not in text for text in seen_by_bob)


@pytest.mark.filterwarnings("ignore:Intervention handler on_response returned None:RuntimeWarning")
def test_l2_intervention_handler_on_an_explicit_runtime(guard: Guard) -> None:
    async def scenario() -> list[str]:
        runtime = SingleThreadedAgentRuntime(intervention_handlers=[aga.M99InterventionHandler(guard)])
        bob = agent("bob", ScriptedClient(["bob says hi"]))
        team = RoundRobinGroupChat(
            [agent("alice", ScriptedClient([f"alice knows {SECRET}"])), bob],
            termination_condition=MaxMessageTermination(3),
            runtime=runtime,
        )
        runtime.start()
        try:
            await team.run(task="go")
        finally:
            await runtime.stop()
        return [str(m.content) for m in await bob._model_context.get_messages()]

    guard.apply_state(2)
    assert run(scenario())[1] == aga.WITHHELD


def test_per_agent_identity_in_a_team(guard: Guard, make_guard: Callable[..., Guard]) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    aga.install()
    bob_guard = default_resolver.bind("bob", make_guard("research-bot-bob"))
    alice = agent("alice", ScriptedClient([call("write_file", {"text": "a"}), "alice done"]), [write_file])
    bob = agent("bob", ScriptedClient([call("write_file", {"text": "b"}), "bob done"]), [write_file])
    bob_guard.apply_state(3)
    result = run(RoundRobinGroupChat([alice, bob], termination_condition=MaxMessageTermination(7)).run(task="go"))
    assert effects == ["write:a"]
    bob_says = [str(m.content) for m in result.messages if m.source == "bob"]
    assert bob_says and all("stopped by the M99 kill switch" in text for text in bob_says)
    assert bob_guard.usage["model_calls"] == 0 and guard.usage["tool_calls"] == 1


def test_reflection_after_a_halt_stops_the_agent_or_ends_the_run(
    guard: Guard, make_guard: Callable[..., Guard]
) -> None:
    """With ``reflect_on_tool_use``, the model call that reflects on the tool results is gated too: an
    agent halted by its own Guard answers with the stop instead, a halted process ends the run."""
    effects: list[str] = []
    write_file, _ = tools(effects)
    aga.install()
    own = default_resolver.bind("writer", make_guard("research-bot-writer"))
    client = ScriptedClient([call("write_file", {"text": "x"})], on_call=freeze_on_first_call(own))
    writer = agent("writer", client, [write_file], max_tool_iterations=1, reflect_on_tool_use=True)
    result = run(writer.run(task="go"))
    assert "Stopped by M99" in str(result.messages[-1].content) and client.calls == 1 and effects == []

    own.apply_state(0)
    client = ScriptedClient([call("write_file", {"text": "y"})], on_call=freeze_on_first_call(guard))
    writer = agent("writer", client, [write_file], max_tool_iterations=1, reflect_on_tool_use=True)
    with pytest.raises(ModelCallRefused):
        run(writer.run(task="go"))
    assert client.calls == 1 and effects == []


def test_m99_termination_stops_the_team_cleanly(guard: Guard) -> None:
    aga.install()
    stop = aga.M99Termination(guard)
    alice = agent("alice", ScriptedClient(["a1", "a2"], on_call=freeze_on_first_call(guard)))
    team = RoundRobinGroupChat(
        [alice, agent("bob", ScriptedClient(["b1"]))], termination_condition=MaxMessageTermination(10) | stop
    )
    result = run(team.run(task="go"))
    assert "M99 kill switch" in str(result.stop_reason) and "drill" in str(result.stop_reason)
    assert [m.source for m in result.messages] == ["user", "alice"]
    assert stop.terminated is False  # the team resets its conditions after firing
    guard.apply_state(0)
    assert run(stop([])) is None


def test_a_caller_leaving_a_teams_stream_early_closes_the_team_too(guard: Guard) -> None:
    """install() wraps ``run_stream``; closing the wrapper closes the team's own stream at once (not
    whenever the garbage collector gets to it), so the team is free to run again."""
    aga.install()
    team = RoundRobinGroupChat(
        [agent("alice", ScriptedClient(["a1", "a2"])), agent("bob", ScriptedClient(["b1"]))],
        termination_condition=MaxMessageTermination(3),
    )

    async def scenario() -> Any:
        stream = team.run_stream(task="go")
        first = await anext(stream)
        await stream.aclose()
        assert first.source == "user"
        return await team.run(task="again")

    assert run(scenario()).messages[-1].source in ("alice", "bob")


def test_a_team_halted_through_install_alone_ends_with_the_m99_error(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    aga.install()  # m99.init's one line: no M99Termination in the team
    alice = agent("alice", ScriptedClient(["a1", "a2", "a3"]))
    bob = agent(
        "bob", ScriptedClient([call("write_file", {"text": "b"})], on_call=freeze_on_first_call(guard)), [write_file]
    )
    team = RoundRobinGroupChat([alice, bob], termination_condition=MaxMessageTermination(10))
    with pytest.raises(ModelCallRefused) as refused:  # AutoGen alone would raise RuntimeError("ModelCallRefused: …")
        run(team.run(task="go"))
    assert isinstance(refused.value, M99KillSwitchTriggered) and "drill" in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # not AutoGen's RuntimeError
    assert effects == []
    guard.apply_state(0)  # other errors of a team are left as AutoGen raises them

    class Broken(ScriptedClient):
        async def create(self, messages: Any, **kwargs: Any) -> Any:
            raise LookupError("user bug")

    with pytest.raises(RuntimeError, match="LookupError: user bug"):
        run(
            RoundRobinGroupChat([agent("carol", Broken([]))], termination_condition=MaxMessageTermination(3)).run(
                task="go"
            )
        )


# -- workbenches: MCP, wrappers ---------------------------------------------------------------------------


def test_mcp_workbench_tool_refused_then_allowed(guard: Guard, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"

    async def scenario(level: int, wrap: bool) -> Any:
        async with McpWorkbench(MCP_SERVER) as mcp:
            workbench = aga.GuardedWorkbench(mcp, guard) if wrap else mcp
            press = freeze_on_first_call(guard, level) if level else None
            client = ScriptedClient([call("write_file", {"path": str(target), "text": "hi"})], on_call=press)
            writer = AssistantAgent("writer", model_client=client, workbench=workbench, max_tool_iterations=1)
            return await writer.run(task="go")

    aga.install()
    (refused,) = results(run(scenario(3, wrap=False), 30))
    assert refused.is_error and not target.exists()
    aga.uninstall()
    guard.apply_state(0)
    (refused,) = results(run(scenario(3, wrap=True), 30))
    assert refused.is_error and not target.exists()
    guard.apply_state(0)
    (allowed,) = results(run(scenario(0, wrap=True), 30))
    assert not allowed.is_error and target.read_text() == "hi"


def test_a_frozen_mcp_workbench_registers_no_new_tools(guard: Guard) -> None:
    async def listed(level: int) -> list[str]:
        guard.apply_state(level)
        async with McpWorkbench(MCP_SERVER) as mcp:
            return sorted(t["name"] for t in await aga.GuardedWorkbench(mcp, guard).list_tools())

    everything = run(listed(0), 30)
    assert "write_file" in everything
    assert run(listed(3), 30) == []  # frozen: the server's tools are not offered to the model
    guard.declare_read_only(everything[0])
    assert run(listed(4), 30) == [everything[0]]  # restricted: read-only tools only
    guard.apply_state(0)  # a restriction is lifted by an authority; here, the fixture's Guard directly
    assert run(listed(0), 30) == everything


def test_guarded_workbench_and_model_client_without_install(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    workbench = aga.GuardedWorkbench(StaticWorkbench([write_file]), guard)
    client = aga.GuardedModelClient(
        ScriptedClient([call("write_file", {"text": "x"})], on_call=freeze_on_first_call(guard)), guard
    )
    writer = AssistantAgent("writer", model_client=client, workbench=workbench, max_tool_iterations=3)
    with pytest.raises(ModelCallRefused):
        run(writer.run(task="go"))
    assert effects == []
    guard.apply_state(0)
    result = run(writer.run(task="go again"))
    assert result.messages[-1].content == "done"
    assert guard.usage["model_calls"] >= 1


def test_usage_feed(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)

    def broken(x: str) -> str:
        raise ValueError("user bug")

    from autogen_core.tools import FunctionTool

    aga.install()
    client = ScriptedClient([call("write_file", {"text": "x"}), call("broken", {"x": "y"}, 2), "done"])
    run(agent("writer", client, [write_file, FunctionTool(broken, "Always fails.")]).run(task="go"))
    usage = guard.usage
    assert usage["tool_calls"] == 2 and usage["tool_errors"] == 1
    assert usage["model_calls"] == 3 and usage["tokens"] > 0
    assert guard.snapshot()["task"] == "go"  # evidence: what the agent was doing


def test_guarded_workbench_redacts_tool_output_at_l1(guard: Guard) -> None:
    from autogen_core.tools import FunctionTool

    def read_config(name: str) -> str:
        return f"{name}={SECRET}"

    guard.protect_secret(SECRET)
    guard.apply_state(1)
    workbench = aga.GuardedWorkbench(StaticWorkbench([FunctionTool(read_config, "Read a value.")]), guard)
    result = run(workbench.call_tool("read_config", {"name": f"key {SECRET}"}))
    assert not result.is_error and result.to_text() == f"key {REDACTED}={REDACTED}"


def test_install_and_uninstall_are_idempotent_and_exact(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    names = ("_execute_tool_call", "_call_llm", "_reflect_on_tool_use_flow", "on_messages_stream")
    before = {name: AssistantAgent.__dict__[name] for name in names}
    team_run_stream = BaseGroupChat.__dict__["run_stream"]
    aga.install()
    aga.install()
    assert all(AssistantAgent.__dict__[name] is not before[name] for name in names)
    assert BaseGroupChat.__dict__["run_stream"] is not team_run_stream
    aga.uninstall()
    aga.uninstall()
    assert {name: AssistantAgent.__dict__[name] for name in names} == before and not aga.installed()
    assert BaseGroupChat.__dict__["run_stream"] is team_run_stream
    guard.apply_state(3)
    run(agent("writer", ScriptedClient([call("write_file", {"text": "x"})]), [write_file]).run(task="go"))
    assert effects == ["write:x"]
    assert os.environ.get("OPENAI_API_KEY") is None


def test_uninstall_leaves_a_seam_wrapped_after_it_and_goes_inert(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    original = AssistantAgent.__dict__["_execute_tool_call"]
    aga.install()
    ours = AssistantAgent.__dict__["_execute_tool_call"].__func__
    seen: list[str] = []

    async def theirs(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["tool_call"].name)
        return await ours(*args, **kwargs)

    AssistantAgent._execute_tool_call = staticmethod(theirs)  # type: ignore[method-assign,assignment]
    try:
        aga.uninstall()
        assert AssistantAgent.__dict__["_execute_tool_call"].__func__ is theirs  # another library's stays
        guard.apply_state(3)
        run(agent("writer", ScriptedClient([call("write_file", {"text": "x"})]), [write_file]).run(task="go"))
        assert effects == ["write:x"]  # ours under it no longer refuses
        aga.install()  # a new install goes on top, and only it refuses
        with pytest.raises(ModelCallRefused):
            run(agent("writer", ScriptedClient([call("write_file", {"text": "y"})]), [write_file]).run(task="go"))
        assert effects == ["write:x"]
    finally:
        aga.uninstall()
        AssistantAgent._execute_tool_call = original  # type: ignore[method-assign]
    assert seen == ["write_file"]  # only the first run's call reached their wrapper


def test_a_halted_team_without_m99_termination_ends_without_autogens_noise(
    guard: Guard, caplog: pytest.LogCaptureFixture
) -> None:
    """Measured before: AutoGen logged "Error processing publish message" with the M99 error's traceback,
    then one "Unhandled message in agent container" traceback for each other participant, and the
    caller got the M99 error chained to AutoGen's RuntimeError (two tracebacks more)."""
    effects: list[str] = []
    write_file, _ = tools(effects)
    aga.install()
    writer = agent(
        "writer",
        ScriptedClient(
            [call("write_file", {"text": str(n)}, n) for n in range(5)],
            on_call=lambda n: n == 3 and guard.apply_state(3),
        ),
        [write_file],
    )
    reviewers = [agent(name, ScriptedClient(["again"] * 10)) for name in ("reviewer", "editor")]
    team = RoundRobinGroupChat([writer, *reviewers], termination_condition=MaxMessageTermination(50))
    with caplog.at_level(logging.INFO), pytest.raises(ModelCallRefused) as refused:
        run(team.run(task="go"))
    assert len(effects) == 2  # it worked until the switch
    lines = "".join(traceback.format_exception(refused.value)).splitlines()
    assert lines[-1] == f"m99.errors.ModelCallRefused: {refused.value}"
    inside = [f.name for f in traceback.extract_tb(refused.value.__traceback__) if f"{os.sep}autogen_" in f.filename]
    assert inside == ["run"], inside  # only the team's run, which called run_stream
    errors = [r for r in caplog.records if r.name.startswith("autogen") and r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_errors_not_caused_by_m99_are_still_logged_by_autogen(guard: Guard, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(ScriptedClient):
        async def create(self, messages: Any, **kwargs: Any) -> Any:
            raise LookupError("user bug")

    aga.install()
    team = RoundRobinGroupChat(
        [agent("carol", Broken([])), agent("dave", ScriptedClient(["ok"]))],
        termination_condition=MaxMessageTermination(3),
    )
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError, match="LookupError: user bug"):
        run(team.run(task="go"))
    errors = [r.getMessage() for r in caplog.records if r.name == "autogen_core" and r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all("Error processing publish message" in e for e in errors), errors
