"""Offline CrewAI pieces for the tests: scripted LLMs (ReAct text and native function calling) and
tools whose side effects the tests can see.  Importing this imports crewai (~2.5 s, once)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import BaseTool, tool


class ScriptedLLM(BaseLLM):
    """Answers from ``script`` in order (then repeats the last entry) and records what it was sent.

    ReAct text by default; with ``native=True`` it claims function calling and entries may be
    OpenAI-style tool-call lists.  ``on_call(n)`` runs before answer ``n`` (to press the switch).
    """

    script: list[Any] = []
    seen: list[Any] = []
    native: bool = False
    on_call: Callable[[int], None] | None = None

    def call(  # type: ignore[override]
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        self.seen.append(json.loads(json.dumps(messages, default=str)))
        if self.on_call is not None:
            self.on_call(len(self.seen))
        return self.script[min(len(self.seen) - 1, len(self.script) - 1)]

    async def acall(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.call(*args, **kwargs)

    def supports_function_calling(self) -> bool:
        return self.native

    def supports_stop_words(self) -> bool:
        return False


def react(tool_name: str, args: dict[str, Any]) -> str:
    return f"Thought: I will use a tool\nAction: {tool_name}\nAction Input: {json.dumps(args)}"


FINAL = "Thought: I know the answer\nFinal Answer: done"


def native(tool_name: str, args: dict[str, Any], n: int = 1) -> list[dict[str, Any]]:
    return [{"id": f"call_{n}", "type": "function", "function": {"name": tool_name, "arguments": json.dumps(args)}}]


def llm(*script: Any, native_calls: bool = False) -> ScriptedLLM:
    return ScriptedLLM(model="scripted", script=list(script), seen=[], native=native_calls)


def tools(effects: list[str]) -> tuple[BaseTool, BaseTool]:
    """``write_file`` (a write tool) and ``search`` (declared read-only by the tests' Guards)."""

    @tool("write_file")
    def write_file(text: str) -> str:
        """Write text to a file."""
        effects.append(f"write:{text}")
        return f"wrote {text}"

    @tool("search")
    def search(query: str) -> str:
        """Search the web."""
        effects.append(f"search:{query}")
        return f"results for {query}"

    # Identical calls would otherwise be answered from CrewAI's tool cache without running the tool.
    write_file.cache_function = never_cache
    search.cache_function = never_cache
    return write_file, search


def never_cache(args: Any, result: Any) -> bool:  # module-level: CrewAI warns about lambdas
    return False


def agent(role: str, model: ScriptedLLM, tool_list: list[BaseTool]) -> Agent:
    return Agent(role=role, goal="get it done", backstory="a test agent", llm=model, tools=tool_list, verbose=False)


def crew(*agents: Agent) -> Crew:
    tasks = [Task(description=f"{a.role}: do the work", expected_output="done", agent=a) for a in agents]
    return Crew(agents=list(agents), tasks=tasks, verbose=False)
