"""One framework agent in a process of its own, for ``m99 demo``: a LangChain agent, a CrewAI crew or an
AutoGen team doing scripted tool calls continuously under the kill switch.

    python -m m99.examples.fleet_agent langchain --name lc-researcher --url URL --events-fd FD

It reports what it does as JSON lines on the file descriptor ``--events-fd`` (its stdout and stderr are
the frameworks' and go wherever the caller sends them): ``ready``, ``tool`` (each tool body as it
starts), ``level`` (each state change the Guard applied), ``ended`` (a run ended, and whether M99
stopped it), ``resumed`` (a new run after a restore).  After a halt it waits for a restore and runs
again.  It ends when its standard input closes: deregistered, acknowledgements flushed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._support import AgentRun, Work, halted_by_m99, offline

FRAMEWORKS = ("langchain", "crewai", "autogen")


class Events:
    """JSON lines on a file descriptor; a closed one (the demo is gone) ends the process."""

    def __init__(self, fd: int, agent: str) -> None:
        self._fd = fd
        self._agent = agent
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "agent": self._agent, "ts": time.time(), **fields}) + "\n"
        with self._lock:
            try:
                os.write(self._fd, line.encode())
            except OSError:
                os._exit(0)


def _runner(framework: str, name: str, guard: Any, work: Work) -> Callable[[], Any]:
    """A fresh run of the framework agent: its result, or the exception that ended it."""
    if framework == "langchain":
        from .langchain_agent import build_agent, run_agent

        return lambda: run_agent(build_agent(name, work))
    if framework == "crewai":
        from .crewai_crew import ROLE, build_crew

        return lambda: build_crew(ROLE, work, name).kickoff()
    import asyncio

    from .autogen_team import build_team, run_team

    return lambda: asyncio.run(run_team(build_team(guard, work, name)))


def _stop_when_stdin_closes(shutdown: Callable[[], None]) -> None:
    def watch() -> None:
        try:
            while sys.stdin.buffer.read(1024):
                pass
        except (OSError, ValueError):
            pass
        shutdown()

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    offline()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("framework", choices=FRAMEWORKS)
    parser.add_argument("--name", required=True, help="the agent's M99 name")
    parser.add_argument("--url", required=True, help="the control plane")
    parser.add_argument("--events-fd", type=int, required=True, help="where the JSON lines go")
    parser.add_argument("--pause", type=float, default=0.25, help="seconds each tool call takes")
    args = parser.parse_args(argv)

    import m99

    events = Events(args.events_fd, args.name)
    done = threading.Event()

    def shutdown() -> None:
        done.set()
        try:
            m99.shutdown()  # flushes acknowledgements, deregisters
        finally:
            events.emit("exit")
            os._exit(0)  # a framework's run may still be on a thread: do not wait for it

    _stop_when_stdin_closes(shutdown)
    try:
        runtime = m99.init(args.name, kind="demo", url=args.url, framework=args.framework)
    except m99.M99Error as exc:
        events.emit("failed", error=f"{type(exc).__name__}: {exc}")
        return 3
    guard = runtime.guard

    def on_change(g: Any, old: int, new: int) -> None:
        events.emit("level", level=new, frozen=g.frozen, reason=g.reason)

    guard.on_change(on_change)
    work = Work(pause=args.pause, on_call=lambda agent, what, ts: events.emit("tool", what=what, at=ts))
    events.emit("ready", pid=os.getpid(), framework=args.framework)
    run_number = 0
    while not done.is_set():
        run_number += 1
        if run_number > 1:
            events.emit("resumed", run=run_number)
        run = AgentRun(args.name, _runner(args.framework, args.name, guard, work))
        run.start()
        run.join()
        halted = halted_by_m99(run)
        events.emit("ended", run=run_number, halted=halted, outcome=run.outcome)
        # Halted: wait for a restore.  Ended otherwise (it should not): run again after a pause.
        while not done.is_set() and (guard.frozen if halted else False):
            time.sleep(0.05)
        if not halted:
            time.sleep(1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
