"""The examples run as a user runs them (a fresh interpreter, an embedded control plane, offline
models) and each must halt its agents through the real framework: exit status 0 only if it did.
They ship in the package (``m99.examples``); the files in examples/ are thin entry points to them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.timeout(240)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M99_")}
    env.update(CREWAI_DISABLE_TELEMETRY="true", OTEL_SDK_DISABLED="true", CREWAI_TESTING="true")
    return env


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)], env=_env(), capture_output=True, text=True, timeout=200, cwd=EXAMPLES
    )


def test_the_examples_ship_in_the_package_and_import_no_framework(tmp_path: Path) -> None:
    """``python -m m99.examples.NAME`` runs from anywhere (not only a checkout); importing the example
    modules imports no framework until an agent is built."""
    modules = ["langchain_agent", "crewai_crew", "autogen_team", "mixed_fleet", "fleet_agent"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('m99.examples.' + m)\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.strip().split(","))
    assert not loaded & {"langchain", "langchain_core", "langgraph", "crewai", "autogen_agentchat", "autogen_core"}
    ran = subprocess.run(
        [sys.executable, "-m", "m99.examples.langchain_agent"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=200,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "halted by the kill switch" in ran.stdout
    for entry in EXAMPLES.glob("*.py"):  # the checkout's files only hand over to the package
        assert f"from m99.examples.{entry.stem} import main" in entry.read_text()


@pytest.mark.parametrize(
    ("script", "agent", "error"),
    [
        ("langchain_agent.py", "lc-researcher", "Refused: M99"),
        ("crewai_crew.py", "crew-analyst", "M99RunStopped: M99"),
        ("autogen_team.py", "ag-team", "stop_reason=Stopped by the M99 kill switch"),
    ],
)
def test_each_framework_example_halts_its_agent(script: str, agent: str, error: str) -> None:
    out = run_example(script)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "$ m99 execute --auth" in out.stdout
    assert agent in out.stdout and error in out.stdout
    assert "tool calls started after the freeze: 0" in out.stdout
    assert "halted by the kill switch" in out.stdout
    assert "Traceback" not in out.stderr


def test_the_mixed_fleet_demo_scoped_then_global() -> None:
    out = run_example("mixed_fleet.py")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any("adapters installed: langchain, crewai, autogen" in line for line in lines)
    scoped = next(i for i, line in enumerate(lines) if "--scope agent:crew-analyst" in line)
    fleet = next(i for i, line in enumerate(lines) if "--scope global" in line)
    # Between the scoped kill and the global one, only the crew ended.
    between = lines[scoped:fleet]
    assert any("crew-analyst  run ended — M99RunStopped" in line for line in between)
    assert not any("lc-researcher run ended" in line or "ag-team       run ended" in line for line in between)
    for name in ("lc-researcher", "ag-team", "fleet-host"):
        assert any(f"time to halt {name}" in line for line in lines[fleet:])
    assert "audit chain:" in out.stdout and "valid=True" in out.stdout
    assert "OK: the scoped kill stopped one framework, one execute stopped all three" in out.stdout
    assert "Traceback" not in out.stderr
