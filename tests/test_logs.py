"""``m99 serve --log-format json``: every line one JSON object (time, level, logger, message, fields), a line
for every execution, dead man's switch firing and policy escalation, and no token in any line."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from m99 import logs
from m99.control.ledger import SYSTEM_ACTOR
from m99.levels import Level, Scope
from m99.link import ControlLink
from m99.server import EmbeddedControlPlane

from .servers import ServeProcess


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_serve_json_logs_executions_and_dead_mans_switch_firings_without_tokens(tmp_path: Path) -> None:
    server = ServeProcess(
        tmp_path / "data", "--log-format", "json", "--heartbeat-interval", "0.2", "--missed", "2"
    ).start()
    try:
        admin = server.api()
        minted = admin.post("/api/tokens", json={"name": "ops", "role": "operator"}).json()["token"]
        wrong = "m99_" + "x" * 43
        assert httpx.get(f"{server.url}/api/status", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        quiet = ControlLink(server.url)
        quiet.register("goes-quiet", "quiet")  # and never heartbeats: the dead man's switch fires
        wait_for(lambda: any(e["origin"] == "deadman" for e in admin.get("/api/executions").json()))
        ops = server.api(minted)
        auth = ops.post("/api/arm", json={"by": "ops@example.com", "reason": "drill\nforged line", "scope": "global"})
        assert auth.status_code == 400  # a control character in a reason is refused, so it never reaches a log
        auth = ops.post("/api/arm", json={"by": "ops@example.com", "reason": "Rogue behaviour", "scope": "global"})
        executed = ops.post("/api/execute", json={"authorization_id": auth.json()["id"]}).json()
        time.sleep(0.3)
    finally:
        server.kill(15)  # SIGTERM (what systemd sends): a clean shutdown, its lines too
    assert server.proc is not None and server.proc.stdout is not None
    output = server.proc.stdout.read()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert lines[0]["fields"]["event"] == "serving" and lines[0]["fields"]["url"].endswith(str(server.port))
    executions = [line for line in lines if line.get("fields", {}).get("event") == "execution"]
    assert len(executions) == 1, executions
    fields = executions[0]["fields"]
    assert fields["execution_id"] == executed["execution_id"] and fields["origin"] == "execute"
    assert fields["level"] == 3 and fields["scope"] == "global" and fields["by"] == "ops@example.com"
    assert executions[0]["level"] == "warning" and executions[0]["logger"] == "m99.control"
    firings = [line for line in lines if line.get("fields", {}).get("event") == "deadman.fired"]
    assert len(firings) == 1 and firings[0]["fields"]["agents"] == ["goes-quiet"]
    assert firings[0]["fields"]["execution_ids"][0].startswith("exe_")
    for secret in (server.token, minted, wrong):
        assert secret not in output
    quiet.close()


def test_text_is_the_default_and_the_start_up_lines_are_unchanged(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data").start()
    try:
        admin = server.api()
        auth = admin.post("/api/arm", json={"by": "a@example.com", "reason": "text", "allow_empty": True}).json()
        admin.post("/api/execute", json={"authorization_id": auth["id"]})
        time.sleep(0.3)
    finally:
        server.kill(15)
    assert server.proc is not None and server.proc.stdout is not None
    output = server.proc.stdout.read()
    assert output.startswith(f"M99 control plane on http://localhost:{server.port}")
    assert " WARNING m99.control: m99: execute fired L3 on global (0 agents) by a@example.com: text [exe_" in output
    assert server.token not in output


def test_a_policy_escalation_has_its_own_event(tmp_path: Path, restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure("warning", "json", stream)
    with EmbeddedControlPlane(tmp_path / "d") as cp:
        with cp.control.ledger.unit() as unit:
            fired = cp.control.executions.fire(
                unit,
                origin="policy",
                level=Level(3),
                scope=Scope("agent", "spender"),
                by="policy",
                reason="cost_limit_usd 5 reached",
                actor=SYSTEM_ACTOR,
                token_name="system",
                auth_id=None,
            )
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    escalation = [e for e in events if e.get("fields", {}).get("event") == "policy.escalation"]
    assert len(escalation) == 1
    assert escalation[0]["fields"]["execution_id"] == fired["execution_id"]
    assert escalation[0]["fields"]["reason"] == "cost_limit_usd 5 reached"


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_tokens_are_masked_in_messages_fields_and_tracebacks(fmt: str, restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure("info", fmt, stream)
    token = "m99_" + "T0k3n-_" * 6
    log = logging.getLogger("m99.test")
    log.warning("token %s in a message", token, extra={"m99": {"token": token, "nested": [f"Bearer {token}"]}})
    log.info("header Authorization: Bearer s3cr3t-value")
    try:
        raise RuntimeError(f"failed with {token}")
    except RuntimeError:
        log.exception("a traceback")
    text = stream.getvalue()
    assert token not in text and "s3cr3t-value" not in text
    assert text.count(logs.MASK) >= (4 if fmt == "json" else 3)  # text shows no fields
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines()]
        assert len(lines) == 3  # a traceback is a field of its line, not lines of its own
        assert lines[0]["fields"]["token"] == logs.MASK and "RuntimeError" in lines[2]["exception"]


def test_a_message_with_a_newline_stays_one_json_line(restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    logging.getLogger("m99.test").warning('one\n{"level": "forged"}')
    assert len(stream.getvalue().splitlines()) == 1
    assert json.loads(stream.getvalue())["message"] == 'one\n{"level": "forged"}'
