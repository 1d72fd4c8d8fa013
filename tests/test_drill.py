"""Drills: `m99 drill` runs a real, audited kill marked as a drill on agents of two frameworks, reports
each confirmed time-to-halt, restores them, and writes a case pack that verifies; past L3 it is
refused; a schedule makes `m99 status` warn when a drill is overdue."""

from __future__ import annotations

import re
import time
from pathlib import Path

from m99.evidence.casepack import verify
from m99.guard import Guard
from m99.session import Session

from .servers import ServeProcess


def test_a_drill_on_two_frameworks_reports_restores_and_writes_its_case_pack(
    serve: ServeProcess, tmp_path: Path
) -> None:
    guards = [Guard("lc-drill", framework="langchain"), Guard("crew-drill", framework="crewai")]
    sessions = [Session(g, serve.url).start() for g in guards]
    try:
        out = tmp_path / "drill.zip"
        ran = serve.cli("drill", "--scope", "global", "--level", "2", "--by", "ops@example.com", "-o", str(out))
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "drill passed" in ran.stdout
        for name in ("lc-drill", "crew-drill"):
            assert re.search(rf"{name}\s+confirmed in \d+\.\d ms; restored", ran.stdout), ran.stdout
        assert all(g.level == 0 for g in guards)
        report = verify(out.read_bytes())
        assert report.origin == "drill" and report.level == 2 and sorted(report.confirmed) == ["crew-drill", "lc-drill"]
        with serve.api() as api:
            assert api.get("/api/executions").json()[0]["origin"] == "drill"
            kinds = [e["kind"] for e in api.get("/api/audit", params={"limit": 1000}).json()]
            assert "authorization.armed" in kinds and "execution.started" in kinds
    finally:
        for s in sessions:
            s.close()


def test_drills_never_go_past_l3(serve: ServeProcess) -> None:
    guard = Guard("drilled", framework="custom")
    session = Session(guard, serve.url).start()
    try:
        refused = serve.cli("drill", "--scope", "global", "--level", "4", "--by", "ops@example.com")
        assert refused.returncode == 5 and "a drill goes up to L3" in refused.stderr
        assert guard.level == 0
    finally:
        session.close()


def test_a_drill_schedule_makes_status_warn_when_overdue(serve: ServeProcess) -> None:
    scheduled = serve.cli("drill", "--every", "1s", "--by", "ops@example.com")
    assert scheduled.returncode == 0, scheduled.stderr
    time.sleep(1.2)
    status = serve.cli("status")
    assert "WARNING: a drill is overdue" in status.stdout
    with serve.api() as api:
        assert api.get("/api/drills").json()["overdue"] is True
