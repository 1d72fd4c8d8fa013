"""`m99 run`: a real `m99 serve`, a real `m99 run` subprocess and a command with no M99 code in it,
stopped from outside at L5/L6 even when it ignores SIGTERM, and never restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from m99.cli import main

from .servers import ServeProcess

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")

GRACE = 0.5
PATIENCE = 20.0  # seconds; generous for a loaded machine

# The supervised commands: plain Python, no m99 import.  Each writes what it saw to `child.json`
# (atomically) once it is running, then works forever.
REPORT = (
    "import json, os, pathlib, time\n"
    "tmp = pathlib.Path('child.json.tmp')\n"
    "tmp.write_text(json.dumps({'pid': os.getpid(), 'pgid': os.getpgid(0),\n"
    "    'as': os.environ.get('M99_SUPERVISED_AS'), 'url': os.environ.get('M99_URL'),\n"
    "    'token': os.environ.get('M99_TOKEN')}))\n"
    "tmp.rename('child.json')\n"
)
COOPERATIVE = REPORT + "while True:\n    time.sleep(0.05)\n"
STUBBORN = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + COOPERATIVE


def wait_for(cond: Callable[[], bool], timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def proc_state(pid: int) -> str:
    """The one-letter state Linux shows for ``pid`` (R, S, T for stopped, Z…)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


class Supervised:
    """`m99 run … -- python -c CODE` as a subprocess, working in its own directory."""

    def __init__(self, serve: ServeProcess, workdir: Path, name: str, code: str, *options: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # An operator token in the supervisor's environment must not reach the agent.
        env = {**serve.env, "M99_TOKEN": "m99_operator_secret"}
        argv = ["run", "--name", name, "--grace", str(GRACE), *options, "--", sys.executable, "-c", code]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "m99.cli", *argv],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr = ""

    def child(self) -> dict[str, Any]:
        """What the command reported once it started (waits for it)."""
        report = self.workdir / "child.json"
        wait_for(lambda: report.exists() or self.proc.poll() is not None)
        assert report.exists(), f"the command never started: {self.finish()}"
        data: dict[str, Any] = json.loads(report.read_text())
        return data

    def finish(self, timeout: float = PATIENCE) -> int:
        _, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=PATIENCE)


