"""AutoGen (agentchat 0.7) behaviours ``m99.adapters.autogen`` relies on, including the traps that hang
a run instead of failing it; a failure here means an upgrade changed one of them."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import warnings
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_agentchat.teams._group_chat._events import GroupChatAgentResponse
from autogen_core import CancellationToken, DefaultInterventionHandler, DropMessage, SingleThreadedAgentRuntime
from autogen_core.tools import StaticWorkbench, ToolResult
from autogen_ext.models.replay import ReplayChatCompletionClient

from tests.adapters.ag_fakes import ScriptedClient, agent, call, tools

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")
HANG = 1.5  # seconds after which "did not finish" means "hangs"


def run(coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class RaisingWorkbench(StaticWorkbench):
    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
        call_id: str | None = None,
    ) -> ToolResult:
        raise RuntimeError("refused by raising")


class ErrorWorkbench(StaticWorkbench):
    async def call_tool(self, name: str, *args: Any, **kwargs: Any) -> ToolResult:
        from autogen_core.tools import TextResultContent

        return ToolResult(name=name, result=[TextResultContent(content="refused")], is_error=True)


def test_an_error_tool_result_lets_the_agent_finish() -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    writer = AssistantAgent(
        "writer",
        model_client=ScriptedClient([call("write_file", {"text": "x"})]),
        workbench=ErrorWorkbench([write_file]),
        max_tool_iterations=3,
    )
    assert run(writer.run(task="go")).messages[-1].content == "done"
    assert effects == []


def test_an_exception_on_the_tool_path_hangs_agent_run() -> None:
    # THE trap: the tool task dies before queueing its end-of-stream sentinel; run() waits forever.
    write_file, _ = tools([])
    writer = AssistantAgent(
        "writer",
        model_client=ScriptedClient([call("write_file", {"text": "x"})]),
        workbench=RaisingWorkbench([write_file]),
    )
    with pytest.raises(TimeoutError):
        run(writer.run(task="go"), timeout=HANG)


class Dropper(DefaultInterventionHandler):
    async def on_publish(self, message: Any, *, message_context: Any) -> Any:
        if isinstance(message, GroupChatAgentResponse) and message.name == "alice":
            return DropMessage
        return message


class Rewriter(DefaultInterventionHandler):
    async def on_publish(self, message: Any, *, message_context: Any) -> Any:
        if isinstance(message, GroupChatAgentResponse) and message.name == "alice":
            chat = message.response.chat_message.model_copy(update={"content": "withheld"})
            return message.model_copy(update={"response": dataclasses.replace(message.response, chat_message=chat)})
        return message


async def team_with(handler: DefaultInterventionHandler) -> tuple[list[str], list[str]]:
    runtime = SingleThreadedAgentRuntime(intervention_handlers=[handler])
    bob = agent("bob", ScriptedClient(["bob says hi"]))
    team = RoundRobinGroupChat(
        [agent("alice", ScriptedClient(["alice's secret"])), bob],
        termination_condition=MaxMessageTermination(3),
        runtime=runtime,
    )
    runtime.start()
    try:
        result = await team.run(task="go")
    finally:
        await runtime.stop()
    return [str(m.content) for m in result.messages], [str(m.content) for m in await bob._model_context.get_messages()]


@pytest.mark.filterwarnings("ignore:Intervention handler on_response returned None:RuntimeWarning")
def test_drop_message_hangs_the_team_but_rewriting_works() -> None:
    with pytest.raises(TimeoutError):
        run(team_with(Dropper()), timeout=HANG)
    output, seen_by_bob = run(team_with(Rewriter()))
    assert output[:2] == ["go", "alice's secret"]  # the team's own output keeps the original
    assert seen_by_bob[:2] == ["go", "withheld"]


def test_any_intervention_handler_warns_about_none_responses() -> None:
    # Why the tests filter this warning, and why install() does not add a runtime handler itself.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(team_with(DefaultInterventionHandler()))
    assert any("on_response returned None" in str(w.message) for w in caught)


def test_the_assistant_agent_seams_the_adapter_patches() -> None:
    seams = AssistantAgent.__dict__
    assert isinstance(seams["_execute_tool_call"], staticmethod)
    assert isinstance(seams["_call_llm"], classmethod)
    assert isinstance(seams["_reflect_on_tool_use_flow"], classmethod)
    assert {"tool_call", "agent_name"} <= set(inspect.signature(seams["_execute_tool_call"].__func__).parameters)
    for name in ("_call_llm", "_reflect_on_tool_use_flow"):
        assert {"agent_name", "model_client"} <= set(inspect.signature(seams[name].__func__).parameters)
    assert list(inspect.signature(AssistantAgent.on_messages_stream).parameters) == [
        "self",
        "messages",
        "cancellation_token",
    ]


def test_the_seams_are_called_with_agent_name_by_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    execute = AssistantAgent.__dict__["_execute_tool_call"].__func__
    call_llm = AssistantAgent.__dict__["_call_llm"].__func__

    async def spy_execute(*args: Any, **kwargs: Any) -> Any:
        seen["tool"] = kwargs.get("agent_name")
        return await execute(*args, **kwargs)

    async def spy_call_llm(cls: Any, *args: Any, **kwargs: Any) -> Any:
        seen["model"] = kwargs.get("agent_name")
        async for item in call_llm(cls, *args, **kwargs):
            yield item

    monkeypatch.setattr(AssistantAgent, "_execute_tool_call", staticmethod(spy_execute))
    monkeypatch.setattr(AssistantAgent, "_call_llm", classmethod(spy_call_llm))
    write_file, _ = tools([])
    run(agent("writer", ScriptedClient([call("write_file", {"text": "x"})]), [write_file]).run(task="go"))
    assert seen == {"tool": "writer", "model": "writer"}


def test_a_model_client_exception_leaves_run_and_becomes_runtime_error_in_a_team() -> None:
    class Refusing(ScriptedClient):
        async def create(self, messages: Any, **kwargs: Any) -> Any:
            raise LookupError("refused")

    with pytest.raises(LookupError):
        run(agent("alice", Refusing([])).run(task="go"))
    team = RoundRobinGroupChat([agent("alice", Refusing([]))], termination_condition=MaxMessageTermination(3))
    with pytest.raises(RuntimeError) as raised:
        run(team.run(task="go"))
    # The adapter finds the original M99 error again by exactly this text (before any traceback).
    assert str(raised.value).split("\nTraceback:", 1)[0] == "LookupError: refused"


def test_the_replay_client_has_no_function_calling_by_default() -> None:
    write_file, _ = tools([])
    with pytest.raises(ValueError, match="function calling"):
        AssistantAgent("a", model_client=ReplayChatCompletionClient(["x"]), tools=[write_file])


def test_a_participants_error_is_logged_once_by_it_and_once_by_each_other_participant() -> None:
    """What ``m99.adapters._autogen_stop`` filters for an M99 halt: the runtime logs the failed handler on
    ``autogen_core`` with the exception, and every other container fails on the ``GroupChatError`` the
    failing one publishes, in ``on_unhandled_message`` with the message in its ``message`` local."""
    import logging

    from autogen_agentchat.teams._group_chat._events import GroupChatError

    class Refusing(ScriptedClient):
        async def create(self, messages: Any, **kwargs: Any) -> Any:
            raise LookupError("refused")

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    runtime_logger = logging.getLogger("autogen_core")
    handler = Keep(logging.ERROR)
    runtime_logger.addHandler(handler)
    try:
        team = RoundRobinGroupChat(
            [
                agent("alice", Refusing([])),
                agent("bob", ScriptedClient(["ok"])),
                agent("carol", ScriptedClient(["ok"])),
            ],
            termination_condition=MaxMessageTermination(5),
        )
        with pytest.raises(RuntimeError):
            run(team.run(task="go"))
    finally:
        runtime_logger.removeHandler(handler)
    errors = [r.exc_info[1] for r in records if r.name == "autogen_core" and r.exc_info]
    assert [type(e).__name__ for e in errors].count("LookupError") == 1
    unhandled = [e for e in errors if isinstance(e, ValueError)]
    assert len(unhandled) == 2 and all("Unhandled message" in str(e) for e in unhandled)
    for error in unhandled:
        tb = error.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        assert tb is not None and tb.tb_frame.f_code.co_name == "on_unhandled_message"
        message = tb.tb_frame.f_locals["message"]
        assert isinstance(message, GroupChatError)
        assert (message.error.error_type, message.error.error_message) == ("LookupError", "refused")
