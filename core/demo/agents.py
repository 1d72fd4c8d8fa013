"""The demo's agents: one framework agent per process (``m99.examples.fleet_agent``), watched through
the JSON lines it writes on a pipe of its own; its stdout and stderr (the frameworks' noise) go to the
demo's log file.  Framework-free: the frameworks are imported in the children only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["DEMO_AGENTS", "IN_FLIGHT_SECONDS", "AgentProcess", "AgentSpec"]

# A tool call the Guard admitted just before the freeze may reach its body just after it (AutoGen hands
# a sync tool to a thread pool after the check); these agents call one tool at a time.
IN_FLIGHT_SECONDS = 0.5
# What one event line may be, and how many tool-call times are kept: the demo reads its children, but
# bounds what it reads and keeps.
MAX_EVENT_LINE = 8192
MAX_TOOL_TIMES = 10_000


@dataclass(frozen=True)
class AgentSpec:
    name: str
    framework: str
    what: str


DEMO_AGENTS = (
    AgentSpec("lc-researcher", "langchain", "LangChain create_agent, looping on a search tool"),
    AgentSpec("crew-analyst", "crewai", "CrewAI crew, its analyst looping on a lookup tool"),
    AgentSpec("ag-team", "autogen", "AutoGen RoundRobinGroupChat, writer saving drafts"),
)


@dataclass
class AgentState:
    """What the demo knows of one agent, from its own reports."""

    phase: str = "starting"
    pid: int | None = None
    level: int = 0
    frozen: bool = False
    reason: str = ""
    tool_calls: int = 0
    last_tool: str = ""
    last_tool_at: float | None = None
    runs_halted: int = 0
    outcome: str = ""
    failure: str = ""
    tool_times: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_TOOL_TIMES))
    frozen_times: list[float] = field(default_factory=list)
    ended_times: list[float] = field(default_factory=list)
    resumed_times: list[float] = field(default_factory=list)


class AgentProcess:
    """One agent process: started, watched, stopped (its standard input closed, then a kill if need be)."""

    def __init__(self, spec: AgentSpec, url: str, log: IO[bytes], env: Mapping[str, str], pause: float) -> None:
        self.spec = spec
        self.name = spec.name
        self._lock = threading.Lock()
        self.state = AgentState()
        read_fd, write_fd = os.pipe()
        command = [
            sys.executable,
            "-m",
            "m99.examples.fleet_agent",
            spec.framework,
            "--name",
            spec.name,
            "--url",
            url,
            "--events-fd",
            str(write_fd),
            "--pause",
            str(pause),
        ]
        try:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                pass_fds=(write_fd,),
                start_new_session=True,  # a Ctrl-C reaches the demo, which stops its agents in order
            )
        finally:
            os.close(write_fd)
        self._events = os.fdopen(read_fd, "rb")
        self._reader = threading.Thread(target=self._read, name=f"events-{spec.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in iter(lambda: self._events.readline(MAX_EVENT_LINE), b""):
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                try:
                    self._apply(event)
                except (TypeError, ValueError):  # a malformed event is dropped, never the watcher
                    continue
        with self._lock:
            if self.state.phase not in ("stopped", "failed"):
                self.state.phase = "gone"

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        ts = float(event.get("ts") or time.time())
        with self._lock:
            s = self.state
            if kind == "ready":
                s.phase, s.pid = "working", event.get("pid")
            elif kind == "tool":
                s.tool_calls += 1
                s.last_tool, s.last_tool_at = str(event.get("what", ""))[:80], float(event.get("at") or ts)
                s.tool_times.append(s.last_tool_at)
                if s.phase in ("starting", "resuming"):
                    s.phase = "working"
            elif kind == "level":
                was_frozen = s.frozen
                s.level, s.frozen, s.reason = (
                    int(event.get("level") or 0),
                    bool(event.get("frozen")),
                    str(event.get("reason") or "")[:200],
                )
                if s.frozen and not was_frozen:
                    s.frozen_times.append(ts)
                    s.phase = "frozen"
                elif not s.frozen and was_frozen:
                    s.phase = "resuming"
            elif kind == "ended":
                s.outcome = str(event.get("outcome", ""))[:200]
                s.ended_times.append(ts)
                if event.get("halted"):
                    s.runs_halted += 1
                    s.phase = "halted" if s.frozen else "resuming"
                else:
                    s.failure = f"run ended without M99: {s.outcome}"
            elif kind == "resumed":
                s.resumed_times.append(ts)
            elif kind == "failed":
                s.phase, s.failure = "failed", str(event.get("error", ""))[:300]
            elif kind == "exit":
                s.phase = "stopped"

    def snapshot(self) -> AgentState:
        with self._lock:
            s = self.state
            return AgentState(
                **{
                    **s.__dict__,
                    "tool_times": deque(s.tool_times, maxlen=MAX_TOOL_TIMES),
                    "frozen_times": list(s.frozen_times),
                    "ended_times": list(s.ended_times),
                    "resumed_times": list(s.resumed_times),
                }
            )

    def tool_calls_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for ts in self.state.tool_times if ts > moment)

    def late_tool_calls(self, moment: float) -> tuple[int, int]:
        """Tool bodies that started after ``moment`` (when the agent froze): ``(late, in_flight)``, the
        one admitted just before it and still on its way to the body counted apart."""
        with self._lock:
            started = sorted(ts for ts in self.state.tool_times if ts > moment)
        in_flight = 1 if started and started[0] - moment < IN_FLIGHT_SECONDS else 0
        return len(started) - in_flight, in_flight

    def stop(self, timeout: float = 10.0) -> None:
        """Close its standard input (it deregisters and exits), then kill it if it does not in time."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)
        elif self.proc.stdin is not None:
            self.proc.stdin.close()
        self._reader.join(timeout=2)
        self._events.close()
        with self._lock:
            if self.state.phase != "failed":
                self.state.phase = "stopped"