@pytest.fixture
def supervise(serve: ServeProcess, tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    started: list[Supervised] = []

    def start(name: str, code: str, *options: str, server: ServeProcess | None = None) -> Supervised:
        run = Supervised(server or serve, tmp_path / f"{name}-{len(started)}", name, code, *options)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()
        if (run.workdir / "child.json").exists():
            pid = json.loads((run.workdir / "child.json").read_text())["pid"]
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def fire(api: httpx.Client, scope: str, level: int) -> dict[str, Any]:
    auth = api.post("/api/arm", json={"by": "oncall@example.com", "reason": "runaway", "scope": scope, "level": level})
    assert auth.status_code == 200, auth.text
    body: dict[str, Any] = {"authorization_id": auth.json()["id"]}
    if auth.json().get("requires_confirmation"):
        body["confirm"] = auth.json()["confirmation_phrase"]
    done = api.post("/api/execute", json=body)
    assert done.status_code == 200, done.text
    result: dict[str, Any] = done.json()
    return result


def agent(api: httpx.Client, name: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get(f"/api/agents/{name}").json()
    return found


def report_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("m99 run:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_l5_kills_a_command_that_ignores_sigterm(serve: ServeProcess, supervise) -> None:  # type: ignore[no-untyped-def]
    run = supervise("stubborn", STUBBORN)
    child = run.child()
    # Its own process group (killed as a whole), told who it is, and no operator token.
    assert child["pgid"] == child["pid"] != run.proc.pid
    assert child["as"] == "stubborn" and child["url"] == serve.url and child["token"] is None
    with serve.api() as api:
        described = agent(api, "stubborn")
        assert described["status"] == "active" and described["framework"] == "process"
        assert described["kind"] == "process" and described["pid"] == run.proc.pid
        fired = time.monotonic()
        fire(api, "agent:stubborn", 5)
        code = run.finish()
        took = time.monotonic() - fired
        assert agent(api, "stubborn")["status"] == "tombstoned"
    assert code == 128 + signal.SIGKILL
    assert took >= GRACE * 0.9  # SIGTERM was ignored: SIGKILL came after the grace period
    assert not alive(child["pid"])
    line = report_line(run.stderr)
    assert 'stopped by oncall@example.com: "runaway" (L5, execution exe_' in line
    assert "killed by SIGKILL" in line and "not restarted" in line


def test_l5_sigterm_ends_a_cooperative_command_and_the_name_cannot_return(  # type: ignore[no-untyped-def]
    serve: ServeProcess, supervise, tmp_path: Path
) -> None:
    run = supervise("worker", COOPERATIVE)
    child = run.child()
    with serve.api() as api:
        fire(api, "agent:worker", 5)
        assert run.finish() == 128 + signal.SIGTERM
    assert not alive(child["pid"])
    line = report_line(run.stderr)
    assert "killed by SIGTERM" in line and "grace" not in line

    # Anti-resurrection: the tombstoned name is refused and the command never starts.
    again = supervise("worker", "import pathlib; pathlib.Path('started').touch()")
    assert again.finish() == 8
    assert "tombstoned" in again.stderr and again.stderr.startswith("m99: error:")
    assert not (again.workdir / "started").exists()
    assert len(again.stderr.strip().splitlines()) == 1


def test_a_command_that_exits_by_itself_is_deregistered_and_keeps_its_code(  # type: ignore[no-untyped-def]
    serve: ServeProcess, supervise
) -> None:
    run = supervise("oneshot", REPORT + "time.sleep(0.5)\nraise SystemExit(3)\n")
    run.child()
    assert run.finish() == 3
    assert report_line(run.stderr).endswith("exited by itself: exit 3")
    with serve.api() as api:
        assert agent(api, "oneshot")["status"] == "stopped"
    # Not tombstoned, so the same name may run again.
    assert supervise("oneshot", "raise SystemExit(0)").finish() == 0


def test_l6_fleet_kill_terminates_every_supervised_command(serve: ServeProcess, supervise) -> None:  # type: ignore[no-untyped-def]
    runs = [supervise("fleet-a", STUBBORN), supervise("fleet-b", COOPERATIVE, "--kind", "researcher")]
    children = [run.child() for run in runs]
    with serve.api() as api:
        result = fire(api, "global", 6)
        assert result["levels_fired"][-1] == "L6" and result["agents_terminated"] == 2
        codes = [run.finish() for run in runs]
    assert codes == [128 + signal.SIGKILL, 128 + signal.SIGTERM]
    assert not any(alive(child["pid"]) for child in children)
    assert all("(L6, execution " in report_line(run.stderr) for run in runs)
    # While the fleet kill holds, a new name registers but is held at L6: its command never starts.
    late = supervise("fleet-late", "import pathlib; pathlib.Path('started').touch()")
    assert late.finish() == 10 and "held at L6" in late.stderr and "not started" in late.stderr
    assert not (late.workdir / "started").exists()


def test_a_missing_command_is_a_clear_127_and_registers_nothing(serve: ServeProcess, supervise) -> None:  # type: ignore[no-untyped-def]
    out = serve.cli("run", "--name", "ghost", "--", "m99-no-such-command-here")
    assert out.returncode == 127
    assert out.stderr.strip() == "m99: error: cannot run 'm99-no-such-command-here': command not found"
    missing = serve.cli("run", "--", "./not-here.sh")
    assert missing.returncode == 127 and "no such file" in missing.stderr
    with serve.api() as api:
        assert api.get("/api/agents").json() == []


def test_signals_sent_to_the_supervisor_reach_the_command(serve: ServeProcess, supervise) -> None:  # type: ignore[no-untyped-def]
    run = supervise("interactive", COOPERATIVE)
    child = run.child()
    run.proc.send_signal(signal.SIGINT)  # Ctrl-C: the command is in another process group
    assert run.finish() == 128 + signal.SIGINT
    assert not alive(child["pid"])
    assert "stopped by SIGINT sent to the supervisor" in report_line(run.stderr)
    with serve.api() as api:
        assert agent(api, "interactive")["status"] == "stopped"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_pause_on_freeze_stops_at_l3_continues_on_restore_and_l5_still_kills(  # type: ignore[no-untyped-def]
    serve: ServeProcess, supervise
) -> None:
    run = supervise("pausable", COOPERATIVE, "--pause-on-freeze")
    pid = run.child()["pid"]
    assert proc_state(pid) != "T"
    with serve.api() as api:
        fire(api, "agent:pausable", 3)
        wait_for(lambda: proc_state(pid) == "T")
        restored = api.post("/api/restore", json={"scope": "agent:pausable", "by": "o@example.com", "reason": "ok"})
        assert restored.status_code == 200, restored.text
        wait_for(lambda: proc_state(pid) != "T")
        fire(api, "agent:pausable", 3)
        wait_for(lambda: proc_state(pid) == "T")
        # Stopped at L3, then L5: continued so SIGTERM is acted on, not left pending.
        fire(api, "agent:pausable", 5)
        assert run.finish() == 128 + signal.SIGTERM
    assert not alive(pid)


def test_without_pause_on_freeze_l3_leaves_the_command_running(serve: ServeProcess, supervise) -> None:  # type: ignore[no-untyped-def]
    run = supervise("frozen", COOPERATIVE)
    pid = run.child()["pid"]
    with serve.api() as api:
        fire(api, "agent:frozen", 3)
        wait_for(lambda: agent(api, "frozen")["level"] == 3)
        time.sleep(0.5)
        assert run.proc.poll() is None and alive(pid)
        if Path("/proc/self/stat").exists():
            assert proc_state(pid) != "T"
        fire(api, "agent:frozen", 5)
        assert run.finish() == 128 + signal.SIGTERM


@pytest.mark.slow
def test_a_lost_lease_does_not_kill_the_command(tmp_path: Path, supervise) -> None:  # type: ignore[no-untyped-def]
    server = ServeProcess(tmp_path / "lease-data", "--heartbeat-interval", "0.3", "--missed", "3").start()
    try:
        run = supervise("offline", COOPERATIVE, server=server)
        pid = run.child()["pid"]
        server.kill()
        time.sleep(2.5)  # well past the 0.9 s lease
        assert run.proc.poll() is None and alive(pid)
        server.start()  # same data: the agent is known again, and L5 still reaches it
        with server.api() as api:
            fire(api, "agent:offline", 5)
        assert run.finish() == 128 + signal.SIGTERM
        assert not alive(pid)
    finally:
        server.kill()


def test_help_and_usage() -> None:
    runner = CliRunner()
    helped = runner.invoke(main, ["run", "--help"])
    assert helped.exit_code == 0 and "m99 run --name" in helped.output and "--grace" in helped.output
    assert "run" in runner.invoke(main, ["--help"]).output
    empty = runner.invoke(main, ["run"])
    assert empty.exit_code == 2 and "COMMAND" in empty.output
