"""Offline AutoGen pieces for the tests: a replay model client that can press the switch mid-run,
function-calling model info (the replay default has none), and tools with visible side effects."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_core import FunctionCall
from autogen_core.models import CreateResult, LLMMessage, ModelInfo, RequestUsage
from autogen_core.tools import FunctionTool
from autogen_ext.models.replay import ReplayChatCompletionClient
from autogen_ext.tools.mcp import StdioServerParams

MODEL_INFO = ModelInfo(
    vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False
)
MCP_SERVER = StdioServerParams(command=sys.executable, args=[str(Path(__file__).with_name("mcp_server.py"))])


class ScriptedClient(ReplayChatCompletionClient):
    """Replays ``script`` (padded with "done"); ``on_call(n)`` runs before answer ``n``."""

    def __init__(self, script: Sequence[str | CreateResult], on_call: Callable[[int], None] | None = None) -> None:
        super().__init__([*script, *["done"] * 20], model_info=MODEL_INFO)
        self.on_call = on_call
        self.calls = 0

    def _next(self) -> None:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        self._next()
        return await super().create(messages, **kwargs)

    async def create_stream(  # type: ignore[override]
        self, messages: Sequence[LLMMessage], **kwargs: Any
    ) -> AsyncGenerator[str | CreateResult, None]:
        self._next()
        async for chunk in super().create_stream(messages, **kwargs):
            yield chunk


def call(name: str, args: dict[str, Any], n: int = 1) -> CreateResult:
    return CreateResult(
        finish_reason="function_calls",
        content=[FunctionCall(id=f"call-{n}", name=name, arguments=json.dumps(args))],
        usage=RequestUsage(prompt_tokens=3, completion_tokens=4),
        cached=False,
    )


def tools(effects: list[str]) -> tuple[FunctionTool, FunctionTool]:
    """``write_file`` (a write tool) and ``search`` (declared read-only by the tests' Guards)."""

    def write_file(text: str) -> str:
        """Write text to a file."""
        effects.append(f"write:{text}")
        return f"wrote {text}"

    def search(query: str) -> str:
        """Search the web."""
        effects.append(f"search:{query}")
        return f"results for {query}"

    return FunctionTool(write_file, "Write text to a file."), FunctionTool(search, "Search the web.")


def agent(name: str, client: ScriptedClient, tool_list: Sequence[Any] = (), **kwargs: Any) -> AssistantAgent:
    kwargs.setdefault("max_tool_iterations", 3)
    return AssistantAgent(name, model_client=client, tools=list(tool_list) or None, **kwargs)
