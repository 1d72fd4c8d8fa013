"""A case pack from a real execution: agents of two frameworks (LangChain and CrewAI, scripted offline
models) in processes of their own, stopped by one L3 on a real `m99 serve`; the pack, fetched with the
CLI, verifies offline with the server's key pinned and holds both agents' receipts and evidence.  A dead
man's switch firing gets its case pack too."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from m99.crypto import SigningKey
from m99.evidence.casepack import verify
from m99.link import ControlLink

from .servers import ServeProcess
from .test_agent_life import FRAMEWORK_RUN, NAMES, kill, start


def wait_for(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_case_pack_of_agents_in_two_frameworks_and_processes_verifies(serve: ServeProcess, tmp_path: Path) -> None:
    procs = {fw: start(serve, FRAMEWORK_RUN[fw]) for fw in ("langchain", "crewai")}
    try:
        for fw, proc in procs.items():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", fw
        time.sleep(1.0)  # let them work a little: their tool calls are in the ledger
        with serve.api() as api:
            result = kill(api, "global")
            assert sorted(result["agents"]) == sorted(NAMES[fw] for fw in procs)
            for proc in procs.values():
                proc.communicate(timeout=90)
            execution_id = result["execution_id"]
            wait_for(lambda: api.get(f"/api/executions/{execution_id}").json()["time_to_halt"]["confirmed"] == 2)
            wait_for(lambda: len(api.get(f"/api/executions/{execution_id}/evidence").json()) == 3)
            evidence = api.get(f"/api/executions/{execution_id}/evidence").json()
            frameworks = {e["agent"]: e["signed"]["evidence"]["snapshot"]["frameworks"] for e in evidence if e["agent"]}
            assert frameworks == {"lc-life": ["langchain"], "crew-life": ["crewai"]}
            # The side-effect ledger the adapters fed: each tool call that ran, with what it was asked
            # (its arguments, redacted) and when it started and ended.
            for e in evidence:
                if not e["agent"]:
                    continue
                completed = e["signed"]["evidence"]["side_effects"]["completed"]
                assert completed, e["agent"]
                for call in completed:
                    assert call["tool"] and call["arguments"], (e["agent"], call)
                    assert call["started_at"] is not None and call["started_at"] <= call["ended_at"], call
        out = tmp_path / "pack.zip"
        got = serve.cli("casepack", "get", execution_id, "-o", str(out))
        assert got.returncode == 0, got.stdout + got.stderr
        checked = serve.cli("casepack", "verify", str(out), "--public-key", _server_key(serve))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "2 of 2 agents confirmed halted" in checked.stdout and "within the SLO" in checked.stdout
        report = verify(out.read_bytes())
        assert sorted(report.evidence) == ["crew-life", "lc-life"]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


def _server_key(serve: ServeProcess) -> str:
    """The key an operator pins: read from the server's own data directory, not from the pack."""
    return SigningKey.load(serve.data_dir / "server.key").public_b64


def test_a_dead_mans_switch_firing_gets_a_case_pack(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path / "data", "--heartbeat-interval", "0.3", "--missed", "2").start()
    try:
        silent = ControlLink(serve.url)
        silent.register("goes-quiet", "worker")
        with serve.api() as api:
            wait_for(lambda: any(e["origin"] == "deadman" for e in api.get("/api/executions").json()), 20)
            fired = next(e for e in api.get("/api/executions").json() if e["origin"] == "deadman")
            pack = api.get(f"/api/executions/{fired['id']}/casepack")
            assert pack.status_code == 200, pack.text
        report = verify(pack.content)
        assert report.origin == "deadman" and report.not_confirmed == {"goes-quiet": "never acknowledged"}
    finally:
        serve.kill()
