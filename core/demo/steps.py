"""The demo as an ordered list of steps, each a check that must hold: a step that does not raises
``StepFailed`` with what did not happen, and the demo stops there and says so.

To add a step (a case pack written and verified, a policy-governed agent stopped by its own budget),
write a function ``(Demo) -> str`` that returns what it showed, and put a ``Step`` for it in ``STEPS``
where it belongs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agents import AgentProcess
from .view import View

__all__ = ["STEPS", "Demo", "Step", "StepFailed", "wait_for"]

OPERATOR = "operator@example.com"
ACK_TIMEOUT = 15.0  # seconds each agent in scope has to confirm its halt
START_TIMEOUT = 90.0  # seconds the agents have to import their framework, register and make 3 tool calls
RESUME_TIMEOUT = 30.0
EVIDENCE_TIMEOUT = 5.0  # seconds the agents' evidence uploads have to arrive before the case pack is made
HALT_TIMEOUT = 15.0  # seconds a halted agent's framework has to end its run


class StepFailed(Exception):
    """A step's check did not hold; the message says what did not happen."""


def wait_for(what: str, condition: Callable[[], bool], timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise StepFailed(f"{what} did not happen within {timeout:g} s")
        time.sleep(every)


@dataclass
class Demo:
    """What the steps share: the control plane's operator client, the agents, the view and the record."""

    operator: Any  # m99.OperatorClient
    agents: list[AgentProcess]
    view: View
    halts: dict[str, dict[str, float]] = field(default_factory=dict)  # step -> agent -> confirmed ms
    url: str = ""  # the control plane the agents use
    env: dict[str, str] = field(default_factory=dict)  # the agents' environment (with the operator's token)
    log: Any = None  # the demo's log file (binary), where agents' output goes
    server_key: str = ""  # the control plane's public key, to verify its case packs against
    executions: dict[str, str] = field(default_factory=dict)  # step -> its execution id

    def agent(self, name: str) -> AgentProcess:
        return next(a for a in self.agents if a.name == name)

    def failed_agents(self) -> list[str]:
        return [f"{a.name}: {s.failure}" for a in self.agents if (s := a.snapshot()).failure]

    def kill(self, step: str, scope: str, reason: str, level: int = 3) -> dict[str, Any]:
        """Arm and execute a kill on ``scope``, then wait for every agent in scope to confirm its halt in the
        execution record; what it recorded."""
        auth = self.operator.arm(OPERATOR, reason, level=level, scope=scope, window=60)
        self.view.note(f"$ m99 arm --by {OPERATOR} --reason {reason!r} --scope {scope} --level {level}")
        # The confirmation the level needs (L6: the typed phrase `arm` gives), as an operator would type it.
        confirm = auth.get("confirmation_phrase") if auth.get("requires_confirmation") else None
        done = self.operator.execute(auth["id"], confirm=confirm)
        self.view.note(
            f"$ m99 execute --auth {auth['id']} --force --wait   -> {done['execution_id']}: "
            f"{', '.join(done['levels_fired'])} on {scope}, {len(done['agents'])} in scope"
        )
        execution_id = done["execution_id"]
        self.executions[step] = execution_id
        record: dict[str, Any] = {}

        def confirmed() -> bool:
            nonlocal record
            record = self.operator.execution(execution_id)
            return not record["time_to_halt"]["not_confirmed"]

        try:
            wait_for("every agent's confirmed halt", confirmed, ACK_TIMEOUT, every=0.1)
        except StepFailed:
            missing = ", ".join(record.get("time_to_halt", {}).get("not_confirmed", []))
            raise StepFailed(f"{execution_id}: NOT confirmed halted within {ACK_TIMEOUT:g} s: {missing}") from None
        halt = record["time_to_halt"]
        self.halts[step] = dict(halt["per_agent"])
        for name, ms in sorted(halt["per_agent"].items(), key=lambda item: item[1]):
            self.view.note(f"  halt confirmed  {name:<14} {ms:8.1f} ms  (execution record {execution_id})")
        return record


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Demo], str]


def _halted_runs(demo: Demo) -> dict[str, int]:
    """Per agent, the runs M99 ended so far; ``-1`` for one frozen already (its run ended before)."""
    return {a.name: -1 if (s := a.snapshot()).frozen else s.runs_halted for a in demo.agents}


