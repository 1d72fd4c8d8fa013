"""A CrewAI crew under the kill switch, fully offline.

    python -m m99.examples.crewai_crew            # embedded control plane; the example presses the switch
    python -m m99.examples.crewai_crew --url http://localhost:8099 --wait   # you press it: m99 arm / execute

The LLM is scripted (no key, no network): the analyst calls a tool on every step, so only the kill
switch ends the crew.  ``m99.init(...)`` installs CrewAI's global tool and LLM hooks; the crew's agent
gets its own M99 identity (``runtime.agent(..., bind=<role>)``) so a kill can name it alone.  CrewAI
swallows ordinary exceptions from hooks, so the adapter raises its ``HookAborted`` kind:
``kickoff()`` ends at once with ``M99RunStopped``, an ``M99KillSwitchTriggered``.  CrewAI is imported
when the crew is built.
"""

from __future__ import annotations

import itertools
import json
from functools import cache
from typing import Any

import m99

from ._support import AgentRun, Operator, Work, arguments, control_plane, frozen_at, halted_by_m99, say, wait_until

ROLE = "Incident Analyst"
NAME = "crew-analyst"


@cache
def scripted_analyst() -> type[Any]:
    """An offline LLM class that answers every step with a ReAct tool call (a new query each time)."""
    from crewai.llms.base_llm import BaseLLM

    class ScriptedAnalyst(BaseLLM):
        turn: Any = None

        def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
            if self.turn is None:
                self.turn = itertools.count(1)
            n = next(self.turn)
            query = json.dumps({"query": f"incident report {n}"})
            return f"Thought: I need more data\nAction: lookup\nAction Input: {query}"

        async def acall(self, *args: Any, **kwargs: Any) -> str:
            return self.call(*args, **kwargs)

        def get_input_tokens_count(self, messages: Any, *args: Any, **kwargs: Any) -> int:
            return len(str(messages)) // 4  # what CrewAI's default estimates, without its warning per step

        def supports_function_calling(self) -> bool:
            return False

        def supports_stop_words(self) -> bool:
            return False

    return ScriptedAnalyst


def never_cache(args: Any, result: Any) -> bool:
    return False


def build_crew(role: str, work: Work, label: str) -> Any:
    """An ordinary crew: nothing in it knows about M99."""
    from crewai import Agent, Crew, Task
    from crewai.tools import BaseTool, tool

    @tool("lookup")
    def lookup(query: str) -> str:
        """Look up incident reports."""
        work.did(label, f"lookup {query!r}")
        return f"2 reports about {query}"

    lookup.cache_function = never_cache  # every call really runs the tool
    tools: list[BaseTool] = [lookup]
    analyst = Agent(
        role=role,
        goal="Find every incident report",
        backstory="A tireless analyst.",
        llm=scripted_analyst()(model="scripted-analyst"),
        tools=tools,
        max_iter=10_000,
        verbose=False,
    )
    task = Task(description="Collect the incident reports.", expected_output="A summary.", agent=analyst)
    return Crew(agents=[analyst], tasks=[task], verbose=False)


def main() -> int:
    args = arguments((__doc__ or "").splitlines()[0])
    import crewai  # noqa: F401  (an agent program imports its framework, then m99.init)

    with control_plane(args.url) as (url, token):
        runtime = m99.init("crew-host", kind="research", url=url)
        analyst = runtime.agent(NAME, framework="crewai", bind=ROLE)
        say("m99", f"m99.init: adapters installed: {', '.join(runtime.installed)}; {ROLE} is {NAME}")
        work = Work()
        froze = frozen_at(analyst)
        crew = AgentRun(NAME, lambda: build_crew(ROLE, work, NAME).kickoff())
        crew.start()
        wait_until(lambda: work.count(NAME) >= 3, 60, "three tool calls")
        say(NAME, f"working: {work.count(NAME)} tool calls so far")
        if args.wait:
            say("m99", f"waiting for an operator: m99 arm --scope agent:{NAME} … then m99 execute …")
            crew.join()
        else:
            operator = Operator(url, token)
            execution, sent = operator.kill(f"agent:{NAME}", level=3, reason="analyst exceeded its brief")
            crew.join(30)
            halt = operator.wait_for_acks(execution["execution_id"], 1)
            say("m99", f"time to halt (acknowledged by the agent): {halt['per_agent']} ms")
            say("m99", work.report(NAME, froze() or sent))
        m99.shutdown()
    ok = halted_by_m99(crew)
    say("m99", "halted by the kill switch" if ok else f"NOT halted by M99: {crew.outcome}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
