"""The LangChain adapter driving real LangChain/LangGraph runs with a scripted offline model.

Each level is shown on the paths users take: a plain ``tool.invoke``, a hand-written loop,
``create_agent`` (default ``ToolNode``) and a hand-built graph with ``handle_tool_errors=True``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.tracers import context as lc_context
from langchain_openai import ChatOpenAI

import m99.adapters.langchain as lca
from m99.adapters import default_resolver
from m99.credentials import REDACTED
from m99.errors import M99KillSwitchTriggered, ModelCallRefused, ToolCallRefused
from m99.guard import Guard

from .conftest import SECRET, OpenAIServer
from .lc_fakes import call, model, tool_loop_graph, tools

pytestmark = pytest.mark.timeout(60)

GO = {"messages": [HumanMessage("go")]}


def contents(result: dict) -> list[str]:
    return [str(m.content) for m in result["messages"]]


# -- L3: tool freeze --------------------------------------------------------------------------------


def test_l3_refuses_a_plain_tool_invoke_and_restore_lets_it_run(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    lca.install()
    guard.apply_state(3, reason="drill")
    with pytest.raises(ToolCallRefused) as refused:
        write_file.invoke({"text": "x"})
    assert isinstance(refused.value, M99KillSwitchTriggered)
    assert refused.value.level == 3 and "drill" in str(refused.value)
    assert effects == []
    guard.apply_state(0)
    assert write_file.invoke({"text": "x"}) == "wrote x"
    assert effects == ["write:x"]


def test_l3_between_model_and_tool_in_a_hand_written_loop(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    chat = model(call("write_file", {"text": "x"}))
    lca.install()
    reply = chat.invoke([HumanMessage("go")])
    guard.apply_state(3)  # the operator presses the switch while the agent holds a tool call
    with pytest.raises(ToolCallRefused):
        for tool_call in reply.tool_calls:
            write_file.invoke(tool_call)
    with pytest.raises(ModelCallRefused):
        chat.invoke([HumanMessage("go on")])
    assert effects == []


def test_l3_mid_run_ends_create_agent_with_an_m99_error(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    chat = model(call("write_file", {"text": "x"}), "done")
    chat.on_call = lambda n: guard.apply_state(3) if n == 1 else None
    lca.install()
    with pytest.raises(ToolCallRefused):
        create_agent(chat, [write_file]).invoke(GO)
    assert effects == []
    assert len(chat.seen) == 1


def test_l3_with_handle_tool_errors_still_ends_the_run(guard: Guard) -> None:
    # ToolNode(handle_tool_errors=True) turns the refusal into an error ToolMessage; the next model
    # call is refused instead, so the model never loops on the error.
    effects: list[str] = []
    write_file, _ = tools(effects)
    chat = model(call("write_file", {"text": "x"}), "done")
    chat.on_call = lambda n: guard.apply_state(3) if n == 1 else None
    lca.install()
    with pytest.raises(ModelCallRefused):
        tool_loop_graph(chat, [write_file], handle_tool_errors=True).invoke(GO)
    assert effects == []
    assert len(chat.seen) == 1


def test_l3_async_run_is_refused_by_the_sync_handler(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    chat = model(call("write_file", {"text": "x"}), "done")
    chat.on_call = lambda n: guard.apply_state(3) if n == 1 else None
    lca.install()
    agent = create_agent(chat, [write_file])
    with pytest.raises(ToolCallRefused):
        asyncio.run(asyncio.wait_for(agent.ainvoke(GO), 10))
    assert effects == []


def test_middleware_l3_stops_the_run_cleanly_with_an_explanation(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    chat = model(call("write_file", {"text": "x"}), "done")
    chat.on_call = lambda n: guard.apply_state(3, reason="drill") if n == 1 else None
    agent = create_agent(chat, [write_file], middleware=[lca.M99Middleware(guard)])
    result = agent.invoke(GO)
    refusal, stop = result["messages"][-2:]
    assert isinstance(refusal, ToolMessage) and refusal.status == "error"
    assert "refused" in str(refusal.content) and refusal.artifact["m99"]["level"] == 3
    assert isinstance(stop, AIMessage) and not stop.tool_calls
    assert "M99 kill switch" in str(stop.content) and "drill" in str(stop.content)
    assert effects == []
    assert len(chat.seen) == 1  # the model was not called again


def test_middleware_async_frozen_before_the_run(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    chat = model(call("write_file", {"text": "x"}))
    guard.apply_state(3)
    agent = create_agent(chat, [write_file], middleware=[lca.M99Middleware(guard)])
    result = asyncio.run(asyncio.wait_for(agent.ainvoke(GO), 10))
    assert "M99 kill switch" in contents(result)[-1]
    assert chat.seen == [] and effects == []


# -- L4: restriction ----------------------------------------------------------------------------------


def test_l4_runs_read_only_tools_and_refuses_write_tools(guard: Guard) -> None:
    effects: list[str] = []
    write_file, search = tools(effects)
    lca.install()
    guard.apply_state(4)
    assert search.invoke({"query": "m99"}) == "results for m99"
    with pytest.raises(ToolCallRefused, match="only read-only tools"):
        write_file.invoke({"text": "x"})
    agent = create_agent(model(call("search", {"query": "q"}), "done"), [search, write_file])
    assert contents(agent.invoke(GO))[-1] == "done"
    assert effects == ["search:m99", "search:q"]


def test_l4_middleware_offers_the_model_only_read_only_tools(guard: Guard) -> None:
    from langchain.agents.middleware import AgentMiddleware

    effects: list[str] = []
    write_file, search = tools(effects)
    offered: list[list[str]] = []

    class Spy(AgentMiddleware):  # inside M99Middleware: sees the request the model gets
        def wrap_model_call(self, request, handler):  # type: ignore[no-untyped-def]
            offered.append(sorted(t.name for t in request.tools))
            return handler(request)

    def run_once() -> None:
        chat = model("done")
        create_agent(chat, [write_file, search], middleware=[lca.M99Middleware(guard), Spy()]).invoke(GO)

    run_once()
    guard.apply_state(4)
    run_once()
    guard.apply_state(0)
    run_once()
    assert offered == [["search", "write_file"], ["search"], ["search", "write_file"]]


def test_l4_model_looping_on_refusals_is_stopped(guard: Guard) -> None:
    effects: list[str] = []
    write_file, search = tools(effects)
    guard.apply_state(4)
    chat = model(*(call("write_file", {"text": str(n)}, n) for n in range(50)))
    agent = create_agent(chat, [write_file, search], middleware=[lca.M99Middleware(guard)])
    result = agent.invoke(GO)
    assert "3 refused tool calls in a row" in contents(result)[-1]
    assert effects == [] and len(chat.seen) == 3

    # The same with only the global handler and handle_tool_errors=True: the refusal streak ends it.
    lca.install()
    chat = model(*(call("write_file", {"text": str(n)}, n) for n in range(50)))
    with pytest.raises(ModelCallRefused, match="refused tool calls in a row"):
        tool_loop_graph(chat, [write_file], handle_tool_errors=True).invoke(GO)
    assert effects == [] and len(chat.seen) == 3


# -- L1: redaction and credential revocation -----------------------------------------------------------


def test_l1_redacts_tool_arguments_results_and_model_input(guard: Guard) -> None:
    effects: list[str] = []

    @tool
    def read_config(name: str) -> str:
        """Read a config value."""
        effects.append(name)
        return f"{name}={SECRET}"

    guard.protect_secret(SECRET, label="db")
    guard.apply_state(1)
    chat = model(call("read_config", {"name": f"key {SECRET}"}), "done")
    agent = create_agent(chat, [read_config], middleware=[lca.M99Middleware(guard)])
    result = agent.invoke({"messages": [HumanMessage(f"the key is {SECRET}")]})
    assert effects == [f"key {REDACTED}"]  # the tool got the redacted argument
    tool_result = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert SECRET not in str(tool_result.content) and REDACTED in str(tool_result.content)
    assert all(SECRET not in str(m.content) for sent in chat.seen for m in sent)

    guard.apply_state(0)  # below L1 nothing is redacted
    effects.clear()
    chat = model(call("read_config", {"name": SECRET}), "done")
    create_agent(chat, [read_config], middleware=[lca.M99Middleware(guard)]).invoke(GO)
    assert effects == [SECRET]


def test_l1_install_alone_redacts_tool_arguments_and_results(guard: Guard, make_guard: Callable[..., Guard]) -> None:
    """The one line (no middleware): at L1 a tool gets its input, and the agent the tool's output,
    without the protected secrets, on a plain invoke, an async one and inside create_agent; an agent
    with a Guard of its own is redacted by that Guard; below L1 nothing changes."""
    seen: list[str] = []

    @tool
    def read_config(name: str) -> str:
        """Read a config value."""
        seen.append(name)
        return f"{name}={SECRET}"

    lca.install()
    guard.protect_secret(SECRET, label="db")
    assert read_config.invoke({"name": SECRET}) == f"{SECRET}={SECRET}"  # L0: untouched
    guard.apply_state(1)
    assert read_config.invoke({"name": f"key {SECRET}"}) == f"key {REDACTED}={REDACTED}"
    assert asyncio.run(read_config.ainvoke({"name": SECRET})) == f"{REDACTED}={REDACTED}"
    chat = model(call("read_config", {"name": SECRET}), "done")
    result = create_agent(chat, [read_config]).invoke(GO)
    tool_message = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert tool_message.content == f"{REDACTED}={REDACTED}" and tool_message.tool_call_id
    assert seen == [SECRET, f"key {REDACTED}", REDACTED, REDACTED]

    guard.apply_state(0)
    own = default_resolver.bind("vault-reader", make_guard("research-bot-vault"))
    own.protect_secret("hunter2-vault-key", label="vault")
    own.apply_state(1)  # only the framework agent's own Guard is at L1
    seen.clear()
    chat = model(call("read_config", {"name": "hunter2-vault-key"}), "done")
    create_agent(chat, [read_config], name="vault-reader").invoke(GO)
    chat = model(call("read_config", {"name": "hunter2-vault-key"}), "done")
    create_agent(chat, [read_config], name="other-agent").invoke(GO)
    assert seen == [REDACTED, "hunter2-vault-key"]
    own.apply_state(0)
    assert read_config.invoke({"name": SECRET}) == f"{SECRET}={SECRET}"


def test_the_redaction_seams_are_in_langchain_only_while_a_guard_redacts(guard: Guard) -> None:
    """Below L1 a tool call does not pass through them at all; install() and uninstall() at L1 put
    them in and take them out too."""
    from langchain_core.tools import BaseTool, base

    originals = (BaseTool.__dict__["_to_args_and_kwargs"], base.__dict__["_format_output"])

    def seams() -> tuple[Any, Any]:
        return BaseTool.__dict__["_to_args_and_kwargs"], base.__dict__["_format_output"]

    lca.install()
    assert seams() == originals
    guard.apply_state(1)
    assert all(now is not before for now, before in zip(seams(), originals, strict=True))
    guard.apply_state(3)  # still redacting: nothing changes
    guard.apply_state(0)
    assert seams() == originals
    guard.apply_state(1)
    lca.uninstall()  # at L1
    assert seams() == originals
    lca.install()  # a Guard already redacting
    assert seams() != originals
    lca.uninstall()
    guard.apply_state(0)
    assert seams() == originals


def test_l1_revokes_chatopenai_key_and_restore_gives_it_back(guard: Guard, openai_server: OpenAIServer) -> None:
    chat = ChatOpenAI(model="gpt-4o-mini", api_key=SECRET, base_url=openai_server.url, max_retries=0)
    agent = create_agent(chat, [], middleware=[lca.M99Middleware(guard)])
    assert contents(agent.invoke(GO))[-1] == "pong"  # first call registers the client's key
    guard.apply_state(1)
    with pytest.raises(TypeError, match="authentication"):  # refused locally by the openai SDK
        agent.invoke(GO)
    assert openai_server.authorizations() == [f"Bearer {SECRET}"]  # nothing was sent
    guard.apply_state(0)
    assert contents(agent.invoke(GO))[-1] == "pong"
    assert openai_server.authorizations() == [f"Bearer {SECRET}"] * 2


def test_install_alone_revokes_the_key_of_every_model_it_saw(
    guard: Guard, make_guard: Callable[..., Guard], openai_server: OpenAIServer
) -> None:
    lca.install()  # m99.init's one line: no middleware, no protect_model
    chat = ChatOpenAI(model="gpt-4o-mini", api_key=SECRET, base_url=openai_server.url, max_retries=0)
    writer_guard = default_resolver.bind("writer", make_guard("research-bot-writer"))
    writer = create_agent(chat, [], name="writer")
    assert contents(writer.invoke(GO))[-1] == "pong"  # the first call registers its key
    guard.apply_state(1)  # the process's L1 revokes it, though the call was the writer's
    with pytest.raises(TypeError, match="authentication"):
        writer.invoke(GO)
    with pytest.raises(TypeError):
        asyncio.run(chat.ainvoke("ping"))
    assert openai_server.authorizations() == [f"Bearer {SECRET}"]  # nothing more was sent
    writer_guard.apply_state(1)
    guard.apply_state(0)  # the writer still holds it revoked: the key stays away
    with pytest.raises(TypeError):
        chat.invoke("ping")
    writer_guard.apply_state(0)  # the last one restored puts it back
    assert chat.invoke("ping").content == "pong"
    assert openai_server.authorizations()[-1] == f"Bearer {SECRET}"


def test_protect_model_for_direct_calls_and_async_client(guard: Guard, openai_server: OpenAIServer) -> None:
    chat = lca.protect_model(ChatOpenAI(model="gpt-4o-mini", api_key=SECRET, base_url=openai_server.url))
    guard.apply_state(1)
    assert chat.root_client.api_key == "" and chat.root_async_client.api_key == ""
    assert chat.openai_api_key.get_secret_value() == ""
    with pytest.raises(TypeError):
        chat.invoke("ping")
    with pytest.raises(TypeError):
        asyncio.run(chat.ainvoke("ping"))
    guard.apply_state(0)
    assert chat.invoke("ping").content == "pong"
    assert asyncio.run(chat.ainvoke("ping")).content == "pong"
    assert openai_server.authorizations() == [f"Bearer {SECRET}"] * 2


def test_plain_openai_client_is_revoked_and_restored(guard: Guard, openai_server: OpenAIServer) -> None:
    client = openai.OpenAI(api_key=SECRET, base_url=openai_server.url, max_retries=0)
    lca.protect_model(client, guard)
    ask = lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])  # noqa: E731
    ask()
    guard.apply_state(1)
    with pytest.raises(TypeError):
        ask()
    guard.apply_state(0)
    ask()
    assert openai_server.authorizations() == [f"Bearer {SECRET}"] * 2


# -- usage, identity, install ---------------------------------------------------------------------------


def test_usage_feed_counts_tools_models_tokens_and_errors(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)

    @tool
    def broken(x: str) -> str:
        """Always fails."""
        raise ValueError("user bug")

    lca.install()
    chat = model(call("write_file", {"text": "x"}), call("broken", {"x": "y"}, 2), "done", usage=10)
    with pytest.raises(ValueError, match="user bug"):  # the user's own exception, unchanged
        create_agent(chat, [write_file, broken]).invoke(GO)
    usage = guard.usage
    assert usage["tool_calls"] == 2 and usage["tool_errors"] == 1
    assert usage["model_calls"] == 2 and usage["tokens"] == 20
    assert guard.snapshot()["task"] == "go"  # evidence: what the agent was doing


def test_async_tools_and_models_are_checked_and_counted(guard: Guard) -> None:
    effects: list[str] = []

    @tool
    async def send_mail(to: str) -> str:
        """Send a mail."""
        effects.append(f"mail:{to}")
        return "sent"

    lca.install()
    chat = model(call("send_mail", {"to": "a@example.com"}), "done", usage=7)
    result = asyncio.run(create_agent(chat, [send_mail]).ainvoke(GO))
    assert contents(result)[-1] == "done" and effects == ["mail:a@example.com"]
    usage = guard.usage
    assert usage["tool_calls"] == 1 and usage["model_calls"] == 2 and usage["tokens"] == 14
    guard.apply_state(3)
    with pytest.raises(ToolCallRefused):
        asyncio.run(send_mail.ainvoke({"to": "b@example.com"}))
    with pytest.raises(ModelCallRefused):
        asyncio.run(chat.ainvoke("hi"))
    guard.apply_state(0)
    assert asyncio.run(send_mail.ainvoke({"to": "c@example.com"})) == "sent"
    assert effects == ["mail:a@example.com", "mail:c@example.com"]


def test_usage_feed_records_the_cost_a_provider_reports(guard: Guard) -> None:
    from langchain_core.outputs import ChatGeneration, ChatResult

    class PricedModel(type(model("x"))):  # type: ignore[misc]
        def _generate(self, messages: Any, *args: Any, **kwargs: Any) -> ChatResult:
            usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12, "cost": 0.0042}
            return ChatResult(generations=[ChatGeneration(message=AIMessage("hi"))], llm_output={"token_usage": usage})

    lca.install()
    PricedModel(responses=[AIMessage("hi")], seen=[]).invoke("hello")
    usage = guard.usage
    assert usage["model_calls"] == 1 and usage["tokens"] == 12 and usage["cost_usd"] == pytest.approx(0.0042)


def test_per_agent_identity_in_a_multi_agent_process(guard: Guard, make_guard: Callable[..., Guard]) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    writer_guard = default_resolver.bind("writer", make_guard("research-bot-writer"))
    lca.install()
    writer = create_agent(model(call("write_file", {"text": "w"}), "done"), [write_file], name="writer")
    editor = create_agent(model(call("write_file", {"text": "e"}), "done"), [write_file], name="editor")
    writer_guard.apply_state(3)
    with pytest.raises(ModelCallRefused) as refused:
        writer.invoke(GO)
    assert refused.value.agent == "research-bot-writer"
    assert contents(editor.invoke(GO))[-1] == "done"
    assert effects == ["write:e"]
    guard.apply_state(3)  # the process Guard stops every agent, bound ones included
    with pytest.raises(ModelCallRefused):
        editor.invoke(GO)


def test_middleware_without_a_guard_finds_the_agent_by_name(guard: Guard, make_guard: Callable[..., Guard]) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    default_resolver.bind("writer", make_guard("research-bot-writer")).apply_state(3)
    writer = create_agent(
        model(call("write_file", {"text": "w"})), [write_file], name="writer", middleware=[lca.M99Middleware()]
    )
    editor = create_agent(
        model(call("write_file", {"text": "e"}), "done"), [write_file], name="editor", middleware=[lca.M99Middleware()]
    )
    assert "research-bot-writer" in contents(writer.invoke(GO))[-1]
    assert contents(editor.invoke(GO))[-1] == "done"
    assert effects == ["write:e"]


def test_explicit_handler_replaces_the_global_one(guard: Guard, make_guard: Callable[..., Guard]) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    other = make_guard("other-bot")
    lca.install()
    other.apply_state(3)
    with pytest.raises(ToolCallRefused) as refused:
        write_file.invoke({"text": "x"}, config={"callbacks": [lca.M99CallbackHandler(other)]})
    assert refused.value.agent == "other-bot"
    guard.apply_state(3)
    before = guard.usage["refusals"]
    with pytest.raises(ToolCallRefused):  # own Guard first, process default still enforced
        write_file.invoke({"text": "x"}, config={"callbacks": [lca.M99CallbackHandler(guard)]})
    assert guard.usage["refusals"] == before + 1  # one handler per run, not two
    assert effects == []


def _manager_methods() -> dict[str, object]:
    from langchain_core.callbacks import manager

    return {
        f"{cls.__name__}.{name}": value
        for cls in (
            manager.CallbackManager,
            manager.AsyncCallbackManager,
            manager.CallbackManagerForToolRun,
            manager.AsyncCallbackManagerForToolRun,
            manager.CallbackManagerForLLMRun,
            manager.AsyncCallbackManagerForLLMRun,
        )
        for name, value in vars(cls).items()
        if name.startswith("on_")
    }


def test_install_and_uninstall_are_idempotent_and_exact(guard: Guard) -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    hooks = list(lc_context._configure_hooks)
    before = _manager_methods()
    lca.install()
    lca.install()
    assert lca.installed()
    changed = {k for k, v in _manager_methods().items() if before.get(k) is not v}
    assert changed == {
        "CallbackManager.on_tool_start",
        "AsyncCallbackManager.on_tool_start",
        "CallbackManager.on_chat_model_start",
        "AsyncCallbackManager.on_chat_model_start",
        "CallbackManager.on_llm_start",
        "AsyncCallbackManager.on_llm_start",
        "CallbackManager.on_chain_start",
        "AsyncCallbackManager.on_chain_start",
        "CallbackManagerForToolRun.on_tool_end",
        "CallbackManagerForToolRun.on_tool_error",
        "AsyncCallbackManagerForToolRun.on_tool_end",
        "AsyncCallbackManagerForToolRun.on_tool_error",
        "CallbackManagerForLLMRun.on_llm_end",
        "CallbackManagerForLLMRun.on_llm_error",
        "AsyncCallbackManagerForLLMRun.on_llm_end",
        "AsyncCallbackManagerForLLMRun.on_llm_error",
    }
    assert lc_context._configure_hooks == hooks  # no callback handler on every run
    lca.uninstall()
    lca.uninstall()
    assert _manager_methods() == before and not lca.installed()
    guard.apply_state(3)
    assert write_file.invoke({"text": "x"}) == "wrote x"  # nothing of M99 left in LangChain


def test_uninstall_leaves_a_wrapper_added_after_it_and_goes_inert(guard: Guard) -> None:
    from langchain_core.callbacks import manager

    effects: list[str] = []
    write_file, _ = tools(effects)
    original = manager.CallbackManager.__dict__["on_tool_start"]
    lca.install()
    ours = manager.CallbackManager.on_tool_start
    seen: list[str] = []

    def theirs(self, serialized, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(serialized["name"])
        return ours(self, serialized, *args, **kwargs)

    manager.CallbackManager.on_tool_start = theirs
    try:
        lca.uninstall()
        assert manager.CallbackManager.on_tool_start is theirs  # another library's wrapper stays
        guard.apply_state(3)
        assert write_file.invoke({"text": "x"}) == "wrote x"  # ours under it no longer refuses
        lca.install()  # a new install goes on top, and only it checks
        with pytest.raises(ToolCallRefused):
            write_file.invoke({"text": "y"})
        assert guard.usage["refusals"] == 1
    finally:
        lca.uninstall()
        manager.CallbackManager.on_tool_start = original
    assert seen == ["write_file"] and effects == ["write:x"]  # the refused call never reached their wrapper
