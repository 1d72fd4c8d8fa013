"""Write the notebooks of this directory from the cells below, execute each top to bottom and save it with
its outputs (what a repository page shows):

    python examples/notebooks/_build.py            # all of them
    python examples/notebooks/_build.py crewai     # one

Offline: scripted models, telemetry off, a control plane embedded in the kernel on a temporary database.
tests/test_notebooks.py executes the saved notebooks the same way, so they cannot rot.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
TIMEOUT = 180  # seconds a cell may take

LC_IMPORTS = """\
import itertools
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool"""

LC_INIT = """\
runtime = m99.init("lc-researcher", kind="research", url=cp.url)
print("adapters installed:", runtime.installed)"""

LC_AGENT = """\
class ScriptedResearcher(BaseChatModel):
    \"\"\"An offline chat model that calls `search` on every turn with a new query.\"\"\"

    turn: Any = None

    @property
    def _llm_type(self) -> str:
        return "scripted-researcher"

    def bind_tools(self, tools, **kwargs):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.turn = self.turn or itertools.count(1)
        n = next(self.turn)
        call = {"name": "search", "args": {"query": f"kill switch papers, page {n}"}, "id": f"call-{n}"}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="", tool_calls=[call]))])


searches: list[str] = []


@tool
def search(query: str) -> str:
    \"\"\"Search the literature.\"\"\"
    searches.append(query)
    return f"3 results for {query}"


agent = create_agent(ScriptedResearcher(), [search], name="lc-researcher", system_prompt="You research.")"""


CREW_IMPORTS = """\
import itertools
import json
from typing import Any

from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool"""

CREW_INIT = """\
runtime = m99.init("crew-host", kind="research", url=cp.url)
analyst_guard = runtime.agent("crew-analyst", framework="crewai", bind="Incident Analyst")
print("adapters installed:", runtime.installed)"""
CREW_AGENTS = """\
class ScriptedAnalyst(BaseLLM):
    \"\"\"An offline LLM that answers every step with a ReAct tool call.\"\"\"

    turn: Any = None

    def call(self, messages, *args, **kwargs) -> str:
        self.turn = self.turn or itertools.count(1)
        query = json.dumps({"query": f"incident report {next(self.turn)}"})
        return f"Thought: I need more data\\nAction: lookup\\nAction Input: {query}"

    async def acall(self, *args, **kwargs) -> str:
        return self.call(*args, **kwargs)

    def get_input_tokens_count(self, messages, *args, **kwargs) -> int:
        return len(str(messages)) // 4

    def supports_function_calling(self) -> bool:
        return False

    def supports_stop_words(self) -> bool:
        return False


lookups: list[str] = []


@tool("lookup")
def lookup(query: str) -> str:
    \"\"\"Look up incident reports.\"\"\"
    lookups.append(query)
    return f"2 reports about {query}"


lookup.cache_function = lambda args, result: False  # every call really runs the tool
analyst = Agent(
    role="Incident Analyst",
    goal="Find every incident report",
    backstory="A tireless analyst.",
    llm=ScriptedAnalyst(model="scripted-analyst"),
    tools=[lookup],
    max_iter=10_000,
    verbose=False,
)
task = Task(description="Collect the incident reports.", expected_output="A summary.", agent=analyst)
crew = Crew(agents=[analyst], tasks=[task], verbose=False)"""

SETUP = """\
import logging
import os

# Offline: no framework phones home, no API key is needed (the models below are scripted).
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TESTING", "true")

from m99 import EmbeddedControlPlane

logging.getLogger("m99.control").setLevel(logging.ERROR)  # the server's own log line per execution, not here
cp = EmbeddedControlPlane().start()  # a real control plane on a thread, on a temporary database
print(f"control plane at {cp.url}, dashboard at {cp.url}/")"""

OPERATOR_MD = """\
## The operator

