"""An agent's ordinary life, as a newcomer lives it: it starts, works, is stopped or ends, and the
record says what happened.  Each test reproduces a finding of the newcomer's review, in real processes
against a real `m99 serve`, with the real frameworks."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from .servers import ServeProcess
from .test_session import wait_for

EXAMPLES = str(Path(__file__).resolve().parent.parent / "examples")


def agents(api: httpx.Client) -> dict[str, dict]:
    return {a["name"]: a for a in api.get("/api/agents", params={"all": "true"}).json()}


def kill(api: httpx.Client, scope: str, level: int = 3, reason: str = "Runaway loop") -> dict:
    auth = api.post("/api/arm", json={"by": "ops@example.com", "reason": reason, "scope": scope, "level": level})
    assert auth.status_code == 200, auth.text
    done = api.post("/api/execute", json={"authorization_id": auth.json()["id"]})
    assert done.status_code == 200, done.text
    return done.json()


def start(server: ServeProcess, code: str, *args: str) -> subprocess.Popen[str]:
    env = {**server.env, "PYTHONPATH": EXAMPLES}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), server.url, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def quick(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`m99 serve` whose dead man's switch fires after 0.6 s of silence."""
    server = ServeProcess(tmp_path / "data", "--heartbeat-interval", "0.3", "--missed", "2").start()
    yield server
    server.kill()


QUICK_START = """
    import sys, time
    from m99 import M99Client, M99KillSwitchTriggered

    client = M99Client(sys.argv[1])
    client.register("my-agent", "autonomous")
    print("ready", flush=True)
    if sys.argv[2] == "work":
        while True:
            client.check_status()
            time.sleep(0.01)
    elif sys.argv[2] == "sleep":
        time.sleep(60)
    # "exit": the script simply ends, without close()
"""


def test_a_script_that_ends_normally_deregisters_and_its_next_run_is_not_frozen(quick: ServeProcess) -> None:
    for _ in range(2):
        proc = start(quick, QUICK_START, "exit")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "ready" in out, err
        with quick.api() as api:
            assert agents(api)["my-agent"]["status"] == "stopped"
            time.sleep(1.0)  # longer than the dead man's window
            assert api.get("/api/status").json()["directives"] == []  # no dead man's kill for a clean exit
            assert agents(api)["my-agent"]["status"] == "stopped"


def test_sigterm_is_a_clean_exit_and_sigkill_is_a_dead_mans_case(quick: ServeProcess) -> None:
    proc = start(quick, QUICK_START, "sleep")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    with quick.api() as api:
        assert agents(api)["my-agent"]["status"] == "stopped"
    proc = start(quick, QUICK_START, "sleep")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.kill()  # a signal nobody can catch: the process cannot say goodbye
    proc.wait(timeout=30)
    with quick.api() as api:
        wait_for(lambda: agents(api)["my-agent"]["status"] in ("silent", "stopped"), timeout=10)
        kinds = [e["kind"] for e in api.get("/api/audit", params={"limit": 1000}).json()]
        assert "deadman.evidence" in kinds


def test_the_quick_starts_stop_is_confirmed_and_names_who_and_why(serve: ServeProcess) -> None:
    proc = start(serve, QUICK_START, "work")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    with serve.api() as api:
        result = kill(api, "agent:my-agent")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "M99KillSwitchTriggered" in err
        assert f'stopped by ops@example.com: "Runaway loop" (L3, execution {result["execution_id"]})' in err
        halt = api.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]
        assert halt["confirmed"] == 1 and halt["not_confirmed"] == []
        assert agents(api)["my-agent"]["status"] == "stopped"


