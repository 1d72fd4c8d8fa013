"""The seed quick start, as written, against a real `m99 serve` subprocess."""

from __future__ import annotations

import re
import time

import pytest

from m99 import M99Client, M99KillSwitchTriggered

from .servers import ServeProcess


def test_seed_quick_start_verbatim(serve: ServeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M99_URL", serve.url)
    # agent.py — integrate in 3 lines
    client = M99Client(serve.url)
    client.register("my-agent", "autonomous")
    client.check_status()  # running: does not raise

    # Terminal 2 — fire the kill switch
    status = serve.cli("status", check=True)
    assert "my-agent" in status.stdout and "autonomous" in status.stdout

    armed = serve.cli("arm", "--by", "admin@example.com", "--reason", "Rogue behaviour", check=True)
    auth_id = re.search(r"armed: (auth_\w+)", armed.stdout)
    assert auth_id, armed.stdout

    executed = serve.cli("execute", "--auth", auth_id.group(1), "--force", check=True)
    assert "L1, L2, L3" in executed.stdout and "1 agent in scope" in executed.stdout

    # "Agent stops immediately": the state is pushed to the agent, check_status() answers
    # from memory; allow the push its few milliseconds after the CLI returns.
    deadline = time.monotonic() + 2
    with pytest.raises(M99KillSwitchTriggered) as caught:
        while time.monotonic() < deadline:
            client.check_status()
            time.sleep(0.001)
    assert caught.value.level == 3

    verify = serve.cli("audit", "verify", check=True)
    assert "audit chain valid" in verify.stdout
    client.close()


def test_first_start_prints_where_the_admin_token_is(serve: ServeProcess) -> None:
    token_file = serve.data_dir / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert serve.token.startswith("m99_")
    serve.kill()
    assert serve.proc is not None and serve.proc.stdout is not None
    banner = serve.proc.stdout.read()
    assert str(token_file) in banner and "localhost" in banner


def test_the_readmes_agent_snippet_runs_as_written(serve: ServeProcess) -> None:
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    snippet = readme.split("`agent.py` — three lines")[1].split("```python\n", 1)[1].split("```", 1)[0]
    proc = subprocess.Popen(
        [sys.executable, "-c", snippet.replace("http://localhost:8099", serve.url)],
        env=serve.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with serve.api() as api:
        deadline = time.monotonic() + 30
        while not api.get("/api/agents").json():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        armed = serve.cli("arm", "--by", "admin@example.com", "--reason", "Rogue behaviour", check=True)
        auth_id = re.search(r"armed: (auth_\w+)", armed.stdout)
        assert auth_id
        executed = serve.cli("execute", "--auth", auth_id.group(1), "--force", check=True)
        execution = re.search(r"exe_\w+", executed.stdout)
        assert execution
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        expected = f"""M99: kill switch holds agent 'my-agent': stopped by admin@example.com: "Rogue behaviour" (L3, execution {execution.group(0)})"""
        assert out.strip() == expected
        shown = serve.cli("executions", execution.group(0), check=True).stdout
        assert "1 of 1 agent acknowledged" in shown and "my-agent" in shown
        assert api.get("/api/agents", params={"all": "true"}).json()[0]["status"] == "stopped"  # ended cleanly