An operator talks to the control plane over REST with a token (here the admin token the embedded
control plane wrote on first start) — the same calls `m99 arm` and `m99 execute` make. Arming creates a
single-use authorisation valid for 5 minutes; executing it fires L1…L3 on every agent in scope."""

OPERATOR = """\
import subprocess
import sys
import time

import httpx

ops = httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"}, timeout=30)


def kill(scope: str, reason: str, level: int = 3) -> str:
    auth = ops.post("/api/arm", json={"by": "ops@example.com", "reason": reason, "scope": scope, "level": level})
    auth = auth.json()
    print(f"armed    {auth['id']}: L{auth['level']} on {auth['scope']}, expires {auth['expires_at']}")
    done = ops.post("/api/execute", json={"authorization_id": auth["id"]}).json()
    print(f"executed {done['execution_id']}: {' '.join(done['levels_fired'])} on {', '.join(done['agents'])}")
    return done["execution_id"]


def time_to_halt(execution_id: str, agents: int, timeout: float = 10) -> dict:
    \"\"\"Each agent's confirmed halt, from its signed acknowledgement (or 'not confirmed').\"\"\"
    deadline = time.monotonic() + timeout
    while True:
        halt = ops.get(f"/api/executions/{execution_id}").json()["time_to_halt"]
        if halt["confirmed"] >= agents or time.monotonic() > deadline:
            return halt
        time.sleep(0.05)


def m99_cli(*args: str) -> None:
    \"\"\"The `m99` command, against this control plane.\"\"\"
    env = {**os.environ, "M99_URL": cp.url, "M99_TOKEN": cp.token}
    out = subprocess.run([sys.executable, "-m", "m99.cli", *args], env=env, capture_output=True, text=True)
    print((out.stdout + out.stderr).rstrip())


def audit_since(seq: int) -> None:
    for e in ops.get("/api/audit", params={"after": seq, "limit": 1000}).json():
        data = {k: v for k, v in e["data"].items() if k in ("agent", "agents", "level", "name", "scope", "reason")}
        print(f"{e['seq']:>4}  {e['kind']:<22} {e['actor'].get('by', ''):<18} {data}")


audit_start = ops.get("/api/audit/verify").json()["entries"] - 1
print("operator ready; audit chain has", audit_start + 1, "entries")"""

AUDIT_MD = """\
## The record

Every step is an entry of the SHA-256 audit chain, with Ed25519-signed checkpoints of its head: the
authorisation, the execution, each level fired, and the agents' registrations. `m99 audit verify`
checks the whole chain."""

VERIFY = """\
m99_cli("audit", "verify")"""

CASEPACK_MD = """\
## The proof: a case pack

`m99 casepack get` writes the execution as one signed file: the authorisation, the server's snapshot,
each agent's signed receipt and evidence (the tool calls it had made), the audit-chain slice with its
signed checkpoint, and every public key. `m99 casepack verify` checks it offline, with nothing but the
file and the server's public key."""

CASEPACK = """\
import tempfile

newest = ops.get("/api/executions").json()[0]["id"]
deadline = time.monotonic() + 5  # each agent's signed evidence follows its acknowledgement
while time.monotonic() < deadline:
    if any(e["kind"] == "agent" for e in ops.get(f"/api/executions/{newest}/evidence").json()):
        break
    time.sleep(0.1)
pack = os.path.join(tempfile.mkdtemp(), f"{newest}.zip")
m99_cli("casepack", "get", newest, "-o", pack)
m99_cli("casepack", "verify", pack, "--public-key", cp.server_key)"""


