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