FRAMEWORK_RUN = {
    "langchain": """
        import sys
        import m99
        import langchain.agents  # the framework first, as an agent program imports it
        from m99.examples._support import Work
        from m99.examples.langchain_agent import build_agent, run_agent
        m99.init("lc-life", kind="research", url=sys.argv[1])
        print("ready", flush=True)
        run_agent(build_agent("lc-life", Work()))
    """,
    "crewai": """
        import sys
        import m99
        import crewai
        from m99.examples._support import Work
        from m99.examples.crewai_crew import build_crew
        m99.init("crew-life", kind="analysis", url=sys.argv[1])
        print("ready", flush=True)
        build_crew("Incident Analyst", Work(), "crew-life").kickoff()
    """,
    "autogen": """
        import asyncio, sys
        import m99
        import autogen_agentchat.agents
        from m99.examples._support import Work
        from m99.examples.autogen_team import build_team, run_team
        runtime = m99.init("ag-life", kind="writing", url=sys.argv[1])
        print("ready", flush=True)
        # With M99Termination the team ends cleanly, its stop reason saying who stopped it.
        print(asyncio.run(run_team(build_team(runtime.guard, Work(), "ag-life"))), flush=True)
    """,
}
NAMES = {"langchain": "lc-life", "crewai": "crew-life", "autogen": "ag-life"}


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["langchain", "crewai", "autogen"])
def test_a_stopped_run_that_ends_the_process_is_still_confirmed(serve: ServeProcess, framework: str) -> None:
    name = NAMES[framework]
    proc = start(serve, FRAMEWORK_RUN[framework])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
    time.sleep(1.0)  # let it work a little
    with serve.api() as api:
        assert agents(api)[name]["frameworks"] == [framework]  # the framework it really runs under
        result = kill(api, f"framework:{framework}")
        assert result["agents"] == [name]
        out, err = proc.communicate(timeout=90)
        if framework == "autogen":
            assert proc.returncode == 0 and "stopped by ops@example.com" in out, (out, err[-3000:])
        else:
            assert proc.returncode != 0  # the run raised, and the process ended with it
            assert "stopped by ops@example.com" in err, err[-3000:]
        assert "Task exception was never retrieved" not in err and "cannot schedule new futures" not in err
        assert len(err.strip().splitlines()) < 60, err[-3000:]  # M99's error, not pages of framework noise
        halt = api.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]
        assert halt["confirmed"] == 1, halt  # acknowledged before the refusal reached the framework
        assert agents(api)[name]["status"] == "stopped"


def test_closing_a_client_right_after_registering_never_hangs(embedded_url_and_token) -> None:  # type: ignore[no-untyped-def]
    from m99 import M99Client

    url, _ = embedded_url_and_token
    worst = 0.0
    for i in range(25):
        client = M99Client(url)
        client.register(f"brief-{i}")
        started = time.monotonic()
        client.close()
        worst = max(worst, time.monotonic() - started)
    assert worst < 3.0, worst


@pytest.fixture
def embedded_url_and_token(embedded):  # type: ignore[no-untyped-def]
    return embedded.url, embedded.token


def test_stopped_agents_leave_scopes_and_counts_and_are_listed_with_all(serve: ServeProcess) -> None:
    for _ in range(3):
        proc = start(serve, QUICK_START, "exit")
        proc.communicate(timeout=60)
    running = start(serve, QUICK_START.replace('"my-agent"', '"worker"'), "sleep")
    assert running.stdout is not None and running.stdout.readline().strip() == "ready"
    try:
        with serve.api() as api:
            listed = [a["name"] for a in api.get("/api/agents").json()]
            assert listed == ["worker"]  # stopped ones only with ?all=true (m99 agents --all)
            assert set(agents(api)) == {"my-agent", "worker"}
            result = kill(api, "global")
            assert result["agents"] == ["worker"]  # a stopped agent is not in scope ...
            wait_for(
                lambda: api.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]["confirmed"] == 1
            )
            halt = api.get(f"/api/executions/{result['execution_id']}").json()["time_to_halt"]
            assert halt["in_scope"] == 1 and halt["not_confirmed"] == []  # ... nor counted as unconfirmed
            status = api.get("/api/status").json()
            assert status["agents_total"] == 1 and status["agents_stopped"] == 1
            out = serve.cli("agents", "--all")
            assert "my-agent" in out.stdout and "stopped (deregistered)" in out.stdout
    finally:
        running.kill()
        running.wait(timeout=30)


def test_a_silent_agent_whose_process_is_gone_is_counted_stopped(quick: ServeProcess) -> None:
    proc = start(quick, QUICK_START, "sleep")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait(timeout=30)
    with quick.api() as api:
        wait_for(lambda: agents(api)["my-agent"]["status"] == "stopped", timeout=15)
        assert agents(api)["my-agent"]["status_reason"] == "gone"
        assert [a["name"] for a in api.get("/api/agents").json()] == []