def langchain() -> list[tuple[str, str]]:
    return [
        (
            "md",
            """\
# Halting a LangChain agent

A `create_agent` agent whose (scripted, offline) model calls a tool on every turn, forever: only the kill
switch ends the run. The one M99 line is `m99.init(...)`; the LangChain adapter it installs refuses the
next tool or model call inside LangChain's callback managers, and `invoke` ends with
`M99KillSwitchTriggered` (here `ToolCallRefused` or `ModelCallRefused`).""",
        ),
        ("code", SETUP),
        (
            "md",
            """\
## The agent: one line of M99

Nothing in the agent below knows about M99. `m99.init` registers this process as `lc-researcher`, starts
signed heartbeats and the pushed state stream, and installs the adapter of every framework imported.""",
        ),
        (
            "code",
            LC_IMPORTS + "\n\nimport m99\n\n" + LC_INIT + "\n\n\n" + LC_AGENT,
        ),
        (
            "md",
            """\
## Run it, mid-task

The run goes on a thread (as it would in a worker), with the `try/except` your code needs around
`invoke`.""",
        ),
        (
            "code",
            """\
import threading
import time

from m99 import M99KillSwitchTriggered

outcome: dict[str, Any] = {}


def run() -> None:
    try:
        agent.invoke(
            {"messages": [{"role": "user", "content": "Survey AI kill switches."}]}, {"recursion_limit": 10_000}
        )
        outcome["result"] = "finished on its own"
    except M99KillSwitchTriggered as stop:
        outcome["stopped"] = stop


worker = threading.Thread(target=run, daemon=True)
worker.start()
while len(searches) < 3:
    time.sleep(0.01)
print(f"working: {len(searches)} searches so far")""",
        ),
        ("md", OPERATOR_MD),
        ("code", OPERATOR),
        (
            "code",
            """\
execution = kill("agent:lc-researcher", "runaway research loop")
worker.join(30)
stop = outcome["stopped"]
print(f"\\ninvoke raised {type(stop).__name__}: {stop}")
print(f"searches: {len(searches)} in all; the agent's Guard is at L{runtime.guard.level}")""",
        ),
        (
            "md",
            """\
## Time-to-halt

The Guard acknowledged the state it enforced with a signed receipt; the control plane records each
agent's time-to-halt from the execution to that acknowledgement — or *not confirmed*.""",
        ),
        (
            "code",
            """\
halt = time_to_halt(execution, 1)
print("confirmed:", halt["confirmed"], "of", halt["in_scope"], "| per agent (ms):", halt["per_agent"])
print("not confirmed:", halt["not_confirmed"])
m99_cli("executions", execution)""",
        ),
        ("md", AUDIT_MD),
        ("code", "audit_since(audit_start)"),
        ("code", VERIFY),
        ("md", CASEPACK_MD),
        ("code", CASEPACK),
        ("md", "## Clean up\n\n`m99.shutdown()` uninstalls the adapters and deregisters the agent."),
        ("code", "m99.shutdown()\nops.close()\ncp.stop()"),
    ]


