"""The decision engine, on a fake clock: each trigger at its threshold and not before, the escalation
ladder, operator resume, hard budgets under threads, daily totals across a restart, the audit log."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from m99.errors import NotAuthorised
from m99.policy import AuditLog, Budget, PolicyEngine, PolicyError, PriceTable, Stage, parse_text
from m99.policy.budget import DailyLedger, FixedAllowance


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


LADDER = """
## ESCALATION
level_1_throttle:
  action: reduce_rate
  timeout_minutes: 1
level_2_pause:
  action: pause_and_notify
  timeout_minutes: 2
level_3_shutdown:
  action: full_stop
  save_state: true
  allow_restart: {restart}
"""


def make(
    triggers: str, *, ladder: bool = True, restart: str = "true", clock: Clock | None = None, **kw: object
) -> tuple[PolicyEngine, Clock, list]:
    text = "# KILLSWITCH\n\n## TRIGGERS\n" + triggers + (LADDER.format(restart=restart) if ladder else "")
    result = parse_text(text)
    assert result.policy is not None, result.problems
    clock = clock or Clock()
    engine = PolicyEngine(result.policy, clock=clock, **kw)  # type: ignore[arg-type]
    events: list = []
    engine.on_event(events.append)
    return engine, clock, events


def transitions(events: list) -> list[tuple[str, str, str]]:
    return [(e.previous.key, e.stage.key, e.trigger) for e in events if e.kind == "transition"]


# -- each trigger at its threshold, not before ------------------------------------------------------


def test_consecutive_failures_fire_at_the_count() -> None:
    engine, _, events = make("consecutive_failures: 3\n")
    engine.record_tool("t", ok=False)
    engine.record_tool("t", ok=False)
    engine.record_tool("t", ok=True)  # a success ends the run
    engine.record_tool("t", ok=False)
    engine.settle_model(None, tokens=10, ok=False)
    assert engine.stage == Stage.NONE
    engine.record_tool("t", ok=False)
    assert engine.stage == Stage.PAUSE
    assert transitions(events) == [("none", "level_2_pause", "consecutive_failures")]
    assert events[0].value == 3 and events[0].limit == 3


def test_a_model_call_between_failed_tools_does_not_end_the_run_of_failures() -> None:
    # The agent loop is model -> tool -> model -> tool: were a model's success a recovery, the trigger
    # could never fire in a real run.
    engine, _, _ = make("consecutive_failures: 2\n")
    engine.record_tool("t", ok=False)
    engine.settle_model(None, tokens=10, ok=True)
    assert engine.stage == Stage.NONE
    engine.record_tool("t", ok=False)
    assert engine.stage == Stage.PAUSE


def test_error_rate_fires_at_the_fraction_once_enough_calls_ran() -> None:
    engine, _, _ = make("error_rate_threshold: 0.25\n", error_window=20, error_min_calls=8)
    engine.record_tool("t", ok=False)
    engine.record_tool("t", ok=False)  # 100% of 2 calls: too few to judge
    for _ in range(6):
        engine.record_tool("t", ok=True)
    assert engine.stage == Stage.PAUSE  # 2 of 8 = 0.25 reached with the 8th call
    engine2, _, _ = make("error_rate_threshold: 0.25\n", error_window=20, error_min_calls=8)
    engine2.record_tool("t", ok=False)
    for _ in range(7):
        engine2.record_tool("t", ok=True)
    assert engine2.stage == Stage.NONE and engine2.measured()["error_rate_threshold"] == 0.125


def test_api_calls_per_minute_fire_above_the_ceiling_in_a_sliding_minute() -> None:
    engine, clock, _ = make("api_calls_per_minute: 5\n")
    for _ in range(5):
        engine.record_tool("t")
        clock.advance(10)
    assert engine.stage == Stage.NONE  # 5 in the minute: at the ceiling, allowed
    clock.advance(15)  # the first call leaves the window
    engine.record_tool("t")
    assert engine.stage == Stage.NONE
    engine.record_tool("t")
    assert engine.stage == Stage.THROTTLE


def test_tokens_per_minute_fire_on_reported_tokens() -> None:
    engine, clock, events = make("tokens_per_minute: 1000\n")
    engine.settle_model(None, input_tokens=400, output_tokens=600)
    assert engine.stage == Stage.NONE
    clock.advance(61)
    engine.settle_model(None, tokens=1000)
    assert engine.stage == Stage.NONE
    engine.settle_model(None, tokens=1)
    assert transitions(events) == [("none", "level_1_throttle", "tokens_per_minute")]


def test_runtime_limit_fires_at_the_minute_by_the_timer() -> None:
    engine, clock, events = make("runtime_limit_minutes: 2\n")
    assert engine.next_deadline() == clock.now + 120
    clock.advance(119.9)
    engine.tick()
    assert engine.stage == Stage.NONE
    clock.advance(0.1)
    engine.tick()
    assert engine.stage == Stage.SHUTDOWN and events[-1].save_state
    assert engine.admit_tool("t").verdict == "refuse" and engine.admit_model().verdict == "refuse"


def test_session_cost_fires_at_the_limit_and_a_call_that_would_cross_it_is_refused_before_it_is_sent() -> None:
    prices = PriceTable({"m": {"input": 1_000_000, "output": 1_000_000}})  # $1 a token, to count easily
    engine, _, events = make("cost_limit_usd: 10\n", prices=prices)
    assert engine.model_gate
    d = engine.admit_model("m", max_tokens=4, prompt_tokens=2)  # worst case $6
    assert d.allowed and d.ticket.worst_usd == 6
    engine.settle_model(d.ticket, input_tokens=2, output_tokens=1)  # $3 spent
    assert engine.measured()["cost_limit_usd"] == 3
    d = engine.admit_model("m", max_tokens=6, prompt_tokens=1)  # $3 + $7 = $10: exactly fits
    assert d.allowed
    refused = engine.admit_model("m", max_tokens=1)  # would pass $10 with what is in flight
    assert refused.verdict == "refuse" and refused.rule == "TRIGGERS.cost_limit_usd"
    assert engine.stage == Stage.SHUTDOWN  # spend stops at once
    assert transitions(events) == [("none", "level_3_shutdown", "cost_limit_usd")]
    assert refused.error().level == 3


def test_provider_reported_cost_counts_without_a_price_table_and_the_engine_says_so_at_start() -> None:
    engine, _, _ = make("cost_limit_usd: 1\n")
    assert any("no price table" in n for n in engine.notices)
    d = engine.admit_model("unknown-model", max_tokens=100)
    assert d.allowed  # unpriced: nothing to reserve, but spend must still be below the limit
    engine.settle_model(d.ticket, tokens=100, cost_usd=0.6)
    assert engine.stage == Stage.NONE
    engine.settle_model(engine.admit_model("unknown-model").ticket, tokens=100, cost_usd=0.4)
    assert engine.stage == Stage.SHUTDOWN  # $1.00 reached
    strict, _, _ = make("cost_limit_usd: 1\n", unpriced="refuse")
    assert strict.admit_model("unknown-model").rule == "prices"


# -- the ladder -------------------------------------------------------------------------------------


def test_escalation_walks_throttle_pause_shutdown_on_timeouts() -> None:
    engine, clock, events = make("api_calls_per_minute: 2\n")
    for _ in range(3):
        engine.record_tool("t")
    assert engine.stage == Stage.THROTTLE
    assert engine.next_deadline() == pytest.approx(clock.now + 60)
    clock.advance(59)
    engine.tick()
    assert engine.stage == Stage.THROTTLE
    clock.advance(1)
    engine.tick()
    assert engine.stage == Stage.PAUSE
    wait = engine.admit_tool("t")
    assert wait.verdict == "wait" and 0 < wait.delay <= 1
    assert engine.admit_model().verdict == "wait"
    clock.advance(120)
    assert engine.admit_tool("t").verdict == "refuse"  # the pause's timeout is noticed by a caller, too
    assert transitions(events) == [
        ("none", "level_1_throttle", "api_calls_per_minute"),
        ("level_1_throttle", "level_2_pause", "timeout_minutes"),
        ("level_2_pause", "level_3_shutdown", "timeout_minutes"),
    ]
    assert [e.action for e in events] == ["reduce_rate", "pause_and_notify", "full_stop"]


def test_a_trigger_still_breached_at_its_level_escalates_at_once() -> None:
    engine, _clock, events = make("api_calls_per_minute: 2\n")
    for _ in range(3):
        engine.record_tool("t")
    assert engine.stage == Stage.THROTTLE
    engine.record_tool("t")
    engine.record_tool("t")  # measured afresh from the throttle: 2 calls, at the ceiling
    assert engine.stage == Stage.THROTTLE
    engine.record_tool("t")
    assert engine.stage == Stage.PAUSE
    assert transitions(events)[-1] == ("level_1_throttle", "level_2_pause", "api_calls_per_minute")


def test_a_more_severe_trigger_jumps_the_ladder() -> None:
    engine, _, _ = make("api_calls_per_minute: 1\nconsecutive_failures: 2\n")
    engine.record_tool("t")
    engine.record_tool("t", ok=False)
    assert engine.stage == Stage.THROTTLE
    engine.record_tool("t", ok=False)
    assert engine.stage == Stage.PAUSE


def test_throttle_spaces_calls_to_half_the_rate() -> None:
    engine, clock, _ = make("api_calls_per_minute: 10\n")
    for _ in range(11):
        engine.record_tool("t")
        clock.advance(1)
    assert engine.stage == Stage.THROTTLE  # 11 calls in the last minute
    delays = [engine.admit_tool("t").delay for _ in range(3)]
    interval = 120 / 11  # half of 11 a minute
    assert delays == pytest.approx([0, interval, 2 * interval])
    assert engine.admit_model().delay == pytest.approx(3 * interval)


def test_operator_resume_and_escalate() -> None:
    engine, _clock, events = make("consecutive_failures: 1\n")
    engine.record_tool("t", ok=False)
    assert engine.stage == Stage.PAUSE and engine.tool_gate and engine.model_gate
    assert engine.resume("ops@example.com", "looked at it")
    assert engine.stage == Stage.NONE and not engine.model_gate
    assert engine.admit_tool("t").allowed
    assert events[-1].action == "resume" and events[-1].by == "ops@example.com"
    assert engine.escalate("ops@example.com")
    assert engine.stage == Stage.THROTTLE
    assert engine.escalate("ops@example.com") and engine.escalate("ops@example.com")
    assert engine.stage == Stage.SHUTDOWN and not engine.escalate("ops@example.com")
    assert engine.resume("ops@example.com")  # allow_restart: true


def test_allow_restart_false_needs_an_authority() -> None:
    engine, _, _ = make("consecutive_failures: 1\n", restart="false")
    engine.escalate("a@example.com")
    engine.escalate("a@example.com")
    engine.escalate("a@example.com")
    assert engine.stage == Stage.SHUTDOWN
    with pytest.raises(NotAuthorised):
        engine.resume("operator@example.com")
    assert engine.stage == Stage.SHUTDOWN
    assert engine.resume("authority@example.com", authority=True)


@pytest.mark.parametrize(
    ("trigger", "feed"),
    [
        ("consecutive_failures: 1\n", lambda e, c: e.record_tool("t", ok=False)),
        ("api_calls_per_minute: 1\n", lambda e, c: [e.record_tool("t"), e.record_tool("t")]),
        ("tokens_per_minute: 10\n", lambda e, c: e.settle_model(None, tokens=11)),
        ("runtime_limit_minutes: 1\n", lambda e, c: [c.advance(60), e.tick()]),
    ],
)
def test_a_file_without_escalation_halts_on_every_trigger(trigger: str, feed) -> None:
    engine, clock, events = make(trigger, ladder=False)
    feed(engine, clock)
    assert engine.stage == Stage.SHUTDOWN
    assert events[-1].action == "full_stop" and events[-1].save_state


def test_a_paused_agent_does_not_escalate_on_calls_that_were_in_flight() -> None:
    engine, _, _ = make("consecutive_failures: 2\n")
    engine.record_tool("t", ok=False)
    engine.record_tool("t", ok=False)
    assert engine.stage == Stage.PAUSE
    for _ in range(5):
        engine.record_tool("t", ok=False)
    assert engine.stage == Stage.PAUSE


def test_gates_are_precomputed_flags() -> None:
    engine, _, _ = make("consecutive_failures: 2\n")
    assert engine.tool_gate is False and engine.model_gate is False  # nothing near: one attribute read
    engine.escalate("ops")
    assert engine.tool_gate is True and engine.model_gate is True


def test_a_decision_error_fails_closed_and_observation_never_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A state file is a protected file: every call's arguments are looked at for it.
    engine, _, _ = make("consecutive_failures: 2\n", state_file=tmp_path / "daily.json")
    assert engine.tools_clear and engine.admit_tool("t", {"q": "x"}).verdict == "allow"

    def broken(*a: object, **k: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.paths, "_mentions", broken)  # the lock-free look at nested arguments
    assert not engine.quick_tool({"q": ["x"]})  # the Guard's quick yes is a no: it asks admit_tool
    monkeypatch.setattr(engine.paths, "scan", broken)  # which scans them, and fails
    assert engine.admit_tool("t", {"q": ["x"]}).verdict == "refuse"
    monkeypatch.setattr(engine.paths, "_mentions", lambda args: True)
    monkeypatch.setattr(engine._ladder, "pace", broken)
    assert engine.admit_tool("t", {"q": ["x"]}).verdict == "refuse"
    monkeypatch.setattr(engine._meter, "note_tool", broken)
    engine.record_tool("t")  # logged, not raised
    engine.record_tool("t", ok=False)
    engine.settle_model(None, tokens=1)


def test_a_failing_listener_does_not_stop_enforcement() -> None:
    engine, _, _ = make("consecutive_failures: 1\n")
    engine.on_event(lambda e: 1 / 0)
    engine.record_tool("t", ok=False)
    assert engine.stage == Stage.PAUSE


# -- tokens per minute: a hard ceiling --------------------------------------------------------------


def test_the_token_ceiling_holds_calls_until_they_fit_and_refuses_one_that_never_can() -> None:
    engine, _clock, events = make("tokens_per_minute: 1000\n", default_max_tokens=300)
    first = engine.admit_model(max_tokens=600)
    assert first.allowed
    second = engine.admit_model(max_tokens=300, prompt_tokens=100)  # 600 + 400 = 1000: fits
    assert second.allowed
    held = engine.admit_model(max_tokens=100)
    assert held.verdict == "wait" and held.delay == pytest.approx(60)
    assert engine.stage == Stage.THROTTLE  # the first wait enters the trigger's level
    engine.settle_model(first.ticket, tokens=200)  # used less than reserved: room again
    again = engine.admit_model(max_tokens=100)
    assert again.allowed
    assert engine.admit_model(max_tokens=5000).verdict == "refuse"
    assert transitions(events) == [("none", "level_1_throttle", "tokens_per_minute")]


# -- hard budgets under threads ---------------------------------------------------------------------


def test_concurrent_reservations_never_overshoot_when_worst_cases_hold() -> None:
    budget = Budget("cost_limit_usd", 10.0)
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for _ in range(200):
            r = budget.reserve(0.07)
            if r is not None:
                budget.settle(r, 0.05)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.spent <= 10.0 + 1e-9 and budget.reserved == pytest.approx(0)
    assert budget.spent >= 10.0 - 0.07  # and the budget was used up


def test_concurrent_calls_overshoot_by_at_most_what_was_in_flight() -> None:
    """Unpriced calls reserve nothing: each may start while any budget is left, so the overshoot is
    bounded by the calls in flight at that moment (here at most 8, each costing 1)."""
    budget = Budget("cost_limit_usd", 5.0)
    in_flight = threading.Semaphore(8)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(20):
            with in_flight:
                r = budget.reserve(0.0)
                if r is None:
                    return
                budget.settle(r, 1.0)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 5.0 <= budget.spent <= 5.0 + 8 * 1.0 - 1


def test_the_engine_budget_under_threads_with_worst_case_reservations() -> None:
    prices = PriceTable({"m": (0, 1_000_000)})  # $1 an output token
    engine, _, _ = make("cost_limit_usd: 50\n", ladder=False, prices=prices)
    barrier = threading.Barrier(8)
    admitted = []

    def worker() -> None:
        barrier.wait()
        for _ in range(20):
            d = engine.admit_model("m", max_tokens=3)
            if not d.allowed:
                return
            admitted.append(d)
            engine.settle_model(d.ticket, model="m", output_tokens=2)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = engine.status()["budgets"]["cost_limit_usd"]
    assert status["spent"] <= 50 and status["in_flight"] == 0
    assert engine.stage == Stage.SHUTDOWN


class Chunks:
    """A stand-in for the fleet budget to come: allowance leased in chunks."""

    def __init__(self, chunk: float, total: float) -> None:
        self.chunk, self.left, self.granted, self.requests = chunk, total - chunk, chunk, 0

    def allowance(self) -> float:
        return self.granted

    def request_more(self, shortfall: float) -> float:
        self.requests += 1
        grant = min(self.left, max(self.chunk, shortfall))
        self.left -= grant
        self.granted += grant
        return self.granted


def test_a_leasing_allowance_source_plugs_into_the_budget() -> None:
    source = Chunks(2.0, 5.0)
    budget = Budget("cost_limit_daily_usd", source)
    spent = 0
    while (r := budget.reserve(1.0)) is not None:
        budget.settle(r, 1.0)
        spent += 1
    assert spent == 5 and source.requests >= 2
    assert FixedAllowance(3).request_more(10) == 3


# -- daily totals across a restart ------------------------------------------------------------------


def test_daily_totals_survive_a_restart_and_reset_the_next_day(tmp_path: Path) -> None:
    state = tmp_path / "state" / "daily.json"
    prices = PriceTable({"m": (0, 1_000_000)})
    clock = Clock()
    engine, _, _ = make("cost_limit_daily_usd: 10\n", ladder=False, prices=prices, clock=clock, state_file=state)
    for _ in range(3):
        engine.settle_model(engine.admit_model("m", max_tokens=3).ticket, model="m", output_tokens=3)
    data = json.loads(state.read_text())
    assert data["cost_usd"] == 9 and data["calls"] == 3 and data["version"] == 1
    # a new process, the same day: the day's $9 is still spent
    again, _, _ = make("cost_limit_daily_usd: 10\n", ladder=False, prices=prices, clock=clock, state_file=state)
    assert again.measured()["cost_limit_daily_usd"] == 9
    assert again.admit_model("m", max_tokens=2).verdict == "refuse"
    assert again.stage == Stage.SHUTDOWN
    # the next day starts from zero
    clock.advance(86400)
    fresh, _, _ = make("cost_limit_daily_usd: 10\n", ladder=False, prices=prices, clock=clock, state_file=state)
    assert fresh.measured()["cost_limit_daily_usd"] == 0 and fresh.admit_model("m", max_tokens=2).allowed
    assert not list(state.parent.glob(".m99-daily-*"))  # atomic writes leave no temporary file behind


def test_the_day_rolls_over_inside_a_running_engine(tmp_path: Path) -> None:
    prices = PriceTable({"m": (0, 1_000_000)})
    engine, clock, _ = make("cost_limit_daily_usd: 5\n", prices=prices, state_file=tmp_path / "d.json")
    engine.settle_model(engine.admit_model("m", max_tokens=4).ticket, model="m", output_tokens=4)
    assert not engine.admit_model("m", max_tokens=4).allowed
    engine.resume("ops")
    clock.advance(86400)
    engine.tick()
    assert engine.admit_model("m", max_tokens=4).allowed


def test_a_corrupt_state_file_is_refused_rather_than_guessed(tmp_path: Path) -> None:
    state = tmp_path / "daily.json"
    state.write_text("{not json")
    with pytest.raises(PolicyError, match="refusing to guess"):
        make("cost_limit_daily_usd: 10\n", state_file=state)
    assert DailyLedger(tmp_path / "none.json").read("2026-01-01").cost_usd == 0


def test_processes_sharing_a_state_file_add_up(tmp_path: Path) -> None:
    a, b = DailyLedger(tmp_path / "d.json"), DailyLedger(tmp_path / "d.json")
    a.add("2026-03-10", 1.5, 10, 1)
    assert b.add("2026-03-10", 2.0, 5, 1).cost_usd == 3.5


# -- the audit log ----------------------------------------------------------------------------------


def test_the_jsonl_log_has_exactly_the_configured_fields(tmp_path: Path) -> None:
    text = "# KILLSWITCH\n\n## TRIGGERS\nconsecutive_failures: 1\n\n## AUDIT\nlog_file: logs/ks.log\n"
    text += "log_fields: [timestamp, trigger_type, trigger_value, trigger_limit, action_taken, escalation_level, agent_id, operator]\n"
    (tmp_path / "KILLSWITCH.md").write_text(text)
    result = parse_text(text, source=tmp_path / "KILLSWITCH.md")
    engine = PolicyEngine(result.policy, clock=Clock(), agent_id="researcher", session_id="s-1")
    engine.record_tool("t", ok=False)
    engine.resume("ops@example.com")
    lines = [json.loads(line) for line in (tmp_path / "logs" / "ks.log").read_text().splitlines()]
    assert len(lines) == 2
    fields = [
        "timestamp",
        "trigger_type",
        "trigger_value",
        "trigger_limit",
        "action_taken",
        "escalation_level",
        "agent_id",
        "operator",
    ]
    for line in lines:
        assert list(line) == fields
    assert lines[0]["timestamp"].startswith("2023-11-14T22:13:20") and lines[0]["timestamp"].endswith("+00:00")
    assert lines[0]["trigger_type"] == "consecutive_failures" and lines[0]["trigger_value"] == 1
    assert lines[0]["action_taken"] == "full_stop" and lines[0]["escalation_level"] == "level_3_shutdown"
    assert lines[0]["agent_id"] == "researcher" and lines[0]["operator"] is None
    assert lines[1]["action_taken"] == "resume" and lines[1]["operator"] == "ops@example.com"


def test_the_log_appends_and_a_failed_write_does_not_raise(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "ks.log", ["timestamp", "trigger_type", "unknown_field"])
    assert log.write({"timestamp": 0, "trigger_type": "x", "ignored": 1})
    assert log.write({"trigger_type": "y"})
    lines = (tmp_path / "ks.log").read_text().splitlines()
    assert lines == ['{"timestamp":"1970-01-01T00:00:00.000+00:00","trigger_type":"x","unknown_field":null}',
                     '{"timestamp":null,"trigger_type":"y","unknown_field":null}']  # fmt: skip
    blocked = AuditLog(tmp_path / "ks.log" / "below-a-file", ["timestamp"])
    assert blocked.write({"timestamp": 1}) is False and blocked.failures == 1


def test_a_listener_may_act_on_the_engine() -> None:
    engine, _, events = make("consecutive_failures: 1\n")
    engine.on_event(lambda e: engine.resume("bot") if e.stage == Stage.PAUSE else None)
    engine.record_tool("t", ok=False)
    assert engine.stage == Stage.NONE and [e.action for e in events] == ["pause_and_notify", "resume"]


def test_the_price_table_remembers_its_lookups_within_a_bound() -> None:
    table = PriceTable({"gpt-*": {"input": 1.0, "output": 2.0}, "exact-model": {"input": 3.0, "output": 4.0}})
    for i in range(3000):  # model names come from the agent: the memo of them is bounded
        price = table.price(f"gpt-{i}")
        assert price is not None and price.output_per_million == 2.0
    assert len(table._found) <= 1024
    assert table.price("exact-model") == table.price("EXACT-MODEL ") != table.price("gpt-1")
    assert table.price("other") is None and table.price("other") is None


def test_an_override_suspends_a_budget_until_its_expiry_then_it_is_enforced_again() -> None:
    prices = PriceTable({"m": {"input": 1e6, "output": 1e6}})  # $1 a token
    engine, clock, events = make("cost_limit_usd: 10\n", prices=prices)
    assert not engine.override("tokens_per_minute", clock() + 60, "boss@example.com")  # not set by the file
    assert not engine.override("cost_limit_usd", clock() - 1, "boss@example.com")  # already past
    assert engine.override("cost_limit_usd", clock() + 60, "boss@example.com", "month end")
    assert engine.next_deadline() == clock() + 60
    d = engine.admit_model("m", max_tokens=20)  # worst case $20 > $10: allowed while overridden
    assert d.allowed
    engine.settle_model(d.ticket, input_tokens=0, output_tokens=12)  # $12 spent, over the limit
    assert engine.stage == Stage.NONE and engine.overrides() == {"cost_limit_usd": clock() + 60}
    clock.advance(60)
    engine.tick()  # the expiry: measured again, and $12 is past $10
    assert engine.overrides() == {} and engine.stage == Stage.SHUTDOWN
    assert transitions(events) == [("none", "level_3_shutdown", "cost_limit_usd")]
