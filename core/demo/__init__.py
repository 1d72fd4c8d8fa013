"""``m99 demo``: three framework agents, each in its own process, under one kill switch.

Embedded (the default): a control plane on a temporary data directory, a LangChain agent, a CrewAI
crew and an AutoGen team doing offline scripted tool calls, then the steps of ``steps.STEPS`` (a scoped
kill, a fleet kill, each agent's confirmed time-to-halt, a restore, the audit chain verified) and a
summary.  With ``url``: the same agents against a running ``m99 serve``, shown live until Ctrl-C or
``duration``, while a person presses the switch from the dashboard or the CLI.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError, M99Error
from .agents import DEMO_AGENTS, AgentProcess
from .steps import STEPS, Demo, StepFailed
from .view import View, make_view

__all__ = ["STEPS", "run_demo", "watch_demo"]

OFFLINE_ENV = {"CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true", "CREWAI_TESTING": "true"}
FRAMEWORK_MODULES = {"langchain": "langchain", "crewai": "crewai", "autogen": "autogen_agentchat"}


def _check_frameworks() -> None:
    missing = [name for name, module in FRAMEWORK_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"the demo runs a LangChain agent, a CrewAI crew and an AutoGen team; not installed: "
            f"{', '.join(missing)} (pip install 'm99[all]')"
        )


def _log_file(path: str | None) -> tuple[Path, IO[bytes]]:
    if path:
        target = Path(path)
        return target, target.open("ab")
    fd, name = tempfile.mkstemp(prefix="m99-demo-", suffix=".log")
    return Path(name), os.fdopen(fd, "ab")


def _agent_env(work_dir: Path, server_key: str | None, embedded: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("M99_TOKEN", "M99_URL")}
    env.update(OFFLINE_ENV, PYTHONUNBUFFERED="1", CREWAI_STORAGE_DIR=str(work_dir / "crewai"))
    if server_key:
        env["M99_SERVER_KEY"] = server_key  # the embedded control plane: trusted by construction
    if embedded:
        # Throw-away identities for a throw-away control plane; against `m99 serve` the agents keep
        # theirs (the default key directory), so running the demo again resumes the same names.
        env["M99_KEY_DIR"] = str(work_dir / "agent-keys")
    return env


@contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """The control plane's own log lines (each execution, say) go to the log file, not over the view."""
    import logging

    logger = logging.getLogger("m99")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    old = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = old
        handler.close()


@contextmanager
def _agents(url: str, log: IO[bytes], env: dict[str, str], pause: float) -> Iterator[list[AgentProcess]]:
    agents: list[AgentProcess] = []
    try:
        for spec in DEMO_AGENTS:
            agents.append(AgentProcess(spec, url, log, env, pause))
        yield agents
    finally:
        for agent in agents:
            agent.stop()


def _summary(view: View, results: list[tuple[str, str, str]], demo: Demo | None, log_path: Path) -> None:
    view.summary("M99 demo: summary", ["STEP", "RESULT", "WHAT HELD"], results)
    if demo is not None and demo.halts:
        steps = list(demo.halts)
        names = [a.name for a in demo.agents]
        names += sorted({n for halts in demo.halts.values() for n in halts} - set(names))  # the policy agent
        rows = [
            [name, *(f"{demo.halts[s][name]:.1f} ms" if name in demo.halts[s] else "-" for s in steps)]
            for name in names
        ]
        view.summary(
            "Confirmed time-to-halt, from the execution records",
            ["AGENT", *steps],
            rows,
        )
    view.line(
        "time-to-halt: from the execute to the moment each agent's Guard enforced the stop, "
        "as its signed acknowledgement says"
    )
    view.line(f"framework output (what the agents' frameworks printed): {log_path}")


def run_demo(*, plain: bool = False, log: str | None = None, pause: float = 0.25) -> int:
    """The embedded demo: 0 if every step held, 1 (naming the failing step) otherwise."""
    _check_frameworks()
    from ..operator import OperatorClient
    from ..server import EmbeddedControlPlane

    log_path, log_file = _log_file(log)
    view = make_view(plain)
    results: list[tuple[str, str, str]] = []
    demo: Demo | None = None
    failed: str | None = None
    interrupted = False
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="m99-demo-") as work, log_file, _logs_to(log_path):
        work_dir = Path(work)
        with EmbeddedControlPlane(data_dir=work_dir / "control-plane") as cp:
            results.append(("control plane", "ok", f"embedded at {cp.url}, data in a temporary directory"))
            view.note(f"control plane at {cp.url} (embedded, temporary data directory)")
            env = _agent_env(work_dir, cp.server_key, embedded=True)
            with OperatorClient(cp.url, cp.token) as operator, _agents(cp.url, log_file, env, pause) as agents:
                demo = Demo(
                    operator,
                    agents,
                    view,
                    url=cp.url,
                    env={**env, "M99_TOKEN": cp.token},
                    log=log_file,
                    server_key=cp.server_key,
                )
                view.start(agents)
                try:
                    for step in STEPS:
                        view.note(f"-- {step.name}")
                        try:
                            detail = step.run(demo)
                        except (StepFailed, M99Error) as exc:
                            failed = step.name
                            results.append((step.name, "FAILED", str(exc)))
                            view.note(f"FAILED: {step.name}: {exc}")
                            break
                        except KeyboardInterrupt:
                            failed, interrupted = step.name, True
                            results.append((step.name, "FAILED", "interrupted (Ctrl-C)"))
                            break
                        results.append((step.name, "ok", detail))
                        view.note(f"ok: {step.name}: {detail}")
                    for step in STEPS[len(results) - 1 :]:
                        results.append((step.name, "not run", f"after the failure of {failed!r}"))
                finally:
                    view.stop()
    _summary(view, results, demo, log_path)
    took = time.monotonic() - started
    if failed:
        view.line(f"m99 demo: {'interrupted' if interrupted else 'FAILED'} at step {failed!r} ({took:.0f} s)")
        return 130 if interrupted else 1
    view.line(f"m99 demo: every step held ({took:.0f} s)")
    return 0