def crewai() -> list[tuple[str, str]]:
    return [
        (
            "md",
            """\
# Halting a CrewAI crew

A crew whose (scripted, offline) analyst calls a tool on every step: only the kill switch ends it.
`m99.init(...)` installs CrewAI's tool and LLM hooks; the analyst's role gets an M99 identity of its own,
so a kill can name it. Jupyter runs an event loop, in which CrewAI's sync `kickoff()` cannot run: use
`await crew.kickoff_async()`, inside the `try/except` your code needs — it raises `M99RunStopped`, an
`M99KillSwitchTriggered`.""",
        ),
        ("code", SETUP),
        (
            "code",
            CREW_IMPORTS + "\n\nimport m99\n\n" + CREW_INIT + "\n\n\n" + CREW_AGENTS,
        ),
        ("md", "## Run it, mid-task\n\nThe crew runs as a task on the notebook's event loop."),
        (
            "code",
            """\
import asyncio

from m99 import M99KillSwitchTriggered


async def run() -> str:
    try:
        await crew.kickoff_async()
        return "finished on its own"
    except M99KillSwitchTriggered as stop:
        return f"kickoff_async raised {type(stop).__name__}: {stop}"


running = asyncio.ensure_future(run())
while len(lookups) < 3:
    await asyncio.sleep(0.01)
print(f"working: {len(lookups)} lookups so far")""",
        ),
        ("md", OPERATOR_MD),
        ("code", OPERATOR),
        (
            "code",
            """\
execution = await asyncio.to_thread(kill, "agent:crew-analyst", "analyst exceeded its brief")
print()
print(await asyncio.wait_for(running, 30))
print(f"lookups: {len(lookups)} in all; crew-analyst's Guard is at L{analyst_guard.level}")""",
        ),
        (
            "md",
            """\
## Time-to-halt

The analyst's Guard acknowledged the halt with a signed receipt before the refusal reached CrewAI.""",
        ),
        (
            "code",
            """\
halt = await asyncio.to_thread(time_to_halt, execution, 1)
print("confirmed:", halt["confirmed"], "of", halt["in_scope"], "| per agent (ms):", halt["per_agent"])
print("not confirmed:", halt["not_confirmed"])
m99_cli("executions", execution)""",
        ),
        ("md", AUDIT_MD),
        ("code", "audit_since(audit_start)"),
        ("code", VERIFY),
        ("md", CASEPACK_MD),
        ("code", CASEPACK),
        ("md", "## Clean up"),
        ("code", "m99.shutdown()\nops.close()\ncp.stop()"),
    ]


AUTOGEN_AGENTS = """\
import json
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import FunctionCall
from autogen_core.models import CreateResult, ModelInfo, RequestUsage
from autogen_core.tools import FunctionTool
from autogen_ext.models.replay import ReplayChatCompletionClient

from m99.adapters.autogen import M99Termination

MODEL_INFO = ModelInfo(
    vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False
)
TURNS = 5_000  # scripted answers: far more than the run lets it use


class OfflineClient(ReplayChatCompletionClient):
    \"\"\"AutoGen's replay client, counting tokens by words.\"\"\"

    def _tokenize(self, messages: Any) -> tuple[list[str], int]:
        words = str(getattr(messages, "content", messages)).split()
        return words, len(words)


def draft_call(n: int) -> CreateResult:
    call = FunctionCall(id=f"call-{n}", name="save_draft", arguments=json.dumps({"text": f"draft {n}"}))
    return CreateResult(finish_reason="function_calls", content=[call], usage=RequestUsage(30, 10), cached=False)


drafts: list[str] = []


def save_draft(text: str) -> str:
    \"\"\"Save a draft of the report.\"\"\"
    drafts.append(text)
    return f"saved {text}"


def build_team(guard) -> RoundRobinGroupChat:
    writer = AssistantAgent(
        "writer",
        model_client=OfflineClient([draft_call(n) for n in range(TURNS)], model_info=MODEL_INFO),
        tools=[FunctionTool(save_draft, "Save a draft of the report.")],
    )
    reviewer = AssistantAgent(
        "reviewer", model_client=OfflineClient(["Not yet; another draft, please."] * TURNS, model_info=MODEL_INFO)
    )
    stop = MaxMessageTermination(4 * TURNS) | M99Termination(guard)
    return RoundRobinGroupChat([writer, reviewer], termination_condition=stop)"""


