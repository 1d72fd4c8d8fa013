"""`m99 demo` as a user runs it: a fresh interpreter, three agent processes with real frameworks and
offline models, an embedded control plane (or a real `m99 serve` with `--url`); the exit status says
whether every step held, and no framework noise reaches the terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .servers import ServeProcess

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

STEPS = (
    "control plane",
    "agents working",
    "scoped kill (framework:langchain)",
    "fleet kill (global)",
    "case pack written and verified",
    "restore, agents resume",
    "policy: stopped by its own budget",
    "audit chain verified",
)
AGENTS = ("lc-researcher", "crew-analyst", "ag-team")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M99_")}
    env.update(CREWAI_DISABLE_TELEMETRY="true", OTEL_SDK_DISABLED="true", CREWAI_TESTING="true", **extra)
    return env


def m99_demo(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m99.cli", "demo", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=200,
        cwd=tmp_path,
    )


def test_the_demo_holds_every_step_and_keeps_framework_noise_in_its_log(tmp_path: Path) -> None:
    log = tmp_path / "frameworks.log"
    out = m99_demo(tmp_path, "--log", str(log))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout and "Traceback" not in out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    summary = lines.index("M99 demo: summary")
    for step in STEPS:
        assert any(re.match(rf"{re.escape(step)}\s+ok\s+\S", line) for line in lines[summary:]), step
    assert "m99 demo: every step held" in lines[-1]
    # Each agent's confirmed time-to-halt, from the execution records: the scoped kill's for the
    # LangChain agent alone, the fleet kill's for all three.
    halts = lines.index("Confirmed time-to-halt, from the execution records")
    rows = {line.split()[0]: line.split()[1:] for line in lines[halts + 2 : halts + 6]}
    assert re.fullmatch(r"[\d.]+ ms [\d.]+ ms -", " ".join(rows["lc-researcher"]))
    for name in ("crew-analyst", "ag-team"):
        assert re.fullmatch(r"- [\d.]+ ms -", " ".join(rows[name])), rows
    # The KILLSWITCH.md-governed agent, stopped by its own budget: its stop confirmed by the agent.
    assert re.fullmatch(r"- - [\d.]+ ms", " ".join(rows["policy-researcher"])), rows
    assert any("halt confirmed" in line and "lc-researcher" in line for line in lines)
    # The scoped kill reached only its framework, the others kept working.
    assert any("the others kept working" in line for line in lines[summary:])
    # What the frameworks printed when their runs were stopped is in the log the summary names.
    assert f"framework output (what the agents' frameworks printed): {log}" in out.stdout
    logged = log.read_text()
    assert "run ended — ModelCallRefused" in logged and "M99RunStopped" in logged
    assert "ModelCallRefused" not in out.stdout and "M99RunStopped" not in out.stdout


def test_a_step_that_does_not_hold_fails_the_demo_and_is_named(tmp_path: Path) -> None:
    """With the LangChain adapter left out of the agents, the Guard still confirms the freeze but the
    framework keeps calling tools: the demo says the scoped kill failed, and runs nothing after it."""
    out = m99_demo(tmp_path, M99_DISABLED_ADAPTERS="langchain")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout and "Traceback" not in out.stderr
    assert "m99 demo: FAILED at step 'scoped kill (framework:langchain)'" in out.stdout
    lines = out.stdout.splitlines()
    summary = lines.index("M99 demo: summary")
    assert any(re.match(r"scoped kill \(framework:langchain\)\s+FAILED\s+lc-researcher", line) for line in lines)
    for step in STEPS[3:]:
        assert any(re.match(rf"{re.escape(step)}\s+not run", line) for line in lines[summary:]), step


def test_the_live_view_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the agents are a live rich table; the demo still ends with its summary."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "m99.cli", "demo"],
        env=_env(COLUMNS="160", LINES="50", TERM="xterm"),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side closed: the demo is done
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in raw  # drawn with terminal control sequences
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "M99 demo: agents under the kill switch" in screen  # the live table's title
    assert "┃ STEP" in screen  # the summary as a rich table
    assert "m99 demo: every step held" in screen
    assert "Traceback" not in screen


def test_demo_help_and_usage(tmp_path: Path) -> None:
    top = subprocess.run([sys.executable, "-m", "m99.cli", "--help"], env=_env(), capture_output=True, text=True)
    assert top.returncode == 0 and "demo" in top.stdout and "policy" in top.stdout
    bad = m99_demo(tmp_path, "--duration", "5")
    assert bad.returncode == 2 and "--duration goes with --url" in bad.stderr
    gone = m99_demo(tmp_path, "--url", "http://127.0.0.1:9", "--duration", "5")
    assert gone.returncode == 4 and gone.stderr.startswith("m99: error: cannot reach the control plane")


def _agents(server: ServeProcess) -> dict[str, dict[str, object]]:
    with server.api() as api:
        return {a["name"]: a for a in api.get("/api/agents").json()}


def test_demo_url_runs_the_agents_for_a_person_at_a_real_server(tmp_path: Path) -> None:
    """`m99 demo --url`: the agents run against `m99 serve`; a person stops one from another terminal
    (the real CLI), sees its confirmed halt in the demo, restores it, and ends the demo with Ctrl-C."""
    server = ServeProcess(tmp_path / "data").start()
    demo: subprocess.Popen[str] | None = None
    try:
        demo = subprocess.Popen(
            [sys.executable, "-m", "m99.cli", "demo", "--url", server.url, "--duration", "150"],
            env=_env(M99_DATA_DIR=str(server.data_dir)),  # the operator token: the admin token file
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(demo.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()

        def working(name: str) -> bool:  # the demo's own view: the agent made tool calls
            return any(re.match(rf"\s*[\d.]+s\s+{name}\s+working, ([3-9]|\d\d+) tool calls", line) for line in lines)

        deadline = time.monotonic() + 90
        while not (all(a in _agents(server) for a in AGENTS) and all(working(a) for a in AGENTS)):
            assert demo.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        armed = server.cli(
            "arm", "--by", "you@example.com", "--reason", "demo", "--scope", "agent:crew-analyst", "--json", check=True
        )
        auth = json.loads(armed.stdout)["id"]
        executed = server.cli("execute", "--auth", auth, "--force", "--wait", "20", check=True)
        assert "halt confirmed  crew-analyst" in executed.stdout
        time.sleep(1.5)
        server.cli("restore", "--scope", "global", "--by", "you@example.com", "--reason", "over", check=True)
        time.sleep(4.0)
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
        reader.join(10)
        stderr = demo.stderr.read()  # type: ignore[union-attr]
        stdout = "".join(lines)
    finally:
        if demo is not None and demo.poll() is None:
            demo.kill()
        server.kill()
    assert demo.returncode == 0, stdout + stderr
    assert "Traceback" not in stdout and "Traceback" not in stderr
    assert "m99 arm --by you@example.com --reason 'demo' --scope framework:langchain" in stdout  # what to type
    lines = stdout.splitlines()
    confirmed = next(i for i, line in enumerate(lines) if re.search(r"halt confirmed\s+crew-analyst\s+[\d.]+ ms", line))
    assert any(re.search(r"crew-analyst\s+working", line) for line in lines[confirmed:])  # resumed
    row = next(line for line in lines if line.startswith("crew-analyst") and "crewai" in line)
    assert row.split()[3] == "1" and row.split()[-1] == "ok"  # one run halted by M99, no problem
    assert "m99 demo: stopped (Ctrl-C)" in stdout
