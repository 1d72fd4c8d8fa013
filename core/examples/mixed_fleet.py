"""One switch, three frameworks: a LangChain agent, a CrewAI crew and an AutoGen team in one process.

    python -m m99.examples.mixed_fleet            # embedded control plane; the demo plays the operator
    python -m m99.examples.mixed_fleet --url http://localhost:8099 --wait   # you play the operator

All offline (scripted models, telemetry off).  What it shows, with the real `m99` CLI:
  1. ``m99.init`` installs the three adapters; each framework agent gets its own M99 identity.
  2. A kill scoped to ``agent:crew-analyst`` stops the crew alone; the other two keep working.
  3. One ``m99 execute`` on ``global`` stops the rest; no tool body starts after its agent froze.
  4. Time-to-halt per agent (from the agents' acknowledgements), the audit chain verified, restore.
Exit status 0 only if all of that held.
"""

from __future__ import annotations

import asyncio
import time

import m99

from ._support import AgentRun, Operator, Work, arguments, control_plane, frozen_at, halted_by_m99, say, wait_until
from .autogen_team import build_team, run_team
from .crewai_crew import build_crew
from .langchain_agent import build_agent, run_agent


def main() -> int:
    args = arguments((__doc__ or "").splitlines()[0])
    # An agent program imports its frameworks, then calls m99.init (which installs their adapters).
    import autogen_agentchat.agents  # noqa: F401
    import crewai  # noqa: F401
    import langchain.agents  # noqa: F401

    problems: list[str] = []
    with control_plane(args.url) as (url, token):
        runtime = m99.init("fleet-host", kind="demo", url=url)
        say("m99", f"m99.init: adapters installed: {', '.join(runtime.installed)}")
        guards = {
            "lc-researcher": runtime.agent("lc-researcher", framework="langchain"),
            "crew-analyst": runtime.agent("crew-analyst", framework="crewai", bind="Incident Analyst"),
            "ag-team": runtime.agent("ag-team", framework="autogen", bind=["writer", "reviewer"]),
        }
        froze = {name: frozen_at(guard) for name, guard in guards.items()}
        work = Work()
        runs = {
            "lc-researcher": AgentRun("lc-researcher", lambda: run_agent(build_agent("lc-researcher", work))),
            "crew-analyst": AgentRun(
                "crew-analyst", lambda: build_crew("Incident Analyst", work, "crew-analyst").kickoff()
            ),
            "ag-team": AgentRun(
                "ag-team", lambda: asyncio.run(run_team(build_team(guards["ag-team"], work, "ag-team")))
            ),
        }
        for run in runs.values():
            run.start()
        wait_until(lambda: all(work.count(name) >= 3 for name in runs), 120, "three tool calls by every agent")
        say("m99", "all three working: " + ", ".join(f"{n} {work.count(n)} tool calls" for n in runs))
        operator = Operator(url, token)

        if args.wait:
            say("m99", "waiting for an operator: try `m99 arm --scope agent:crew-analyst …`, then `--scope global`")
            for run in runs.values():
                run.join()
        else:
            # 2. A scoped kill stops its target only.
            operator.kill("agent:crew-analyst", level=3, reason="analyst exceeded its brief")
            runs["crew-analyst"].join(30)
            before = {n: work.count(n) for n in ("lc-researcher", "ag-team")}
            time.sleep(1.0)
            after = {n: work.count(n) for n in before}
            say("m99", "one second later: " + ", ".join(f"{n} {before[n]} -> {after[n]} tool calls" for n in before))
            if runs["crew-analyst"].is_alive() or not halted_by_m99(runs["crew-analyst"]):
                problems.append("the scoped kill did not stop the crew")
            for name in before:
                if runs[name].ended_at is not None or after[name] <= before[name]:
                    problems.append(f"the scoped kill also stopped {name}")

            # 3. One execute stops everything left.
            execution, sent = operator.kill("global", level=3, reason="stop the fleet")
            for run in runs.values():
                run.join(30)
            # 4. Evidence.
            halt = operator.wait_for_acks(execution["execution_id"], 3)
            for name, ms in sorted(halt["per_agent"].items()):
                say("m99", f"time to halt {name:<14} {ms:7.1f} ms (push -> Guard applied -> acknowledged)")
            for name, run in runs.items():
                late = work.after(name, froze[name]() or sent)
                if late:
                    problems.append(f"{name} started {late} tool calls after it froze")
                if run.is_alive() or not halted_by_m99(run):
                    problems.append(f"{name} was not halted by M99: {run.outcome}")
            if not any("after it froze" in p for p in problems):
                say("m99", "tool calls started after each agent froze: 0")
            verified = operator.m99("audit", "verify")
            say("m99", f"audit chain: {verified['entries']} entries, valid={verified['valid']}")
            if not verified["valid"]:
                problems.append("the audit chain did not verify")
            operator.m99(
                "restore", "--scope", "global", "--by", "operator@example.com", "--reason", "demo over", as_json=False
            )
            wait_until(lambda: all(g.level == 0 for g in guards.values()), 10, "restore of every agent")
            say("m99", "restored: every agent back at L0, tools allowed again")
        m99.shutdown()

    for name, run in runs.items():
        say(name, run.outcome)
    if problems:
        for problem in problems:
            say("m99", f"PROBLEM: {problem}")
        return 1
    say("m99", "OK: the scoped kill stopped one framework, one execute stopped all three")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