def test_stopped_agents_are_pruned_after_the_retention_period(tmp_path: Path) -> None:
    from m99.control import Settings
    from m99.link import ControlLink
    from m99.server import build

    cp = build(tmp_path / "d", Settings(retention=0.5))
    try:
        cp.register(ControlLink("http://127.0.0.1:9").registration_body("short-lived"))
        agent = cp.registry.get("short-lived")
        assert agent is not None
        link = ControlLink("http://127.0.0.1:9")
        assert cp.deadman.prune() == []
        with cp.ledger.unit() as unit:
            unit.tx.set_agent_status(
                ["short-lived"], "stopped", "deregistered", time.time(), unit.tx.next_registry_seq()
            )
        time.sleep(0.6)
        assert cp.deadman.prune() == ["short-lived"]
        cp.state.sync()
        assert cp.registry.get("short-lived") is None
        link.close()
    finally:
        cp.close()


def test_the_cli_takes_global_options_after_the_command_and_says_usage_errors_in_one_line(
    serve: ServeProcess,
) -> None:
    env = {k: v for k, v in serve.env.items() if k not in ("M99_URL",)}
    out = subprocess.run(
        [sys.executable, "-m", "m99.cli", "status", "--url", serve.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "M99 at" in out.stdout, out.stderr
    bad = serve.cli("arm", "--by")
    assert bad.returncode == 2 and bad.stderr.startswith("m99: error:") and len(bad.stderr.strip().splitlines()) == 1
    typo = serve.cli("exeute")
    assert typo.returncode == 2 and len(typo.stderr.strip().splitlines()) == 1


def test_arm_refuses_a_scope_with_no_agent_and_suggests_close_names(serve: ServeProcess) -> None:
    proc = start(serve, QUICK_START.replace('"my-agent"', '"lc-bot"'), "sleep")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        out = serve.cli("arm", "--by", "ops@example.com", "--reason", "r", "--scope", "agent:lc-bto")
        assert out.returncode == 5 and "did you mean agent:lc-bot" in out.stderr
        allowed = serve.cli(
            "arm", "--by", "ops@example.com", "--reason", "r", "--scope", "agent:later", "--allow-empty"
        )
        assert allowed.returncode == 0 and "0 agents in scope" in allowed.stdout
        nobody = serve.cli("arm", "--by", "admin", "--reason", "r", "--scope", "agent:lc-bot")
        assert nobody.returncode == 0  # "admin" is the token's own name
        anonymous = serve.cli("arm", "--by", "somebody", "--reason", "r", "--scope", "agent:lc-bot")
        assert anonymous.returncode == 5 and "e-mail" in anonymous.stderr
        shown = serve.cli("status").stdout
        assert "1 agent running" in shown and "agents" not in shown.split("\n")[0].split("running")[0]
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_the_server_logs_every_kill(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data").start()
    try:
        proc = start(server, QUICK_START, "sleep")
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with server.api() as api:
            result = kill(api, "agent:my-agent")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        server.kill(signal.SIGTERM)
    log = server.proc.stdout.read() if server.proc and server.proc.stdout else ""
    assert (
        f"execute fired L3 on agent:my-agent (1 agent) by ops@example.com: Runaway loop [{result['execution_id']}]"
        in log
    )


def test_execute_does_not_present_its_own_time_as_time_to_halt_and_can_wait_for_the_halts(
    serve: ServeProcess,
) -> None:
    proc = start(serve, QUICK_START, "sleep")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        armed = serve.cli("arm", "--by", "ops@example.com", "--reason", "r", check=True)
        auth = armed.stdout.split("armed: ")[1].split()[0]
        done = serve.cli("execute", "--auth", auth, "--force", check=True).stdout
        assert "recorded in" in done and "this is not the time-to-halt" in done and "m99 executions exe_" in done
        assert "1 agent in scope" in done
        armed = serve.cli("arm", "--by", "ops@example.com", "--reason", "again", check=True)
        auth = armed.stdout.split("armed: ")[1].split()[0]
        waited = serve.cli("execute", "--auth", auth, "--force", "--wait", "10")
        assert waited.returncode == 0, waited.stderr
        assert re.search(r"halt confirmed\s+my-agent\s+\d+\.\d ms", waited.stdout)
        assert "all 1 agent in scope confirmed halted" in waited.stdout
        execution = re.search(r"exe_\w+", waited.stdout)
        assert execution
        watched = serve.cli("watch", execution.group(0), "--wait", "2")
        assert watched.returncode == 0 and "halt confirmed" in watched.stdout
    finally:
        proc.kill()
        proc.wait(timeout=30)
