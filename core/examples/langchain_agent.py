"""A LangChain agent (``create_agent``) under the kill switch, fully offline.

    python -m m99.examples.langchain_agent            # embedded control plane; the example presses the switch
    python -m m99.examples.langchain_agent --url http://localhost:8099 --wait   # you press it: m99 arm / execute

The model is scripted (no key, no network): it asks for a tool on every turn, forever, so only the
kill switch ends the run.  The one line is ``m99.init(...)``; the LangChain adapter it installs stops the
tool call and the model call inside LangChain, and the run ends with ``ToolCallRefused`` /
``ModelCallRefused`` (both ``M99KillSwitchTriggered``).  LangChain is imported when the agent is built.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import cache
from typing import Any

import m99

from ._support import AgentRun, Operator, Work, arguments, control_plane, frozen_at, halted_by_m99, say, wait_until

NAME = "lc-researcher"


@cache
def scripted_researcher() -> type[Any]:
    """An offline chat model class that calls ``search`` on every turn with a new query."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class ScriptedResearcher(BaseChatModel):
        turn: Any = None

        @property
        def _llm_type(self) -> str:
            return "scripted-researcher"

        def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedResearcher:
            return self

        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> ChatResult:
            if self.turn is None:
                self.turn = itertools.count(1)
            n = next(self.turn)
            call = {"name": "search", "args": {"query": f"kill switch papers, page {n}"}, "id": f"call-{n}"}
            message = AIMessage(content="", tool_calls=[call])
            message.usage_metadata = {"input_tokens": 20, "output_tokens": 8, "total_tokens": 28}
            return ChatResult(generations=[ChatGeneration(message=message)])

    return ScriptedResearcher


def build_agent(name: str, work: Work) -> Any:
    """An ordinary ``create_agent`` agent: nothing in it knows about M99."""
    from langchain.agents import create_agent
    from langchain_core.tools import BaseTool, tool

    @tool
    def search(query: str) -> str:
        """Search the literature."""
        work.did(name, f"search {query!r}")
        return f"3 results for {query}"

    tools: list[BaseTool] = [search]
    return create_agent(scripted_researcher()(), tools, name=name, system_prompt="You research.")


def run_agent(agent: Any) -> Any:
    return agent.invoke(
        {"messages": [{"role": "user", "content": "Survey AI kill switches."}]}, {"recursion_limit": 10_000}
    )


def main() -> int:
    args = arguments((__doc__ or "").splitlines()[0])
    import langchain.agents  # noqa: F401  (an agent program imports its framework, then m99.init)

    with control_plane(args.url) as (url, token):
        runtime = m99.init(NAME, kind="research", url=url)
        say("m99", f"m99.init: adapters installed: {', '.join(runtime.installed)}")
        work = Work()
        froze = frozen_at(runtime.guard)
        agent = AgentRun(NAME, lambda: run_agent(build_agent(NAME, work)))
        agent.start()
        wait_until(lambda: work.count(NAME) >= 3, 60, "three tool calls")
        say(NAME, f"working: {work.count(NAME)} tool calls so far")
        if args.wait:
            say("m99", f"waiting for an operator: m99 arm --scope agent:{NAME} … then m99 execute …")
            agent.join()
        else:
            operator = Operator(url, token)
            execution, sent = operator.kill(f"agent:{NAME}", level=3, reason="runaway research loop")
            agent.join(30)
            halt = operator.wait_for_acks(execution["execution_id"], 1)
            say("m99", f"time to halt (acknowledged by the agent): {halt['per_agent']} ms")
            say("m99", work.report(NAME, froze() or sent))
        m99.shutdown()
    ok = halted_by_m99(agent)
    say("m99", "halted by the kill switch" if ok else f"NOT halted by M99: {agent.outcome}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
