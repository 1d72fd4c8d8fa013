"""Every level end to end: an operator runs the `m99` CLI against a real `m99 serve` subprocess, and the
effect is observed in the agent (`m99.init` in this process, or an agent subprocess): env var gone and
back, a real HTTP request refused and allowed, tools refused, read-only tools allowed under L4, agent
processes terminated at L5/L6, and re-registration refused until an authority lifts the tombstone."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

import m99
from m99.errors import Conflict, M99KillSwitchTriggered, NotAuthorised, ToolCallRefused
from m99.network import ConnectionRefusedByM99

from .servers import ServeProcess

NO_FRAMEWORKS = ["langchain", "crewai", "autogen"]  # these tests are about the Guard itself


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)
    return time.monotonic() - start


def kill(serve: ServeProcess, scope: str, level: int, *extra: str) -> str:
    """What an operator types: `m99 arm …` then `m99 execute --auth … --force`."""
    armed = serve.cli("arm", "--by", "ops@example.com", "--reason", "e2e", "--scope", scope, "--level", str(level))
    assert armed.returncode == 0, armed.stdout + armed.stderr
    auth = re.search(r"auth_[A-Za-z0-9_-]+", armed.stdout)
    assert auth, armed.stdout
    done = serve.cli("execute", "--auth", auth.group(0), "--force", *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def restore(serve: ServeProcess, scope: str) -> None:
    serve.cli("restore", "--scope", scope, "--by", "ops@example.com", "--reason", "all clear", check=True)


@pytest.fixture
def agent(serve: ServeProcess) -> Iterator[Callable[..., m99.Runtime]]:
    def start(name: str = "e2e-bot", **kwargs: object) -> m99.Runtime:
        kwargs.setdefault("exclude", NO_FRAMEWORKS)
        kwargs.setdefault("kind", "autonomous")
        return m99.init(name, url=serve.url, **kwargs)  # type: ignore[arg-type]

    yield start
    m99.shutdown()


def test_l1_strips_the_env_var_and_restore_puts_it_back(agent, serve: ServeProcess, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("E2E_SERVICE_API_KEY", "sk-e2e-not-a-real-key-42")
    runtime = agent()
    assert "E2E_SERVICE_API_KEY" in [c["label"] for c in runtime.guard.credential_fingerprints()]
    kill(serve, "agent:e2e-bot", 1)
    wait_for(lambda: "E2E_SERVICE_API_KEY" not in os.environ)
    runtime.guard.check_tool("search")  # L1 revokes credentials only
    # The server knows the credential by fingerprint only.
    agents = serve.api().get("/api/agents").json()
    assert "sk-e2e-not-a-real-key-42" not in str(agents)
    restore(serve, "agent:e2e-bot")
    wait_for(lambda: os.environ.get("E2E_SERVICE_API_KEY") == "sk-e2e-not-a-real-key-42")


def test_l2_refuses_a_real_http_request_and_restore_allows_it(agent, serve: ServeProcess, local_site: str) -> None:  # type: ignore[no-untyped-def]
    guard = agent().guard
    with guard.activate():
        assert httpx.get(local_site, timeout=5).status_code == 200
    kill(serve, "agent:e2e-bot", 2)
    wait_for(lambda: guard.level == 2)
    with guard.activate(), pytest.raises(httpx.ConnectError) as refused:
        httpx.get(local_site, timeout=5)
    assert "M99 L2 SaaS disconnection" in str(refused.value)
    with guard.activate(), pytest.raises(ConnectionRefusedByM99):
        socket.create_connection(("127.0.0.1", int(local_site.rsplit(":", 1)[1].strip("/"))), timeout=5)
    assert not guard.allows_messages
    # The control plane itself stays reachable: heartbeats and the CLI go on.
    with guard.activate():
        assert httpx.get(f"{serve.url}/api/health", timeout=5).status_code == 200
    restore(serve, "agent:e2e-bot")
    wait_for(lambda: guard.level == 0)
    with guard.activate():
        assert httpx.get(local_site, timeout=5).status_code == 200
    assert guard.allows_messages


def test_l3_refuses_tools_and_status_and_restore_lifts_it(agent, serve: ServeProcess) -> None:  # type: ignore[no-untyped-def]
    guard = agent().guard
    kill(serve, "class:autonomous", 3)
    wait_for(lambda: guard.frozen)
    with pytest.raises(ToolCallRefused, match="search"):
        guard.check_tool("search")
    with pytest.raises(M99KillSwitchTriggered):
        guard.check_status()
    assert os.getpid() == guard.pid  # the process stays alive
    restore(serve, "class:autonomous")
    wait_for(lambda: not guard.frozen)
    guard.check_tool("search")
    guard.check_status()


def test_l4_allows_read_only_tools_and_only_an_authority_lifts_it(agent, serve: ServeProcess) -> None:  # type: ignore[no-untyped-def]
    guard = agent(read_only_tools=["search"]).guard
    kill(serve, "agent:e2e-bot", 4)
    wait_for(lambda: guard.level == 4)
    guard.check_tool("search")
    with pytest.raises(ToolCallRefused, match="read-only"):
        guard.check_tool("write_file")
    # An operator may restore L1–L3 but not lift a restriction.
    operator = serve.api().post("/api/tokens", json={"name": "night-shift", "role": "operator"}).json()["token"]
    refused = serve.cli("--token", operator, "lift", "--scope", "agent:e2e-bot", "--by", "o@x.io", "--reason", "r")
    assert refused.returncode == NotAuthorised.exit_code, refused.stderr
    assert guard.level == 4
    serve.cli("lift", "--scope", "agent:e2e-bot", "--by", "authority@example.com", "--reason", "ok", check=True)
    wait_for(lambda: guard.level == 0)
    guard.check_tool("write_file")


AGENT_PROCESS = textwrap.dedent(
    """
    import sys, time, m99
    m99.init(sys.argv[1], kind="autonomous", exclude=["langchain", "crewai", "autogen"], grace_seconds=1)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def start_agent_process(serve: ServeProcess, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT_PROCESS, name],
        env=serve.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    return proc


