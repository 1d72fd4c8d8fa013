"""Offline LangChain pieces for the tests: a scripted chat model create_agent accepts, and tools
whose side effects the tests can see."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import BaseTool, tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition


class ScriptedModel(FakeMessagesListChatModel):
    """Replies from ``responses`` in order, then repeats the last one; records what it was sent.

    ``bind_tools`` returns itself (the stock fake has none, and create_agent needs it);
    ``on_call(n)`` runs before reply ``n`` — the tests use it to press the kill switch mid-run.
    """

    seen: list[list[BaseMessage]] = []
    on_call: Callable[[int], None] | None = None

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:  # type: ignore[override]
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        if self.on_call is not None:
            self.on_call(len(self.seen))
        index = min(len(self.seen) - 1, len(self.responses) - 1)
        self.i = index
        return super()._generate(messages, *args, **kwargs)


def call(name: str, args: dict[str, Any], n: int = 1) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call-{name}-{n}"}])


def model(*responses: AIMessage | str, usage: int = 0) -> ScriptedModel:
    messages = [AIMessage(content=r) if isinstance(r, str) else r for r in responses]
    if usage:
        for message in messages:
            message.usage_metadata = {"input_tokens": usage, "output_tokens": 0, "total_tokens": usage}
    return ScriptedModel(responses=messages, seen=[])


def tools(effects: list[str]) -> tuple[BaseTool, BaseTool]:
    """``write_file`` (a write tool) and ``search`` (declared read-only by the tests' Guards)."""

    @tool
    def write_file(text: str) -> str:
        """Write text to a file."""
        effects.append(f"write:{text}")
        return f"wrote {text}"

    @tool
    def search(query: str) -> str:
        """Search the web."""
        effects.append(f"search:{query}")
        return f"results for {query}"

    return write_file, search


def tool_loop_graph(chat: ScriptedModel, tool_list: Sequence[BaseTool], **tool_node: Any) -> Any:
    """The classic hand-built agent graph: model ⇄ ToolNode (here with ``handle_tool_errors``)."""

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [chat.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(list(tool_list), **tool_node))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "agent")
    return graph.compile()
