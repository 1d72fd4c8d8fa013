"""A KILLSWITCH.md-governed LangChain agent that overspends on purpose and is stopped by its policy.

    python examples/policy_agent.py            # embedded control plane, fully offline
    python examples/policy_agent.py --url http://localhost:8099   # your `m99 serve`

The scripted model asks for a search on every turn, forever, and each of its calls costs about $0.03
at the example's price table.  Its ``KILLSWITCH.md`` (beside this module) says ``cost_limit_usd: 0.25``: ``m99.init``
loads it from the working directory, and the model call that would pass the limit is refused *before*
it is sent (its worst case, ``max_tokens`` at the model's price, is reserved first).  No operator
presses anything: the policy stops the agent, writes its JSONL audit log, and the control plane
records the stop as an execution of origin ``policy``, confirmed by the agent.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool

import m99

from ._support import control_plane

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")  # offline, like every example
HERE = Path(__file__).resolve().parent
_T0 = time.monotonic()


def say(who: str, text: str) -> None:
    print(f"{time.monotonic() - _T0:7.3f}s  {who:<13} {text}", flush=True)


def m99_cli(url: str, token: str | None, *args: str) -> Any:
    """The operator's `m99 ... --json`, as a human would run it."""
    say("operator", "$ m99 " + " ".join(args))
    env = {**os.environ, "M99_URL": url, **({"M99_TOKEN": token} if token else {})}
    out = subprocess.run(
        [sys.executable, "-m", "m99.cli", *args, "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise SystemExit(f"m99 {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


# US dollars per million tokens; the adapter reports only a call's total tokens, priced as output.
PRICES = {"scripted-researcher": {"input": 5.0, "output": 15.0}}
TOKENS_PER_CALL = 2000  # $0.03 a call


class ScriptedResearcher(BaseChatModel):
    """An offline chat model that calls ``search`` on every turn and reports its token usage."""

    turn: Any = None
    sent: int = 0

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
        self.sent = n
        call = {"name": "search", "args": {"query": f"agent safety papers, page {n}"}, "id": f"call-{n}"}
        message = AIMessage(content="", tool_calls=[call])
        message.usage_metadata = {"input_tokens": TOKENS_PER_CALL, "output_tokens": 0, "total_tokens": TOKENS_PER_CALL}
        return ChatResult(generations=[ChatGeneration(message=message)])


@tool
def search(query: str) -> str:
    """Search the literature."""
    return f"3 results for {query!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", help="use this running control plane (`m99 serve`) instead of an embedded one")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="m99-policy-example-"))
    shutil.copy(HERE / "KILLSWITCH.md", work / "KILLSWITCH.md")
    os.chdir(work)  # the agent's working directory, with its KILLSWITCH.md
    say("agent", f"working directory {work} holds KILLSWITCH.md (cost_limit_usd: 0.25)")
    ok = True
    with control_plane(args.url) as (url, token):
        runtime = m99.init("policy-researcher", url=url, prices=PRICES, exclude=["crewai", "autogen"])
        gate = runtime.guard.policy
        say("agent", f"m99.init loaded {gate.policy.source} (sha256 {gate.digest[:12]}…)")
        model = ScriptedResearcher()
        try:
            agent: Any = create_agent(model, [search])
            agent.invoke({"messages": [{"role": "user", "content": "survey agent safety"}]})
            say("agent", "the run ended on its own: the policy did not stop it")
            ok = False
        except m99.M99KillSwitchTriggered as exc:
            say("agent", f"run ended — {type(exc).__name__}: {exc}")
        budget = gate.engine.spend.session
        say("agent", f"model calls sent: {model.sent}; spent ${budget.spent:.4f} of ${budget.allowance:.2f}")
        ok &= budget.spent <= budget.allowance
        log = work / ".killswitch.log"
        lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        say("audit", f"{log.name}: {len(lines)} line(s)")
        for line in lines:
            print("          " + json.dumps(line))
        ok &= any(line["action_taken"] == "full_stop" for line in lines)
        execution = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and execution is None:
            listed: Any = m99_cli(url, token, "executions")
            found = [e for e in listed if isinstance(e, dict) and e.get("origin") == "policy"]
            execution = next((e for e in found if e["level"] == 3), None)
            if execution is None:
                time.sleep(0.2)
        if execution is None:
            say("control", "no policy execution recorded")
            ok = False
        else:
            for _ in range(50):
                detail = m99_cli(url, token, "executions", execution["id"])
                if detail["time_to_halt"]["confirmed"]:
                    break
                time.sleep(0.1)
            halt = detail["time_to_halt"]
            say(
                "control",
                f"execution {detail['id']}: origin {detail['origin']}, L{detail['level']} on {detail['scope']} — "
                f"{detail['reason']}; halt confirmed by {halt['confirmed']} of {halt['in_scope']}",
            )
            ok &= halt["confirmed"] == 1
        m99.shutdown()
    print("OK: the policy stopped the agent within its budget" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
