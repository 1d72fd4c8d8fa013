"""examples/policy_agent.py runs as a user runs it: its KILLSWITCH.md stops the overspending agent
within budget, the JSONL log says so, and the control plane shows the confirmed policy execution."""

from __future__ import annotations

import pytest

from .test_examples import run_example

pytestmark = pytest.mark.timeout(240)


def test_the_policy_example_is_stopped_by_its_killswitch_md() -> None:
    out = run_example("policy_agent.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ModelCallRefused: M99 policy: this model call" in out.stdout and "would pass cost_limit_usd" in out.stdout
    assert '"action_taken": "full_stop"' in out.stdout and '"trigger_type": "cost_limit_usd"' in out.stdout
    assert "origin policy, L3 on agent:policy-researcher" in out.stdout and "halt confirmed by 1 of 1" in out.stdout
    assert "OK: the policy stopped the agent within its budget" in out.stdout
    assert "Traceback" not in out.stderr
