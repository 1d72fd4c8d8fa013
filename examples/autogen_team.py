"""An AutoGen team (``RoundRobinGroupChat``) under the kill switch, fully offline.

    python examples/autogen_team.py            # embedded control plane; the demo presses the switch
    python examples/autogen_team.py --url http://localhost:8099 --wait   # you press it: m99 arm / execute

The model clients replay scripted answers (no key, no network): the writer saves a draft on every turn
and the reviewer asks for another, forever, so only the kill switch ends the team.  ``m99.init(...)``
installs the AutoGen adapter (class-level seams of ``AssistantAgent``: its workbench and model client),
the team gets its own M99 identity, and ``M99Termination`` ends ``team.run`` cleanly at the next turn
with the reason, instead of AutoGen's traps (a raising tool path hangs ``run()``).
"""

from __future__ import annotations

import json
from typing import Any

from _demo import AgentRun, Operator, Work, arguments, control_plane, frozen_at, halted_by_m99, say, wait_until
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import FunctionCall
from autogen_core.models import CreateResult, ModelInfo, RequestUsage
from autogen_core.tools import FunctionTool
from autogen_ext.models.replay import ReplayChatCompletionClient

import m99
from m99.adapters.autogen import M99Termination

MODEL_INFO = ModelInfo(
    vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False
)
TURNS = 5_000  # scripted answers per agent: far more than the demo lets it use


class OfflineClient(ReplayChatCompletionClient):
    """AutoGen's replay client, counting tokens by words for every message kind (quietly)."""

    def _tokenize(self, messages: Any) -> tuple[list[str], int]:
        words = str(getattr(messages, "content", messages)).split()
        return words, len(words)


def draft_call(n: int) -> CreateResult:
    call = FunctionCall(id=f"call-{n}", name="save_draft", arguments=json.dumps({"text": f"draft {n}"}))
    usage = RequestUsage(prompt_tokens=30, completion_tokens=10)
    return CreateResult(finish_reason="function_calls", content=[call], usage=usage, cached=False)


def build_team(guard: Any, work: Work, label: str) -> RoundRobinGroupChat:
    """An ordinary AutoGen team, plus M99Termination in its termination condition."""

    def save_draft(text: str) -> str:
        """Save a draft of the report."""
        work.did(label, f"save_draft {text!r}")
        return f"saved {text}"

    writer = AssistantAgent(
        "writer",
        model_client=OfflineClient([draft_call(n) for n in range(TURNS)], model_info=MODEL_INFO),
        tools=[FunctionTool(save_draft, "Save a draft of the report.")],
    )
    reviewer = AssistantAgent(
        "reviewer",
        model_client=OfflineClient(["Not yet; another draft, please."] * TURNS, model_info=MODEL_INFO),
    )
    stop = MaxMessageTermination(4 * TURNS) | M99Termination(guard)
    return RoundRobinGroupChat([writer, reviewer], termination_condition=stop)


async def run_team(team: RoundRobinGroupChat) -> str:
    result = await team.run(task="Write the incident report.")
    return f"stop_reason={result.stop_reason}"


def main() -> int:
    import asyncio

    args = arguments(__doc__.splitlines()[0])
    with control_plane(args.url) as (url, token):
        runtime = m99.init("autogen-host", kind="research", url=url)
        team_guard = runtime.agent("ag-team", framework="autogen", bind=["writer", "reviewer"])
        say("m99", f"m99.init: adapters installed: {', '.join(runtime.installed)}; writer+reviewer are ag-team")
        work = Work()
        froze = frozen_at(team_guard)
        team = AgentRun("ag-team", lambda: asyncio.run(run_team(build_team(team_guard, work, "ag-team"))))
        team.start()
        wait_until(lambda: work.count("ag-team") >= 3, 60, "three tool calls")
        say("ag-team", f"working: {work.count('ag-team')} tool calls so far")
        if args.wait:
            say("m99", "waiting for an operator: m99 arm --scope agent:ag-team … then m99 execute …")
            team.join()
        else:
            operator = Operator(url, token)
            execution, sent = operator.kill("agent:ag-team", level=3, reason="drafting loop")
            team.join(30)
            halt = operator.wait_for_acks(execution["execution_id"], 1)
            say("m99", f"time to halt (acknowledged by the agent): {halt['per_agent']} ms")
            say("m99", work.report("ag-team", froze() or sent))
        m99.shutdown()
    ok = halted_by_m99(team)
    say("m99", "halted by the kill switch" if ok else f"NOT halted by M99: {team.outcome}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