def _check_halted(demo: Demo, before: dict[str, int]) -> str:
    """Each agent's running run ended by M99 (one frozen already stays so), and no tool body started
    after it froze."""
    notes = []
    for name, runs in before.items():
        agent = demo.agent(name)

        def ended(a: AgentProcess = agent, runs: int = runs) -> bool:
            s = a.snapshot()
            return s.frozen and (runs < 0 or s.runs_halted > runs)

        wait_for(f"{name}'s run ending with the kill switch", ended, HALT_TIMEOUT)
        s = agent.snapshot()
        if not s.frozen_times:
            raise StepFailed(f"{name} never reported a freeze")
        late, in_flight = agent.late_tool_calls(s.frozen_times[-1])
        if late:
            raise StepFailed(f"{name} started {late} tool calls after it froze")
        if in_flight:
            notes.append(f"{name}: 1 admitted just before the freeze, in flight")
    return "; ".join(notes)


def agents_working(demo: Demo) -> str:
    def working() -> bool:
        if failed := demo.failed_agents():
            raise StepFailed("; ".join(failed))
        return all(a.snapshot().tool_calls >= 3 for a in demo.agents)

    wait_for("three tool calls by every agent", working, START_TIMEOUT, every=0.1)
    return ", ".join(f"{a.name} ({a.spec.framework}) pid {a.snapshot().pid}" for a in demo.agents)


def scoped_kill(demo: Demo) -> str:
    target, others = demo.agents[0], demo.agents[1:]
    scope = f"framework:{target.spec.framework}"
    before = _halted_runs(demo)
    record = demo.kill("scoped kill", scope, "runaway research loop")
    if record["agents"] != [target.name]:
        raise StepFailed(f"{scope} reached {record['agents']}, not only {target.name}")
    flight = _check_halted(demo, {target.name: before[target.name]})
    # The others keep working: new tool calls in the next second and a half, none of them frozen.
    since = time.time()
    time.sleep(1.5)
    for agent in others:
        s = agent.snapshot()
        if s.frozen or agent.tool_calls_since(since) == 0:
            raise StepFailed(f"the kill of {scope} also stopped {agent.name}")
    ms = record["time_to_halt"]["per_agent"][target.name]
    kept = ", ".join(f"{a.name} +{a.tool_calls_since(since)}" for a in others)
    return f"{target.name} halted, confirmed in {ms:.1f} ms; the others kept working ({kept} tool calls in 1.5 s)" + (
        f"; {flight}" if flight else ""
    )


def fleet_kill(demo: Demo) -> str:
    before = _halted_runs(demo)
    record = demo.kill("fleet kill", "global", "stop the fleet")
    names = [a.name for a in demo.agents]
    if sorted(record["agents"]) != sorted(names):
        raise StepFailed(f"global reached {record['agents']}, not {names}")
    flight = _check_halted(demo, before)
    halt = record["time_to_halt"]
    return f"{halt['confirmed']} of {halt['in_scope']} confirmed halted, slowest {halt['max_ms']:.1f} ms; " + (
        f"no tool call after a freeze ({flight})" if flight else "no tool call after a freeze"
    )


def restore(demo: Demo) -> str:
    data = demo.operator.restore("global", by=OPERATOR, reason="demo: investigated, resume")
    demo.view.note(f"$ m99 restore --scope global --by {OPERATOR} --reason ...   -> {len(data['lifted'])} lifted")
    since = time.time()

    def resumed() -> bool:
        return all(not a.snapshot().frozen and a.tool_calls_since(since) > 0 for a in demo.agents)

    wait_for("every agent resuming its tool calls", resumed, RESUME_TIMEOUT, every=0.1)
    return "every agent back at L0 and calling tools again: " + ", ".join(
        f"{a.name} +{a.tool_calls_since(since)}" for a in demo.agents
    )


def audit_verified(demo: Demo) -> str:
    result = demo.operator.audit_verify()
    demo.view.note(f"$ m99 audit verify   -> valid={result['valid']}, {result['entries']} entries")
    if not result["valid"]:
        raise StepFailed(f"the audit chain did not verify: {result}")
    return f"{result['entries']} entries, hash chain and signed checkpoints valid"


