"""The allowed model and tool call's short paths: a model call admitted at once gets its ticket without a
Decision, a model call's end skips evaluating only when no trigger can be at its limit, the gate tracks
the calls in flight without a lock (its own context's call, another thread's report, a call that never
reports back), and a tool call's end is recorded once for the usage and the side-effect ledger."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from m99.errors import ToolCallRefused
from m99.guard import Guard
from m99.policy import PolicyEngine, PriceTable, Stage, parse_text
from m99.policy import gate as gate_module
from m99.policy.decision import Decision, ModelTicket
from m99.policy.gate import PolicyGate

PRICES = PriceTable({"*": {"input": 1.0, "output": 1.0}})


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine_for(triggers: str, clock: Clock | None = None) -> PolicyEngine:
    result = parse_text("# KILLSWITCH\n\n## TRIGGERS\n" + triggers)
    assert result.policy is not None, result.problems
    return PolicyEngine(result.policy, clock=clock or Clock(), prices=PRICES, audit=None)


# -- the engine ------------------------------------------------------------------------------------------


def test_a_model_call_admitted_at_once_gets_its_ticket_and_admit_model_still_answers_a_decision() -> None:
    engine = engine_for("cost_limit_usd: 50\ntokens_per_minute: 100000\n")
    ticket = engine.reserve_model("gpt-4o", max_tokens=100)
    assert isinstance(ticket, ModelTicket)
    assert ticket.session is not None and ticket.slot is not None  # reserved in the budget and the ceiling
    engine.settle_model(ticket, tokens=10)
    assert engine.spend.session is not None and engine.spend.session.reserved == 0.0
    decision = engine.admit_model("gpt-4o", max_tokens=100)
    assert isinstance(decision, Decision) and decision.verdict == "allow" and decision.ticket is not None
    assert decision.stage == Stage.NONE
    engine.release_model(decision.ticket)
    assert engine.spend.session.reserved == 0.0


def test_a_throttled_or_refused_model_call_still_gets_a_decision() -> None:
    engine = engine_for("cost_limit_usd: 1\n\n## ESCALATION\nlevel_1_throttle:\n  action: reduce_rate\n")
    refused = engine.reserve_model("gpt-4o", max_tokens=2_000_000)  # worst case $2 > $1
    assert isinstance(refused, Decision) and refused.verdict == "refuse"
    engine = engine_for("cost_limit_usd: 1\n\n## ESCALATION\nlevel_1_throttle:\n  action: reduce_rate\n")
    engine.escalate("operator", "test")
    assert engine.stage == Stage.THROTTLE
    throttled = engine.reserve_model("gpt-4o", max_tokens=10)
    assert isinstance(throttled, Decision) and throttled.verdict == "allow" and throttled.ticket is not None


def test_a_breach_reached_by_a_model_calls_end_is_seen_at_that_end() -> None:
    for triggers, settle in [
        ("tokens_per_minute: 100\n", {"tokens": 101}),
        ("cost_limit_usd: 0.5\n", {"tokens": 10, "cost_usd": 0.5}),
        ("api_calls_per_minute: 2\n", {"tokens": 1}),
        ("consecutive_failures: 1\n", {"tokens": 1, "ok": False}),
    ]:
        engine = engine_for(triggers)
        for _ in range(3):
            if engine.stage != Stage.NONE:
                break
            admitted = engine.reserve_model("m", max_tokens=10)
            engine.settle_model(admitted if isinstance(admitted, ModelTicket) else None, **settle)
        assert engine.stage != Stage.NONE, triggers


@pytest.mark.parametrize("seed", range(8))
def test_clear_of_limits_is_never_clear_when_a_trigger_is_breached(seed: int) -> None:
    # The short check after a model call must over-estimate: whenever it says clear, the full measure
    # finds no trigger at its limit (overrides aside, which only take breaches away).
    rng = random.Random(seed)
    clock = Clock()
    engine = engine_for(
        "cost_limit_usd: 0.01\ntokens_per_minute: 500\napi_calls_per_minute: 20\nerror_rate_threshold: 0.3\n"
        "consecutive_failures: 4\nruntime_limit_minutes: 30\n",
        clock,
    )
    engine._ladder.target = lambda trigger: None  # type: ignore[method-assign]  # measure only: never move
    agreed = 0
    for _ in range(400):
        clock.now += rng.choice((0.0, 0.5, 5.0, 61.0, 300.0))
        ok = rng.random() > 0.25
        if rng.random() < 0.5:
            engine.record_tool("t", ok=ok)
        else:
            engine.settle_model(None, tokens=rng.randint(0, 120), cost_usd=rng.choice((0.0, 0.0005)), ok=ok)
        with engine._lock:
            clear = engine._clear_of_limits(clock.now)
            breached = engine._breached(engine._measure(clock.now))
        assert not (clear and breached), breached
        agreed += clear == (not breached)
    assert agreed > 100  # and it is not simply never clear


def test_an_unknown_trigger_key_takes_the_full_evaluation() -> None:
    engine = engine_for("tokens_per_minute: 100\n")
    engine._limits_known = False
    with engine._lock:
        assert not engine._clear_of_limits(engine._clock())


# -- the gate: calls in flight ---------------------------------------------------------------------------


def gate_and_guard(tmp_path: Path, name: str = "agent") -> tuple[PolicyGate, Guard]:
    engine = engine_for("cost_limit_usd: 50\n")
    gate = PolicyGate(engine, tick_seconds=60)
    guard = Guard(name, kind="autonomous", terminate=lambda grace: None)
    guard.attach_policy(gate)
    return gate, guard


def test_a_model_calls_end_in_its_own_context_settles_its_own_reservation(tmp_path: Path) -> None:
    gate, guard = gate_and_guard(tmp_path)
    try:
        budget = gate.engine.spend.session
        assert budget is not None
        guard.check_model("gpt-4o", 1000)
        assert budget.reserved > 0 and len(gate._flying) == 1
        guard.record_model_call(tokens=10, ok=True)
        assert budget.reserved == 0.0 and not gate._flying
        assert budget.spent == pytest.approx(10 / 1e6)
        guard.record_model_call(tokens=5, ok=True, model="gpt-4o")  # again: counted, nothing to settle
        assert budget.spent == pytest.approx(15 / 1e6)
    finally:
        guard.attach_policy(None)


def test_a_report_from_another_thread_settles_the_oldest_call_in_flight(tmp_path: Path) -> None:
    gate, guard = gate_and_guard(tmp_path)
    try:
        budget = gate.engine.spend.session
        assert budget is not None
        guard.check_model("gpt-4o", 1000)
        first = next(iter(gate._flying))
        guard.check_model("gpt-4o", 2000)
        assert len(gate._flying) == 2
        worker = threading.Thread(target=lambda: guard.record_model_call(tokens=7, ok=True))
        worker.start()
        worker.join()
        assert first.done and list(gate._flying) != [first] and len(gate._flying) == 1
        assert budget.reserved == pytest.approx(2000 / 1e6)
        guard.record_model_call(tokens=3, ok=True)  # this context's own, the second
        assert budget.reserved == 0.0 and not gate._flying
    finally:
        guard.attach_policy(None)


def test_a_call_that_never_reports_back_gives_its_reservation_up_after_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, guard = gate_and_guard(tmp_path)
    try:
        budget = gate.engine.spend.session
        assert budget is not None
        guard.check_model("gpt-4o", 1000)
        gate._expire_tickets()
        assert budget.reserved > 0  # not yet
        first = next(iter(gate._flying))
        monkeypatch.setattr(gate_module, "_TICKET_TTL", -1.0)
        guard.check_model("gpt-4o", 1000)  # the next admission looks first, and gives the old one up
        assert first.done and first not in gate._flying and len(gate._flying) == 1
        gate._expire_tickets()  # the gate's timer looks too
        assert budget.reserved == 0.0 and not gate._flying
    finally:
        guard.attach_policy(None)


def test_calls_from_many_threads_leave_nothing_reserved(tmp_path: Path) -> None:
    gate, guard = gate_and_guard(tmp_path)
    try:
        budget = gate.engine.spend.session
        assert budget is not None

        def agent() -> None:
            for i in range(300):
                guard.check_model("gpt-4o", 100)
                guard.record_model_call(tokens=1, ok=True)
                if i % 50 == 0:
                    gate._expire_tickets()

        threads = [threading.Thread(target=agent) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert budget.reserved == pytest.approx(0.0, abs=1e-12) and not gate._flying
        assert budget.spent == pytest.approx(1200 / 1e6)
    finally:
        guard.attach_policy(None)


# -- a tool call's end -----------------------------------------------------------------------------------


def test_a_tool_calls_end_is_one_moment_for_the_usage_and_the_ledger() -> None:
    guard = Guard("agent", kind="autonomous", terminate=lambda grace: None, recent_tool_calls=2)
    handle = guard.effects.started("search", {"q": "m99"})
    guard.record_tool_call("search", ok=True, handle=handle, result="results")
    guard.record_tool_call("write", ok=False, result=b"xy")
    guard.record_tool_call("read", ok=True)
    completed, flying = guard.effects.entries()
    assert not flying
    assert [(c[0], c[1], c[4], c[5]) for c in completed] == [
        ("search", {"q": "m99"}, 7, True),
        ("write", None, 2, False),
        ("read", None, None, True),
    ]
    snapshot = guard.snapshot()
    recent = snapshot["recent_tool_calls"]
    assert [(r["tool"], r["ok"]) for r in recent] == [("write", False), ("read", True)]
    assert [r["ts"] for r in recent] == [c[3] for c in completed[1:]]
    usage = snapshot["usage"]
    assert usage["tool_calls"] == 3 and usage["tool_errors"] == 1


# -- a tool call's short path ------------------------------------------------------------------------------


def test_the_guards_quick_yes_still_refuses_the_policy_file_and_is_withdrawn_by_a_level_or_a_stage(
    tmp_path: Path,
) -> None:
    policy_file = tmp_path / "KILLSWITCH.md"
    policy_file.write_text("# KILLSWITCH\n\n## TRIGGERS\nconsecutive_failures: 5\n")
    result = parse_text(policy_file.read_text(), source=policy_file)
    assert result.policy is not None, result.problems
    gate = PolicyGate(PolicyEngine(result.policy, clock=Clock(), prices=PRICES, audit=None), tick_seconds=60)
    guard = Guard("agent", kind="autonomous", terminate=lambda grace: None)
    guard.attach_policy(gate)
    try:
        assert not guard.quiet and guard._clear_tool is not None  # only the protected file: the quick yes
        guard.check_tool("search", {"query": "m99"})
        guard.check_tool("shell", "echo hi")
        with pytest.raises(ToolCallRefused, match=r"protected: .*KILLSWITCH\.md"):
            guard.check_tool("write_file", {"path": str(policy_file), "text": "x"})
        with pytest.raises(ToolCallRefused, match=r"protected: .*KILLSWITCH\.md"):
            guard.check_tool("shell", {"cmd": ["rm", str(policy_file)]})  # nested: the full scan
        guard.apply_state(3, reason="ops")
        assert guard._clear_tool is None
        with pytest.raises(ToolCallRefused):
            guard.check_tool("search", {"query": "m99"})  # the freeze, not the quick yes
        guard.apply_state(0)
        assert guard._clear_tool is not None
        gate.engine.escalate("ops")
        gate.engine.escalate("ops")  # throttle, then pause: the engine decides every call again
        assert not gate.engine.quick_tool({"query": "m99"})
    finally:
        guard.attach_policy(None)


def test_successes_noted_without_the_lock_from_many_threads_are_all_counted_and_still_breach() -> None:
    def hammer(engine: PolicyEngine) -> None:
        barrier = threading.Barrier(4)

        def agent() -> None:
            barrier.wait()
            for _ in range(500):
                engine.record_tool("search", ok=True)

        threads = [threading.Thread(target=agent) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    roomy = engine_for("api_calls_per_minute: 2000\n")
    hammer(roomy)
    assert roomy.measured()["api_calls_per_minute"] == 2000 and roomy.stage == Stage.NONE  # none lost
    tight = engine_for("api_calls_per_minute: 1500\n")
    events: list[str] = []
    tight.on_event(lambda event: events.append(event.reason))
    hammer(tight)
    assert tight.stage != Stage.NONE and any("1501 over 1500" in reason for reason in events)  # at the 1,501st
    calm = engine_for("consecutive_failures: 3\n")
    for ok in (False, False, True, False, False):
        calm.record_tool("t", ok=ok)
    assert calm.stage == Stage.NONE and calm.measured()["consecutive_failures"] == 2  # a success ended the run
    calm.record_tool("t", ok=False)
    assert calm.stage != Stage.NONE