def test_l5_terminates_the_agent_process_and_it_cannot_register_again(serve: ServeProcess) -> None:
    proc = start_agent_process(serve, "doomed")
    try:
        out = kill(serve, "agent:doomed", 5)
        assert proc.wait(timeout=20) == -15  # SIGTERM from its own Guard
    finally:
        if proc.poll() is None:
            proc.kill()
    # It acknowledged before its terminator ran, so its time-to-halt is on record.
    execution = re.search(r"exe_[0-9a-f]+", out)
    assert execution, out
    halt = serve.api().get(f"/api/executions/{execution.group(0)}").json()["time_to_halt"]
    assert halt["acknowledged"] == 1 and 0 <= halt["per_agent"]["doomed"] < 5000
    status = {a["name"]: a["status"] for a in serve.api().get("/api/agents").json()}
    assert status["doomed"] == "tombstoned"
    # Anti-resurrection: the same identity is refused, through the same one line.
    with pytest.raises(Conflict, match="tombstoned"):
        m99.init("doomed", url=serve.url, exclude=NO_FRAMEWORKS)
    assert m99.runtime.current() is None
    again = subprocess.run(
        [sys.executable, "-c", AGENT_PROCESS, "doomed"], env=serve.env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode != 0 and "tombstoned" in again.stderr and "ready" not in again.stdout
    # Until an authority lifts the tombstone.
    serve.cli("lift", "--scope", "agent:doomed", "--by", "authority@example.com", "--reason", "fixed", check=True)
    revived = start_agent_process(serve, "doomed")
    revived.terminate()
    revived.wait(timeout=20)


def test_l6_terminates_every_agent_in_scope(serve: ServeProcess) -> None:
    procs = [start_agent_process(serve, name) for name in ("fleet-a", "fleet-b")]
    try:
        kill(serve, "global", 6, "--confirm", "KILL FLEET global")
        assert [p.wait(timeout=20) for p in procs] == [-15, -15]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    status = {a["name"]: a["status"] for a in serve.api().get("/api/agents").json()}
    assert status["fleet-a"] == status["fleet-b"] == "tombstoned"


def test_the_agent_process_reports_its_time_to_halt(serve: ServeProcess) -> None:
    proc = start_agent_process(serve, "timed")
    try:
        out = kill(serve, "agent:timed", 3)
        execution = re.search(r"exe_[0-9a-f]+", out)
        assert execution, out
        api = serve.api()
        wait_for(lambda: api.get(f"/api/executions/{execution.group(0)}").json()["time_to_halt"]["acknowledged"] == 1)
        halt = api.get(f"/api/executions/{execution.group(0)}").json()["time_to_halt"]
        assert 0 <= halt["per_agent"]["timed"] < 5000
    finally:
        proc.kill()
        proc.wait(timeout=20)