def _instructions(url: str, scope_agent: str) -> list[str]:
    return [
        f"The agents run against {url}. Press the switch from its dashboard ({url}/) or another terminal:",
        f"  export M99_URL={url}",
        f"  m99 arm --by you@example.com --reason 'demo' --scope framework:langchain   # or agent:{scope_agent}",
        "  m99 execute --auth <id_from_arm> --force --wait      # each agent's confirmed halt",
        "  m99 arm --by you@example.com --reason 'demo' --scope global",
        "  m99 execute --auth <id_from_arm> --force --wait",
        "  m99 restore --scope global --by you@example.com --reason 'demo over'   # the agents resume",
        "Ctrl-C here stops the agents.",
    ]


def _watch_executions(operator: Any, view: View, seen: set[str], pending: dict[str, set[str]]) -> None:
    """Note each new execution, then each agent's halt as its record confirms it."""
    for execution in operator.executions():
        if execution["id"] not in seen:
            seen.add(execution["id"])
            pending[execution["id"]] = set()
            view.note(
                f"execution {execution['id']}: L{execution['level']} on {execution['scope']} by "
                f"{execution['by_email']} — {execution['reason']}"
            )
    for execution_id, shown in list(pending.items()):
        halt = operator.execution(execution_id)["time_to_halt"]
        for name, ms in sorted(halt["per_agent"].items(), key=lambda item: item[1]):
            if name not in shown:
                shown.add(name)
                view.note(f"  halt confirmed  {name:<14} {ms:8.1f} ms  ({execution_id})")
        if not halt["not_confirmed"]:
            del pending[execution_id]


def watch_demo(
    url: str,
    token: str | None,
    *,
    data_dir: str | None = None,
    duration: float,
    plain: bool = False,
    log: str | None = None,
    pause: float = 0.25,
) -> int:
    """The agents against a running control plane, shown until Ctrl-C or ``duration`` seconds: 0 if they
    started and no run ended but by the kill switch; 1 otherwise."""
    _check_frameworks()
    from ..operator import OperatorClient

    view = make_view(plain)
    operator: Any = None
    candidate = OperatorClient(url, token, data_dir=data_dir)
    candidate.health()  # an unreachable control plane: one line and exit 4, before any agent starts
    try:
        candidate.status()  # the record of executions needs a token that reads; the agents need none
        operator = candidate
    except M99Error as exc:
        candidate.close()
        view.line(f"(no operator view of executions: {exc.message}; the agents run all the same)")
    log_path, log_file = _log_file(log)
    for text in _instructions(url, DEMO_AGENTS[1].name):
        view.line(text)
    problems: list[str] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="m99-demo-") as work, log_file, _logs_to(log_path):
        env = _agent_env(Path(work), None, embedded=False)
        with _agents(url, log_file, env, pause) as agents:
            view.start(agents)
            seen = {e["id"] for e in operator.executions()} if operator else set()
            pending: dict[str, set[str]] = {}
            deadline = time.monotonic() + duration
            try:
                while time.monotonic() < deadline:
                    if all(a.snapshot().phase == "failed" for a in agents):
                        break  # nothing left to show: each says why in the summary
                    if operator is not None:
                        try:
                            _watch_executions(operator, view, seen, pending)
                        except M99Error as exc:
                            view.note(f"(control plane: {exc})")
                    time.sleep(0.5)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                view.stop()
            for agent in agents:
                s = agent.snapshot()
                if s.failure:
                    problems.append(f"{agent.name}: {s.failure}")
                elif s.tool_calls == 0:
                    problems.append(f"{agent.name}: made no tool call")
    if operator is not None:
        operator.close()
    rows = []
    for agent in agents:
        s = agent.snapshot()
        rows.append([agent.name, agent.spec.framework, str(s.tool_calls), str(s.runs_halted), s.failure or "ok"])
    view.summary("M99 demo: the agents", ["AGENT", "FRAMEWORK", "TOOL CALLS", "RUNS HALTED BY M99", "PROBLEM"], rows)
    view.line(f"framework output (what the agents' frameworks printed): {log_path}")
    if problems:
        view.line("m99 demo: FAILED: " + "; ".join(problems))
        return 1
    view.line("m99 demo: stopped (Ctrl-C)" if interrupted else f"m99 demo: ran {duration:g} s")
    return 0