def case_pack(demo: Demo) -> str:
    """The fleet kill's case pack, as ``m99 casepack get`` writes it, verified offline against the server's
    key as ``m99 casepack verify`` does: every signature, hash and audit link, every agent confirmed."""
    from ..evidence.casepack import CasePackInvalid, verify

    execution_id = demo.executions.get("fleet kill")
    if execution_id is None:
        raise StepFailed("no fleet kill to pack")
    # Each agent the kill froze signs its evidence (its side-effect ledger) after its acknowledgement: wait
    # for them.  One held already (by the scoped kill) snapshotted then, in that execution's evidence.
    held_before = set(demo.halts.get("scoped kill", {}))
    frozen = len(demo.agents) - len(held_before)

    def snapshots() -> bool:
        kept: list[dict[str, Any]] = demo.operator.evidence(execution_id)
        return sum(1 for e in kept if e.get("kind") == "agent") >= frozen

    try:
        wait_for("every agent's evidence", snapshots, EVIDENCE_TIMEOUT, every=0.1)
    except StepFailed:
        pass  # packed without it; the report below says how many arrived
    data = demo.operator.casepack(execution_id)
    path = Path(tempfile.mkdtemp(prefix="m99-demo-")) / f"{execution_id}.zip"  # a directory of its own
    path.write_bytes(data)
    demo.view.note(f"$ m99 casepack get {execution_id} -o {path}   -> {len(data):,} bytes")
    try:
        report = verify(path.read_bytes(), public_key=demo.server_key or None)
    except CasePackInvalid as exc:
        raise StepFailed(f"{path} does not verify: {exc}") from None
    slowest = report.slowest_ms
    demo.view.note(
        f"$ m99 casepack verify {path}   -> valid: {len(report.confirmed)} of {report.in_scope} confirmed, "
        f"slowest {slowest:.1f} ms, {report.audit_entries} audit entries"
    )
    if report.not_confirmed:
        raise StepFailed(f"the case pack shows agents NOT confirmed: {', '.join(report.not_confirmed)}")
    if len(report.evidence) < frozen:
        raise StepFailed(f"the case pack holds {len(report.evidence)} agents' evidence of {frozen}")
    return (
        f"{path}: signatures, hashes and audit slice valid offline; {len(report.confirmed)} of "
        f"{report.in_scope} confirmed; evidence of the {len(report.evidence)} agents it froze"
        + (f" ({', '.join(sorted(held_before))} held already)" if held_before else "")
    )


POLICY_AGENT = "policy-researcher"
POLICY_TIMEOUT = 120.0  # seconds the policy example has to import LangChain, overspend and be stopped


def policy_budget(demo: Demo) -> str:
    """A KILLSWITCH.md-governed agent (``m99.examples.policy_agent``) overspends on purpose: its own
    policy refuses the model call that would pass ``cost_limit_usd`` before it is sent, stops it at L3,
    and the control plane records the stop as an execution of origin ``policy`` that the agent confirms."""
    demo.view.note(f"$ python -m m99.examples.policy_agent --url {demo.url}   (its KILLSWITCH.md: cost_limit_usd 0.25)")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "m99.examples.policy_agent", "--url", demo.url],
            env=demo.env,
            stdin=subprocess.DEVNULL,
            stdout=demo.log,
            stderr=subprocess.STDOUT,
            timeout=POLICY_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise StepFailed(f"the policy-governed agent was not stopped within {POLICY_TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise StepFailed(f"the policy-governed agent exited {done.returncode} (its output is in the log)")
    stops = [
        e
        for e in demo.operator.executions()
        if e.get("origin") == "policy" and e.get("level") == 3 and e.get("scope") == f"agent:{POLICY_AGENT}"
    ]
    if not stops:
        raise StepFailed("the control plane recorded no policy stop of the governed agent")
    record = demo.operator.execution(stops[0]["id"])
    halt = record["time_to_halt"]
    if halt["not_confirmed"] or not halt["confirmed"]:
        raise StepFailed(f"{record['id']}: the policy stop is NOT confirmed by {POLICY_AGENT}")
    demo.halts["policy stop"] = dict(halt["per_agent"])
    demo.view.note(f"  policy stop confirmed  {POLICY_AGENT}  {record['reason']}  (execution record {record['id']})")
    return f"{POLICY_AGENT} stopped by its own budget before overspending; {record['id']} (origin policy) confirmed"


STEPS: list[Step] = [
    Step("agents working", agents_working),
    Step("scoped kill (framework:langchain)", scoped_kill),
    Step("fleet kill (global)", fleet_kill),
    Step("case pack written and verified", case_pack),
    Step("restore, agents resume", restore),
    Step("policy: stopped by its own budget", policy_budget),
    Step("audit chain verified", audit_verified),
]
