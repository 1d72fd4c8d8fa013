"""An AutoGen team (``RoundRobinGroupChat``) under the kill switch, fully offline.

    python -m m99.examples.autogen_team            # embedded control plane; the example presses the switch
    python -m m99.examples.autogen_team --url http://localhost:8099 --wait   # you press it: m99 arm / execute

The model clients replay scripted answers (no key, no network): the writer saves a draft on every turn
and the reviewer asks for another, forever, so only the kill switch ends the team.  ``m99.init(...)``
installs the AutoGen adapter (class-level seams of ``AssistantAgent``: its workbench and model client),
the team gets its own M99 identity, and ``M99Termination`` ends ``team.run`` cleanly at the next turn
with the reason, instead of AutoGen's traps (a raising tool path hangs ``run()``).  AutoGen is imported
when the team is built.
"""

from __future__ import annotations

import asyncio
import json
from functools import cache
from typing import Any

import m99

from ._support import AgentRun, Operator, Work, arguments, control_plane, frozen_at, halted_by_m99, say, wait_until

NAME = "ag-team"
MEMBERS = ["writer", "reviewer"]
TURNS = 5_000  # scripted answers per agent: far more than the example lets it use


@cache
def offline_client() -> type[Any]:
    """AutoGen's replay client, counting tokens by words for every message kind (quietly)."""
    from autogen_ext.models.replay import ReplayChatCompletionClient

    class OfflineClient(ReplayChatCompletionClient):
        def _tokenize(self, messages: Any) -> tuple[list[str], int]:
            words = str(getattr(messages, "content", messages)).split()
            return words, len(words)

    return OfflineClient


def draft_call(n: int) -> Any:
    from autogen_core import FunctionCall
    from autogen_core.models import CreateResult, RequestUsage

    call = FunctionCall(id=f"call-{n}", name="save_draft", arguments=json.dumps({"text": f"draft {n}"}))
    usage = RequestUsage(prompt_tokens=30, completion_tokens=10)
    return CreateResult(finish_reason="function_calls", content=[call], usage=usage, cached=False)


def build_team(guard: Any, work: Work, label: str) -> Any:
    """An ordinary AutoGen team, plus M99Termination in its termination condition."""
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.conditions import MaxMessageTermination
    from autogen_agentchat.teams import RoundRobinGroupChat
    from autogen_core.models import ModelInfo
    from autogen_core.tools import FunctionTool

    from m99.adapters.autogen import M99Termination

    model_info = ModelInfo(
        vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False
    )

    def save_draft(text: str) -> str:
        """Save a draft of the report."""
        work.did(label, f"save_draft {text!r}")
        return f"saved {text}"

    client = offline_client()
    writer = AssistantAgent(
        "writer",
        model_client=client([draft_call(n) for n in range(TURNS)], model_info=model_info),
        tools=[FunctionTool(save_draft, "Save a draft of the report.")],
    )
    reviewer = AssistantAgent(
        "reviewer",
        model_client=client(["Not yet; another draft, please."] * TURNS, model_info=model_info),
    )
    stop = MaxMessageTermination(4 * TURNS) | M99Termination(guard)
    return RoundRobinGroupChat([writer, reviewer], termination_condition=stop)


async def run_team(team: Any) -> str:
    result = await team.run(task="Write the incident report.")
    return f"stop_reason={result.stop_reason}"


def main() -> int:
    args = arguments((__doc__ or "").splitlines()[0])
    import autogen_agentchat.agents  # noqa: F401  (an agent program imports its framework, then m99.init)

    with control_plane(args.url) as (url, token):
        runtime = m99.init("autogen-host", kind="research", url=url)
        team_guard = runtime.agent(NAME, framework="autogen", bind=MEMBERS)
        say("m99", f"m99.init: adapters installed: {', '.join(runtime.installed)}; writer+reviewer are {NAME}")
        work = Work()
        froze = frozen_at(team_guard)
        team = AgentRun(NAME, lambda: asyncio.run(run_team(build_team(team_guard, work, NAME))))
        team.start()
        wait_until(lambda: work.count(NAME) >= 3, 60, "three tool calls")
        say(NAME, f"working: {work.count(NAME)} tool calls so far")
        if args.wait:
            say("m99", f"waiting for an operator: m99 arm --scope agent:{NAME} … then m99 execute …")
            team.join()
        else:
            operator = Operator(url, token)
            execution, sent = operator.kill(f"agent:{NAME}", level=3, reason="drafting loop")
            team.join(30)
            halt = operator.wait_for_acks(execution["execution_id"], 1)
            say("m99", f"time to halt (acknowledged by the agent): {halt['per_agent']} ms")
            say("m99", work.report(NAME, froze() or sent))
        m99.shutdown()
    ok = halted_by_m99(team)
    say("m99", "halted by the kill switch" if ok else f"NOT halted by M99: {team.outcome}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
