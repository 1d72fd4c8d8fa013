"""What the demo shows: a live table of the agents (``rich``) on a terminal, plain lines elsewhere, and
the summary at the end.  Every string from an agent is shown as text, never as markup."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from .agents import AgentProcess, AgentState

__all__ = ["LiveView", "PlainView", "View", "make_view"]

PHASE_STYLE = {
    "working": "green",
    "resuming": "cyan",
    "frozen": "bold red",
    "halted": "bold red",
    "starting": "yellow",
    "failed": "bold magenta",
}


def _clean(text: Any, width: int = 80) -> str:
    out = "".join(c if c.isprintable() else "?" for c in str(text))
    return out if len(out) <= width else out[: width - 1] + "…"


def _age(moment: float | None) -> str:
    if moment is None:
        return "-"
    return f"{max(0.0, time.time() - moment):.1f} s ago"


def _row(agent: AgentProcess, s: AgentState) -> list[str]:
    return [
        agent.name,
        agent.spec.framework,
        str(s.pid or "-"),
        s.phase,
        f"L{s.level}" if s.level else "-",
        str(s.tool_calls),
        _clean(s.last_tool, 44),
        _age(s.last_tool_at),
    ]


HEADERS = ["AGENT", "FRAMEWORK", "PID", "STATE", "LEVEL", "TOOL CALLS", "LAST TOOL CALL", "WHEN"]


class View(Protocol):
    def start(self, agents: Sequence[AgentProcess]) -> None: ...
    def note(self, text: str) -> None: ...
    def stop(self) -> None: ...
    def summary(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None: ...
    def line(self, text: str) -> None: ...


class PlainView:
    """Plain lines for a log or a pipe: each step as it happens, and every few seconds one line per agent
    whose state or tool-call count changed."""

    def __init__(self, every: float = 3.0) -> None:
        self._t0 = time.monotonic()
        self._every = every
        self._agents: Sequence[AgentProcess] = ()
        self._shown: dict[str, tuple[str, int, int]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _print(self, text: str) -> None:
        with self._lock:
            print(f"{time.monotonic() - self._t0:6.1f}s  {text}", flush=True)

    def start(self, agents: Sequence[AgentProcess]) -> None:
        self._agents = agents
        self._thread = threading.Thread(target=self._loop, name="demo-view", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self.agents_line()

    def agents_line(self) -> None:
        for agent in self._agents:
            s = agent.snapshot()
            key = (s.phase, s.level, s.tool_calls)
            if self._shown.get(agent.name) != key:
                self._shown[agent.name] = key
                level = f" L{s.level}" if s.level else ""
                self._print(
                    f"{agent.name:<14} {s.phase}{level}, {s.tool_calls} tool calls"
                    + (f", last: {_clean(s.last_tool, 44)}" if s.last_tool else "")
                )

    def note(self, text: str) -> None:
        self._print(_clean(text, 300))

    def line(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._every + 1)
        self.agents_line()

    def summary(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        cells = [[_clean(c, 200) for c in row] for row in rows]
        sizes = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        self.line("")
        self.line(title)
        self.line("  ".join(h.ljust(n) for h, n in zip(headers, sizes, strict=True)).rstrip())
        for row in cells:
            self.line("  ".join(c.ljust(n) for c, n in zip(row, sizes, strict=True)).rstrip())


class LiveView:
    """A ``rich`` Live table of the agents on a terminal, with the demo's latest steps below it."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self._notes: deque[str] = deque(maxlen=14)
        self._t0 = time.monotonic()
        self._agents: Sequence[AgentProcess] = ()
        self._live: Any = None

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title="M99 demo: agents under the kill switch", title_justify="left", expand=False)
        for header in HEADERS:
            table.add_column(header, no_wrap=True)
        for agent in self._agents:
            s = agent.snapshot()
            row = [Text(c) for c in _row(agent, s)]
            row[3].stylize(PHASE_STYLE.get(s.phase, ""))
            if s.level:
                row[4].stylize("bold red")
            table.add_row(*row)
        notes = Text("\n".join(self._notes))
        return Group(table, notes)

    def start(self, agents: Sequence[AgentProcess]) -> None:
        from rich.live import Live

        self._agents = agents
        self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=8, transient=False)
        self._live.start()

    def note(self, text: str) -> None:
        self._notes.append(f"{time.monotonic() - self._t0:6.1f}s  {_clean(text, 300)}")

    def line(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def summary(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(header)
        for row in rows:
            cells = [Text(_clean(c, 200)) for c in row]
            if row and row[1] == "FAILED":
                cells[1].stylize("bold red")
            elif row and row[1] == "ok":
                cells[1].stylize("green")
            table.add_row(*cells)
        self.console.print(table)


def make_view(plain: bool) -> View:
    """The live view on a terminal, plain lines otherwise (or when asked)."""
    if not plain and sys.stdout.isatty():
        return LiveView()
    return PlainView()