def autogen() -> list[tuple[str, str]]:
    return [
        (
            "md",
            """\
# Halting an AutoGen team

A `RoundRobinGroupChat` of a writer that saves a draft on every turn and a reviewer that always asks for
another (replayed, offline models): only the kill switch ends it. `m99.init(...)` installs the AutoGen
adapter; the team gets an M99 identity of its own, and `M99Termination` in its termination condition ends
`team.run` cleanly at the next turn, with who stopped it and why as the stop reason. A refused tool call
is an error result (never an exception: that would hang AutoGen's `run()`).""",
        ),
        ("code", SETUP),
        (
            "code",
            """\
import m99

runtime = m99.init("autogen-host", kind="research", url=cp.url)
team_guard = runtime.agent("ag-team", framework="autogen", bind=["writer", "reviewer"])
print("installed now:", runtime.installed, "| waiting for their framework's import:", sorted(runtime.waiting))""",
        ),
        (
            "md",
            "The agents below are ordinary AutoGen agents; the adapter installs as `autogen_agentchat` is imported.",
        ),
        ("code", AUTOGEN_AGENTS + '\n\n\nprint("adapters installed:", runtime.installed)'),
        ("md", "## Run it, mid-task\n\nThe team runs as a task on the notebook's event loop."),
        (
            "code",
            """\
import asyncio

from m99 import M99KillSwitchTriggered


async def run() -> str:
    try:
        result = await build_team(team_guard).run(task="Write the incident report.")
        return f"team.run ended: {result.stop_reason}"
    except M99KillSwitchTriggered as stop:  # without M99Termination, the team raises M99's error
        return f"team.run raised {type(stop).__name__}: {stop}"


running = asyncio.ensure_future(run())
while len(drafts) < 3:
    await asyncio.sleep(0.01)
print(f"working: {len(drafts)} drafts so far")""",
        ),
        ("md", OPERATOR_MD),
        ("code", OPERATOR),
        (
            "code",
            """\
execution = await asyncio.to_thread(kill, "agent:ag-team", "drafting loop")
print()
print(await asyncio.wait_for(running, 30))
print(f"drafts: {len(drafts)} in all; ag-team's Guard is at L{team_guard.level}")""",
        ),
        ("md", "## Time-to-halt"),
        (
            "code",
            """\
halt = await asyncio.to_thread(time_to_halt, execution, 1)
print("confirmed:", halt["confirmed"], "of", halt["in_scope"], "| per agent (ms):", halt["per_agent"])
print("not confirmed:", halt["not_confirmed"])
m99_cli("executions", execution)""",
        ),
        ("md", AUDIT_MD),
        ("code", "audit_since(audit_start)"),
        ("code", VERIFY),
        ("md", CASEPACK_MD),
        ("code", CASEPACK),
        ("md", "## Clean up"),
        ("code", "m99.shutdown()\nops.close()\ncp.stop()"),
    ]


