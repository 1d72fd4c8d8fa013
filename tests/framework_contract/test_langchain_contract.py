"""LangChain behaviours ``m99.adapters.langchain`` relies on; a failure here means an upgrade changed
one of them, and the adapter must be revisited before the kill switch can be trusted again."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.tracers import context as lc_context

from tests.adapters.lc_fakes import call, model, tool_loop_graph, tools

pytestmark = pytest.mark.timeout(60)
GO = {"messages": [HumanMessage("go")]}


class Stop(Exception):
    pass


class Raising(BaseCallbackHandler):
    raise_error = True
    run_inline = True

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, **kwargs: Any) -> None:
        raise Stop("no")

    def on_tool_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(error)


class Quiet(Raising):
    raise_error = False


class AsyncRaising(AsyncCallbackHandler):
    raise_error = True

    async def on_tool_start(self, serialized: dict[str, Any], input_str: str, **kwargs: Any) -> None:
        raise Stop("no")


def test_on_tool_start_runs_before_the_body_and_raise_error_propagates() -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    handler = Raising()
    with pytest.raises(Stop):
        write_file.invoke({"text": "x"}, config={"callbacks": [handler]})
    assert effects == [] and handler.errors == []  # refused before the try: no on_tool_error


def test_without_raise_error_the_exception_is_swallowed_and_the_tool_runs() -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    assert write_file.invoke({"text": "x"}, config={"callbacks": [Quiet()]}) == "wrote x"
    assert effects == ["write:x"]


def test_an_async_handler_on_a_sync_run_is_swallowed_even_with_raise_error() -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    assert write_file.invoke({"text": "x"}, config={"callbacks": [AsyncRaising()]}) == "wrote x"
    assert effects == ["write:x"]


def test_configure_hook_default_applies_everywhere_dedupes_by_class_and_can_be_removed() -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    handler = Raising()
    var: ContextVar[Any] = ContextVar("contract", default=handler)
    lc_context.register_configure_hook(var, True, Raising)
    try:
        with pytest.raises(Stop):
            write_file.invoke({"text": "x"})  # no config at all
        with pytest.raises(Stop):
            asyncio.run(write_file.ainvoke({"text": "x"}))
        explicit = Quiet()  # a subclass instance: the hook's handler is not added a second time
        assert write_file.invoke({"text": "y"}, config={"callbacks": [explicit]}) == "wrote y"
    finally:
        # The adapter's uninstall removes its entry from this private list by identity.
        entries = [entry for entry in lc_context._configure_hooks if entry[0] is var]
        assert len(entries) == 1
        lc_context._configure_hooks.remove(entries[0])
    assert write_file.invoke({"text": "z"}) == "wrote z"
    assert effects == ["write:y", "write:z"]


def test_create_agent_reraises_a_callback_error_but_handle_tool_errors_absorbs_it() -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)
    agent = create_agent(model(call("write_file", {"text": "x"}), "done"), [write_file])
    with pytest.raises(Stop):
        agent.invoke(GO, config={"callbacks": [Raising()]})
    graph = tool_loop_graph(model(call("write_file", {"text": "x"}), "done"), [write_file], handle_tool_errors=True)
    result = graph.invoke(GO, config={"callbacks": [Raising()]})
    error = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert error.status == "error" and result["messages"][-1].content == "done"
    assert effects == []


def test_create_agent_names_the_agent_in_run_metadata() -> None:
    seen: list[Any] = []

    class Spy(BaseCallbackHandler):
        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            seen.append((kwargs.get("metadata") or {}).get("lc_agent_name"))

    create_agent(model("done"), [], name="writer").invoke(GO, config={"callbacks": [Spy()]})
    assert seen == ["writer"]


def test_middleware_can_skip_the_tool_and_end_the_run() -> None:
    effects: list[str] = []
    write_file, _ = tools(effects)

    class Gate(AgentMiddleware):  # type: ignore[type-arg]
        def wrap_tool_call(self, request: Any, handler: Any) -> ToolMessage:
            call_ = request.tool_call
            return ToolMessage(content="refused", tool_call_id=call_["id"], name=call_["name"], status="error")

        def wrap_model_call(self, request: Any, handler: Any) -> Any:
            if len(request.messages) > 1:
                return AIMessage(content="stopped")
            return handler(request)

    chat = model(call("write_file", {"text": "x"}), "not reached")
    result = create_agent(chat, [write_file], middleware=[Gate()]).invoke(GO)
    assert [str(m.content) for m in result["messages"]][-2:] == ["refused", "stopped"]
    assert effects == [] and len(chat.seen) == 1


def test_the_stock_fake_chat_model_has_no_bind_tools() -> None:
    # Why the tests' ScriptedModel overrides bind_tools: create_agent calls it.
    with pytest.raises(NotImplementedError):
        FakeMessagesListChatModel(responses=[AIMessage("x")]).bind_tools([])


# -- the callback-manager seam install() wraps ------------------------------------------------------------


class Seam:
    """Wraps a callback-manager method as ``install()`` does, raising ``Stop`` or recording calls."""

    def __init__(self, cls: type, name: str, *, stop: bool = False) -> None:
        self.cls, self.name, self.stop = cls, name, stop
        self.original = cls.__dict__[name]
        self.calls: list[Any] = []

    def __enter__(self) -> Seam:
        original, calls, stop = self.original, self.calls, self.stop
        if asyncio.iscoroutinefunction(original):

            async def wrapper(manager: Any, *args: Any, **kwargs: Any) -> Any:
                calls.append((manager, args))
                if stop:
                    raise Stop("no")
                return await original(manager, *args, **kwargs)

        else:

            def wrapper(manager: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                calls.append((manager, args))
                if stop:
                    raise Stop("no")
                return original(manager, *args, **kwargs)

        setattr(self.cls, self.name, wrapper)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.cls, self.name, self.original)


def test_every_tool_path_starts_its_run_through_the_callback_manager_before_the_body() -> None:
    from langchain_core.callbacks import manager

    effects: list[str] = []
    write_file, _ = tools(effects)
    with Seam(manager.CallbackManager, "on_tool_start", stop=True) as sync_seam:
        with pytest.raises(Stop):  # a plain invoke, no callbacks configured at all
            write_file.invoke({"text": "x"})
        with pytest.raises(Stop):  # create_agent's default ToolNode lets the exception out
            create_agent(model(call("write_file", {"text": "x"}), "done"), [write_file]).invoke(GO)
        # ainvoke of a sync tool runs invoke in a thread: the sync manager again.
        with pytest.raises(Stop):
            asyncio.run(write_file.ainvoke({"text": "x"}))

    @tool
    async def send_mail(to: str) -> str:
        """Send a mail."""
        effects.append(f"mail:{to}")
        return "sent"

    with Seam(manager.AsyncCallbackManager, "on_tool_start", stop=True) as async_seam:
        with pytest.raises(Stop):
            asyncio.run(send_mail.ainvoke({"to": "a@example.com"}))
    assert effects == [] and len(sync_seam.calls) == 3 and len(async_seam.calls) == 1
    assert sync_seam.calls[0][1][0]["name"] == "write_file"  # serialized carries the tool's name


def test_every_model_path_starts_its_run_through_the_callback_manager() -> None:
    from langchain_core.callbacks import manager

    chat = model("hello")
    with Seam(manager.CallbackManager, "on_chat_model_start", stop=True):
        for run in (lambda: chat.invoke("hi"), lambda: list(chat.stream("hi"))):
            with pytest.raises(Stop):
                run()
    with Seam(manager.AsyncCallbackManager, "on_chat_model_start", stop=True):
        with pytest.raises(Stop):
            asyncio.run(chat.ainvoke("hi"))

        async def stream() -> None:
            async for _ in chat.astream("hi"):
                pass

        with pytest.raises(Stop):
            asyncio.run(stream())
    assert chat.seen == []  # the model was never reached


def test_a_run_ends_on_the_manager_its_start_returned_and_carries_the_agent_name() -> None:
    from langchain_core.callbacks import manager

    effects: list[str] = []
    write_file, _ = tools(effects)
    agent = create_agent(model(call("write_file", {"text": "x"}), "done"), [write_file], name="writer")
    with (
        Seam(manager.CallbackManager, "on_tool_start") as tool_start,
        Seam(manager.CallbackManagerForToolRun, "on_tool_end") as tool_end,
        Seam(manager.CallbackManager, "on_chat_model_start") as model_start,
        Seam(manager.CallbackManagerForLLMRun, "on_llm_end") as model_end,
    ):
        agent.invoke(GO)
    assert effects == ["write:x"]
    assert tool_start.calls[0][0].metadata.get("lc_agent_name") == "writer"
    assert model_start.calls[0][0].metadata.get("lc_agent_name") == "writer"
    assert len(tool_end.calls) == 1 and len(model_end.calls) == 2
    assert type(tool_end.calls[0][0]) is manager.CallbackManagerForToolRun
    assert tool_end.calls[0][0].__dict__ is not None  # run managers take the attribute install() sets


def test_tool_input_and_output_pass_the_seams_install_redacts_at() -> None:
    """``BaseTool.run``/``arun`` give the tool body what ``BaseTool._to_args_and_kwargs`` returns (also
    for a single-input ``Tool``) and the caller what the module's ``_format_output`` makes of the body's
    result, on every tool path, inside the caller's config (which names the agent)."""
    from langchain_core.runnables import config as lc_config
    from langchain_core.tools import BaseTool, Tool, base

    seen: list[str] = []
    agents: list[Any] = []

    @tool
    def echo(text: str) -> str:
        """Echo."""
        seen.append(text)
        return f"echo {text}"

    @tool
    async def aecho(text: str) -> str:
        """Echo, async."""
        seen.append(text)
        return f"echo {text}"

    single = Tool(name="single", func=lambda text: seen.append(text) or f"echo {text}", description="Echo.")
    original_args, original_output = BaseTool.__dict__["_to_args_and_kwargs"], base.__dict__["_format_output"]

    def to_args(self: Any, tool_input: Any, tool_call_id: Any) -> Any:
        args, kwargs = original_args(self, tool_input, tool_call_id)
        config = lc_config.var_child_runnable_config.get()
        agents.append((config or {}).get("metadata", {}).get("lc_agent_name"))
        return tuple(a.upper() for a in args), {k: v.upper() for k, v in kwargs.items()}

    def output(content: Any, artifact: Any, tool_call_id: Any, name: Any, status: Any) -> Any:
        return original_output(f"[{content}]", artifact, tool_call_id, name, status)

    BaseTool._to_args_and_kwargs = to_args  # type: ignore[method-assign]
    base._format_output = output
    try:
        assert echo.invoke({"text": "a"}) == "[echo A]"
        assert asyncio.run(aecho.ainvoke({"text": "b"})) == "[echo B]"
        assert single.invoke("c") == "[echo C]"
        result = create_agent(model(call("echo", {"text": "d"}), "done"), [echo], name="echoer").invoke(GO)
    finally:
        BaseTool._to_args_and_kwargs = original_args  # type: ignore[method-assign]
        base._format_output = original_output
    message = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert message.content == "[echo D]"
    assert seen == ["A", "B", "C", "D"] and agents[-1] == "echoer"
