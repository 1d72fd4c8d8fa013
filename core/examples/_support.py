"""What the examples share: a control plane, an operator at the `m99` command line, and honest output.

None of this is needed in your own agent: there the one line is ``m99.init("name")`` and the operator
is a human typing ``m99 arm`` / ``m99 execute`` against ``m99 serve``.  Framework-free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Offline: no framework may phone home, and no model key is needed (the models are scripted).
OFFLINE_ENV = {"CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true", "CREWAI_TESTING": "true"}


def offline() -> None:
    """Set the variables that keep the frameworks offline and quiet (before any framework is imported)."""
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)


_T0 = time.monotonic()
# A tool call the Guard admitted just before the freeze may reach its body just after it.
IN_FLIGHT_SECONDS = 0.5
_print_lock = threading.Lock()


def say(who: str, text: str) -> None:
    with _print_lock:
        print(f"{time.monotonic() - _T0:7.3f}s  {who:<13} {text}", flush=True)


def arguments(description: str) -> argparse.Namespace:
    offline()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--url",
        help="use this running control plane (`m99 serve`) instead of an embedded one; "
        "the operator's token comes from M99_TOKEN or the data directory, as for the m99 CLI",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="do not press the switch yourself: run until an operator executes a kill from another terminal",
    )
    return parser.parse_args()


@contextmanager
def control_plane(url: str | None) -> Iterator[tuple[str, str | None]]:
    """``(url, operator token)``: the given control plane, or a real one embedded on a thread."""
    if url:
        yield url, os.environ.get("M99_TOKEN")
        return
    from m99 import EmbeddedControlPlane

    with EmbeddedControlPlane() as cp:
        say("control", f"embedded control plane at {cp.url} (dashboard: {cp.url}/, log in with its admin token)")
        yield cp.url, cp.token


class Operator:
    """A human at the command line: runs the real `m99` CLI against the control plane."""

    def __init__(self, url: str, token: str | None) -> None:
        self.env = {**os.environ, "M99_URL": url}
        if token:
            self.env["M99_TOKEN"] = token

    def m99(self, *args: str, as_json: bool = True) -> dict[str, Any]:
        """Run one `m99` command; its JSON answer (``--json``), or ``{"output": text}``."""
        shown = " ".join(a if " " not in a else repr(a) for a in args)
        say("operator", f"$ m99 {shown}")
        out = subprocess.run(
            [sys.executable, "-m", "m99.cli", *args, *(["--json"] if as_json else [])],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise SystemExit(f"m99 {shown} failed: {out.stderr.strip()}")
        if not as_json:
            return {"output": out.stdout.strip()}
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def kill(self, scope: str, level: int = 3, reason: str = "demo") -> tuple[dict[str, Any], float]:
        """`m99 arm` then `m99 execute`: returns the execution and the wall-clock time it was sent."""
        auth = self.m99(
            "arm", "--by", "operator@example.com", "--reason", reason, "--scope", scope, "--level", str(level)
        )
        sent = time.time()
        done = self.m99("execute", "--auth", auth["id"], "--force")
        say("operator", f"executed {done['execution_id']}: {', '.join(done['levels_fired'])} on {scope}")
        return done, sent

    def execution(self, execution_id: str) -> dict[str, Any]:
        from m99 import OperatorClient

        with OperatorClient(self.env["M99_URL"], self.env.get("M99_TOKEN")) as client:
            return client.execution(execution_id)

    def wait_for_acks(self, execution_id: str, count: int, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            halt: dict[str, Any] = self.execution(execution_id)["time_to_halt"]
            if halt["acknowledged"] >= count or time.monotonic() > deadline:
                return halt
            time.sleep(0.05)


class Work:
    """What the agents' tools really did, with timestamps: the proof that nothing ran after the halt."""

    def __init__(self, pause: float = 0.02, on_call: Callable[[str, str, float], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._pause = pause
        self._on_call = on_call
        self.calls: list[tuple[str, str, float]] = []

    def did(self, agent: str, what: str) -> None:
        now = time.time()
        with self._lock:
            self.calls.append((agent, what, now))
        if self._on_call is not None:
            self._on_call(agent, what, now)
        time.sleep(self._pause)  # a tool does some I/O

    def count(self, agent: str) -> int:
        with self._lock:
            return sum(1 for a, _, _ in self.calls if a == agent)

    def after(self, agent: str, moment: float) -> int:
        """Tool bodies that started after ``moment`` (when the agent froze), not counting the one that
        may have been admitted just before it and was still on its way to the body (AutoGen hands a
        sync tool to a thread pool after the check): these agents call one tool at a time."""
        with self._lock:
            started = sorted(ts for a, _, ts in self.calls if a == agent and ts > moment)
        in_flight = 1 if started and started[0] - moment < IN_FLIGHT_SECONDS else 0
        return len(started) - in_flight

    def report(self, agent: str, moment: float) -> str:
        late = self.after(agent, moment)
        with self._lock:
            started = sum(1 for a, _, ts in self.calls if a == agent and ts > moment)
        note = f" ({started - late} admitted just before it, still in flight)" if started > late else ""
        return f"tool calls started after the freeze: {late}{note}"


class AgentRun(threading.Thread):
    """One framework agent's run, on its own thread, until it ends; ``outcome`` says how it ended."""

    def __init__(self, label: str, run: Callable[[], Any]) -> None:
        super().__init__(name=f"agent-{label}", daemon=True)
        self.label = label
        self._run = run
        self.outcome = "still running"
        self.error: BaseException | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        try:
            result = self._run()
            self.outcome = f"finished: {str(result)[:160]}"
        except BaseException as exc:  # shown to the user: how the framework ended the run
            self.error = exc
            self.outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
        finally:
            self.ended_at = time.time()
            say(self.label, f"run ended — {self.outcome}")


def frozen_at(guard: Any) -> Callable[[], float | None]:
    """When ``guard`` first refused tools (wall clock), read after the fact."""
    moment: list[float] = []

    def on_change(g: Any, old: int, new: int) -> None:
        if g.frozen and not moment:
            moment.append(time.time())

    guard.on_change(on_change)
    return lambda: moment[0] if moment else None


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo failed: {what} did not happen within {timeout:g} s")
        time.sleep(0.01)


def halted_by_m99(run: AgentRun) -> bool:
    """The run ended with an M99 error (directly, or wrapped by the framework as AutoGen teams do)."""
    from m99 import M99KillSwitchTriggered

    if isinstance(run.error, M99KillSwitchTriggered):
        return True
    # A framework that ends cleanly says why (AutoGen's M99Termination: "Stopped by the M99 kill switch").
    return "M99" in run.outcome and "kill switch" in run.outcome