def mixed_fleet() -> list[tuple[str, str]]:
    return [
        (
            "md",
            """\
# One switch, three frameworks

A LangChain agent, a CrewAI crew and an AutoGen team in one process, each its own M99 agent. A kill
scoped to `agent:crew-analyst` stops the crew alone while the others work on; one execution on `global`
then stops the rest. Each agent's time-to-halt comes from its own signed acknowledgement. The agents are
those of the three framework notebooks (scripted, offline models).""",
        ),
        ("code", SETUP),
        (
            "code",
            """\
import m99

runtime = m99.init("fleet-host", kind="demo", url=cp.url)
guards = {
    "lc-researcher": runtime.agent("lc-researcher", framework="langchain"),
    "crew-analyst": runtime.agent("crew-analyst", framework="crewai", bind="Incident Analyst"),
    "ag-team": runtime.agent("ag-team", framework="autogen", bind=["writer", "reviewer"]),
}""",
        ),
        ("md", "## The agents\n\nOrdinary framework code: nothing in it knows about M99. First LangChain:"),
        ("code", LC_IMPORTS + "\n\n\n" + LC_AGENT),
        ("md", "CrewAI:"),
        # (itertools, json: imported by the cells above already)
        ("code", CREW_IMPORTS.replace("import itertools\n", "") + "\n\n\n" + CREW_AGENTS),
        ("md", "AutoGen:"),
        ("code", AUTOGEN_AGENTS.replace("import json\n", "") + '\n\n\nprint("adapters installed:", runtime.installed)'),
        (
            "md",
            """\
## Run all three

On the notebook's event loop: LangChain's sync `invoke` on a worker thread, CrewAI's `kickoff_async`,
AutoGen's `team.run`; each inside the `try/except` that catches M99's stop.""",
        ),
        (
            "code",
            """\
import asyncio

from m99 import M99KillSwitchTriggered


async def stopped(label: str, run) -> str:
    try:
        result = await run
        return f"{label}: ended: {getattr(result, 'stop_reason', result)!s:.160}"
    except M99KillSwitchTriggered as stop:
        return f"{label}: {type(stop).__name__}: {stop}"


task = {"messages": [{"role": "user", "content": "Survey AI kill switches."}]}
runs = {
    "lc-researcher": asyncio.ensure_future(
        stopped("lc-researcher", asyncio.to_thread(agent.invoke, task, {"recursion_limit": 10_000}))
    ),
    "crew-analyst": asyncio.ensure_future(stopped("crew-analyst", crew.kickoff_async())),
    "ag-team": asyncio.ensure_future(
        stopped("ag-team", build_team(guards["ag-team"]).run(task="Write the incident report."))
    ),
}
tool_calls = {"lc-researcher": searches, "crew-analyst": lookups, "ag-team": drafts}
while not all(len(calls) >= 3 for calls in tool_calls.values()):
    await asyncio.sleep(0.01)
print("all three working:", ", ".join(f"{name} {len(calls)} tool calls" for name, calls in tool_calls.items()))""",
        ),
        ("md", OPERATOR_MD),
        ("code", OPERATOR),
        (
            "md",
            "## A scoped kill\n\n`agent:crew-analyst` reaches the crew alone; the other two keep working.",
        ),
        (
            "code",
            """\
scoped = await asyncio.to_thread(kill, "agent:crew-analyst", "analyst exceeded its brief")
print(await asyncio.wait_for(runs["crew-analyst"], 30))
before = {name: len(tool_calls[name]) for name in ("lc-researcher", "ag-team")}
await asyncio.sleep(0.5)
print("still working:", {name: len(tool_calls[name]) - n for name, n in before.items()}, "tool calls in 0.5 s")""",
        ),
        (
            "md",
            "## One execution for all\n\n`global` reaches every running agent — `fleet-host`, the process's own "
            "M99 agent, too.",
        ),
        (
            "code",
            """\
fleet = await asyncio.to_thread(kill, "global", "stop everything")
for name in ("lc-researcher", "ag-team"):
    print(await asyncio.wait_for(runs[name], 30))""",
        ),
        ("md", "## Time-to-halt, per agent"),
        (
            "code",
            """\
for execution, agents in ((scoped, 1), (fleet, 4)):
    halt = await asyncio.to_thread(time_to_halt, execution, agents)
    print(f"{execution}: confirmed {halt['confirmed']} of {halt['in_scope']}, per agent (ms): {halt['per_agent']}")
m99_cli("executions", fleet)""",
        ),
        ("md", AUDIT_MD),
        ("code", "audit_since(audit_start)"),
        ("code", VERIFY),
        ("md", CASEPACK_MD),
        ("code", CASEPACK),
        (
            "md",
            "## Restore\n\nL1–L3 are reversible: an audited restore lifts every directive on the scope.",
        ),
        (
            "code",
            """\
print(ops.post("/api/restore", json={"scope": "global", "by": "ops@example.com", "reason": "Investigated"}).json())
m99.shutdown()
ops.close()
cp.stop()""",
        ),
    ]


NOTEBOOKS = {"langchain": langchain, "crewai": crewai, "autogen": autogen, "mixed_fleet": mixed_fleet}


def build(name: str) -> nbformat.NotebookNode:
    cells = [
        nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text)
        for kind, text in NOTEBOOKS[name]()
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = TIMEOUT) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


def main(names: list[str]) -> None:
    for name in names or list(NOTEBOOKS):
        nb = execute(build(name))
        for cell in nb.cells:
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"wrote {name}.ipynb")


if __name__ == "__main__":
    main(sys.argv[1:])
