"""The decision engine of a KILLSWITCH.md policy: fed what the adapters report, it decides whether the next
tool or model call may run, and walks the escalation ladder none → throttle → pause → shutdown.

Pure: no framework, no network, no threads of its own; time comes from an injected clock.  The only
files it touches are the day's totals (``DailyLedger``) and the audit log.  The Guard wires it:

- before a tool call:   ``if engine.tool_gate: decision = engine.admit_tool(name, args, read_only=…)``
- before a model call:  ``if engine.model_gate: decision = engine.admit_model(model, max_tokens=…, prompt_tokens=…)``
  (``decision.ticket`` goes back with the response); ``allow`` runs after ``decision.delay`` seconds
  (throttle), ``wait`` asks again after ``engine.wait_for_change(decision.delay)``, ``refuse`` raises
  ``decision.error()``.
- after a call:         ``engine.record_tool(name, ok=…)`` / ``engine.settle_model(ticket, …)``
  (``engine.release_model(ticket)`` for a call that was never sent)
- a timer:              ``engine.tick()`` at ``engine.next_deadline()`` (level timeouts, runtime limit)
- ``engine.on_event(listener)``: every transition (after the gates already enforce it, so it holds
  with the control plane out of reach) and every refusal; the Guard freezes at level 3 (evidence first
  when ``save_state``) and reports to the control plane from there.

``tool_gate`` and ``model_gate`` are attributes the engine sets when its state changes: with no level
in force they are False unless a rule must see every call (FORBIDDEN paths or actions for tools,
a cost or token budget for models).  Observation (``record_*``, ``settle_model``, ``tick``) never
raises into the agent; an error inside a decision refuses (fail closed).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from .audit_log import AuditLog
from .budget import AllowanceSource, Budget, WindowCeiling
from .decision import ALLOW, Decision, ModelTicket, PolicyEvent, local_day, number, record_of
from .forbidden import ActionMap, PathGuard
from .ladder import Ladder
from .meter import Meter
from .model import Policy, Stage
from .operator_acts import OperatorActs
from .overrides import Overrides
from .prices import PriceTable
from .spend import Spend

__all__ = ["Decision", "ModelTicket", "PolicyEngine", "PolicyEvent", "local_day"]

logger = logging.getLogger("m99.policy")

Clock = Callable[[], float]

# The triggers ``PolicyEngine._clear_of_limits`` bounds (the meter's, the budgets', the runtime).
_CLEAR_CHECKS = frozenset(
    {
        "cost_limit_usd",
        "cost_limit_daily_usd",
        "tokens_per_minute",
        "api_calls_per_minute",
        "error_rate_threshold",
        "consecutive_failures",
        "runtime_limit_minutes",
    }
)


class PolicyEngine(OperatorActs):
    """Enforces one ``Policy`` for one process (every framework and framework agent in it)."""

    def __init__(
        self,
        policy: Policy,
        *,
        clock: Clock = time.time,
        state_file: str | Path | None = None,
        prices: PriceTable | None = None,
        session_allowance: AllowanceSource | None = None,
        daily_allowance: AllowanceSource | None = None,
        action_tools: Mapping[str, Any] | None = None,
        audit: AuditLog | Literal["policy"] | None = "policy",
        session_id: str = "",
        agent_id: str = "",
        default_max_tokens: int = 4096,
        error_window: int = 20,
        error_min_calls: int = 10,
        unpriced: Literal["allow", "refuse"] = "allow",
        day: Callable[[float], str] = local_day,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._day = day
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._dispatch = threading.RLock()  # a listener may act on the engine (resume) and so flush again
        self._pending: collections.deque[PolicyEvent] = collections.deque()
        self._listeners: list[Callable[[PolicyEvent], object]] = []
        self.session_id, self.agent_id = session_id, agent_id
        self.default_max_tokens = int(default_max_tokens)
        now = clock()
        self.spend = Spend(
            policy.triggers,
            now,
            prices=prices,
            state_file=state_file,
            session_allowance=session_allowance,
            daily_allowance=daily_allowance,
            unpriced=unpriced,
            day=day,
        )
        self.notices = self.spend.notices  # said at start (and once per unpriced model), for the Guard to log
        t = policy.triggers
        self._limits = t.configured()  # asked after every call: computed once
        # Every trigger set is one ``_clear_of_limits`` knows: a model call's end may then skip evaluating.
        self._limits_known = set(self._limits) <= _CLEAR_CHECKS
        # The budgets, each with the limit ``_clear_of_limits`` compares its spend to.
        self._budget_limits = tuple((b, self._limits[b.name]) for b in self.spend.budgets() if b.name in self._limits)
        self._limits_known &= len(self._budget_limits) == len(self.spend.budgets())
        self._ceiling = WindowCeiling(t.tokens_per_minute) if t.tokens_per_minute else None
        self._triggers = t
        # rules
        f = policy.forbidden
        extra = {k: tuple(v) for k, v in f.action_tools.items()}
        for key, value in (action_tools or {}).items():
            extra[key] = (*extra.get(key, ()), *((value,) if isinstance(value, str) else tuple(value)))
        self.actions = ActionMap(f.actions, extra)
        self.audit = (
            AuditLog(policy.log_path, policy.audit.log_fields)
            if audit == "policy" and policy.log_path
            else (audit if isinstance(audit, AuditLog) else None)
        )
        protected: list[Path] = []
        if policy.source is not None and not policy.override.allow_agent_modification:
            protected.append(policy.source)
        if self.audit is not None:
            protected.append(self.audit.path)
        if state_file is not None:
            protected.append(Path(state_file))
        self.paths = PathGuard(f.files, f.directories, root=policy.root, protected=protected)
        self._meter = Meter(now, error_window=error_window, error_min_calls=error_min_calls)
        self._run_started = now
        self._ladder = Ladder(policy.escalation, now)
        # OVERRIDE: triggers an authority suspended, until when (on the clock); see ``override``.
        self._overrides = Overrides(clock)
        self.tool_gate = False
        self.model_gate = False
        self.tools_clear = False
        self._update_gates()

    # -- hooks --------------------------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        return self._ladder.stage

    def on_event(self, listener: Callable[[PolicyEvent], object]) -> None:
        self._listeners.append(listener)

    def wait_for_change(self, timeout: float) -> None:
        """Block (real time) until the ladder moves or ``timeout`` seconds pass."""
        with self._changed:
            self._changed.wait(max(0.0, min(timeout, 60.0)))

    def _update_gates(self) -> None:
        stage = self._ladder.stage
        # Nothing in force and no FORBIDDEN rule: a tool call only has to not name a protected file.
        self.tools_clear = stage == Stage.NONE and not self.actions and not self.paths.has_rules
        self.tool_gate = stage != Stage.NONE or bool(self.paths) or bool(self.actions)
        self.model_gate = stage != Stage.NONE or bool(self.spend.active or self._ceiling)

    def _flush(self) -> None:
        """Deliver pending events, in order, outside the engine lock (enforcement already holds)."""
        if not self._pending:
            return
        with self._dispatch:
            while self._pending:
                event = self._pending.popleft()
                if self.audit is not None:
                    self.audit.write(event.record)
                for listener in tuple(self._listeners):
                    try:
                        listener(event)
                    except Exception:  # observation never stops enforcement
                        logger.exception("m99: policy listener %r failed", listener)

    # -- decisions before a call ----------------------------------------------------------------------

    def quick_tool(self, args: Any) -> bool:
        """True when a tool call with ``args`` may run with nothing to decide: nothing in force, no
        FORBIDDEN rule, and no argument names a protected file (the Guard asks it before every tool
        call).  False: ask ``admit_tool``.  Never raises."""
        return self.tools_clear and self.paths.clear_fast(args)

    def admit_tool(self, name: str, args: Any = None, *, read_only: bool = False) -> Decision:
        """May tool ``name`` run with ``args`` now?  ``read_only`` tools may name the protected files."""
        if self.tools_clear and self.paths.clear_fast(args):
            return ALLOW  # nothing in force and no argument names a protected file: no lock needed
        try:
            with self._lock:
                return self._admit_tool(name, args, read_only)
        except Exception as exc:
            logger.exception("m99: policy engine error on tool %r", name)
            return Decision("refuse", reason=f"policy engine error ({type(exc).__name__}): refused", rule="engine")
        finally:
            self._flush()

    def _admit_tool(self, name: str, args: Any, read_only: bool) -> Decision:
        now = self._clock()
        self._due(now)
        if self._ladder.stage == Stage.SHUTDOWN:
            return self._ladder.stopped()
        action = self.actions.match(name) if self.actions else None
        if action is not None:
            return self._refuse(
                now,
                "forbidden_action",
                f"tool {name!r} is the forbidden action {action!r}",
                "FORBIDDEN.actions",
                tool=True,
            )
        hit = self.paths.scan(args) if self.paths else None
        if hit is not None and not (hit.kind == "protected" and read_only and hit.pattern != "(arguments)"):
            rule = {"files": "FORBIDDEN.files", "directories": "FORBIDDEN.directories"}.get(hit.kind, "")
            if hit.kind == "protected":
                rule = "OVERRIDE.allow_agent_modification" if self._is_policy(hit.pattern) else "M99 records"
            what = f"names {hit.path}" if hit.path else f"has {hit.argument}"
            return self._refuse(
                now, f"forbidden_{hit.kind}", f"tool {name!r} {what} ({hit.kind}: {hit.pattern})", rule, tool=True
            )
        if self._ladder.stage == Stage.PAUSE:
            return self._ladder.paused(now)
        return self._ladder.pace(now)

    def _is_policy(self, pattern: str) -> bool:
        return self.policy.source is not None and pattern == str(self.policy.source)

    def admit_model(
        self, model: str | None = None, *, max_tokens: int | None = None, prompt_tokens: int = 0
    ) -> Decision:
        """May a model call run now?  ``max_tokens`` (else ``default_max_tokens``) and the prompt's
        estimated tokens make its worst case, reserved against the budgets until it is settled."""
        admitted = self.reserve_model(model, max_tokens, prompt_tokens)
        if isinstance(admitted, ModelTicket):
            return Decision("allow", stage=self._ladder.stage, ticket=admitted)
        return admitted

    def reserve_model(
        self, model: str | None = None, max_tokens: int | None = None, prompt_tokens: int = 0
    ) -> ModelTicket | Decision:
        """``admit_model`` for the Guard's hot path: the call's ticket itself when it may run at once
        (no Decision is built for the usual answer), else the Decision (a throttle's delay, a wait, a
        refusal).  Never raises: an error inside refuses (fail closed)."""
        try:
            out_tokens = int(max_tokens) if max_tokens and max_tokens > 0 else self.default_max_tokens
            prompt_tokens = max(0, int(prompt_tokens))
            worst_tokens = prompt_tokens + out_tokens
            ticket = ModelTicket(model, None, worst_tokens)
            ladder = self._ladder
            with self._lock:
                now = self._clock()
                if ladder.deadline is not None:
                    self._due(now)
                if ladder.stage >= Stage.PAUSE:
                    held = ladder.held(now)
                    if held is not None:
                        return held
                ceiling = self._ceiling
                if ceiling is not None and not (self._overrides.until and self._overrides.active("tokens_per_minute")):
                    slot = ceiling.reserve(now, worst_tokens) if worst_tokens <= ceiling.limit else None
                    if slot is not None:
                        ticket.slot = slot  # the usual case: it fits under the ceiling
                    else:
                        held = self._hold_for_tokens(now, ticket)
                        if held is not None:
                            return held
                if self.spend.daily is not None:  # a new calendar day restarts the daily budget
                    self.spend.rollover(now)
            if self.spend.active:
                refused = self.spend.reserve(ticket, prompt_tokens, out_tokens)
                if refused is not None and not (refused[1] is not None and self._overrides.active(refused[1].name)):
                    return self._refuse_cost(ticket, *refused)
            if ladder.stage is not Stage.THROTTLE:
                return ticket
            with self._lock:
                decision = self._ladder.pace(self._clock())
            return Decision("allow", delay=decision.delay, stage=decision.stage, ticket=ticket)
        except Exception as exc:
            logger.exception("m99: policy engine error on a model call")
            return Decision("refuse", reason=f"policy engine error ({type(exc).__name__}): refused", rule="engine")
        finally:
            if self._pending:
                self._flush()

    def _hold_for_tokens(self, now: float, ticket: ModelTicket) -> Decision | None:
        """Reserve the call's worst case under the tokens-per-minute ceiling; a Decision when it does not fit."""
        ceiling, worst = self._ceiling, ticket.worst_tokens
        assert ceiling is not None
        rule = "TRIGGERS.tokens_per_minute"
        if worst > ceiling.limit:
            why = f"a model call of up to {worst} tokens is over the ceiling of {int(ceiling.limit)} tokens per minute"
            return self._refuse(now, "tokens_per_minute", why, rule, tool=False)
        ticket.slot = ceiling.reserve(now, worst)
        if ticket.slot is not None:
            return None
        # The first call the ceiling holds back breaches the trigger; while throttled, only what was
        # placed since the throttle began counts as "still breached".
        fresh = ceiling.used_since(now, self._meter.since) + worst
        if self._ladder.stage == Stage.NONE:
            self._breach(now, "tokens_per_minute", ceiling.used(now) + worst, ceiling.limit)
        elif fresh > ceiling.limit:
            self._breach(now, "tokens_per_minute", fresh, ceiling.limit)
        held = self._ladder.held(now)
        if held is not None:
            return held
        delay = ceiling.retry_after(now, worst)
        return Decision(
            "wait", delay=delay, stage=self._ladder.stage, reason="tokens per minute at the ceiling", rule=rule
        )

    def _refuse_cost(self, ticket: ModelTicket, why: str, budget: Budget | None, amount: float) -> Decision:
        self.release_model(ticket)
        with self._lock:
            now = self._clock()
            if budget is None:
                return self._refuse(now, "unpriced", f"no price for model {ticket.model!r}", "prices", tool=False)
            reason = (
                f"this model call (worst case ${amount:.4f}) would pass {budget.name} ${budget.allowance:.2f} "
                f"(spent ${budget.spent:.4f}, ${budget.reserved:.4f} in flight)"
            )
            fleet = self.spend.fleet
            if fleet is None or budget is not self.spend.daily:
                self._breach(now, budget.name, budget.spent + budget.reserved + amount, budget.allowance)
            elif fleet.exhausted:  # the control plane said the fleet's day is used up: the limit is reached
                self._breach(now, budget.name, fleet.fleet_used + amount, fleet.limit)
                reason += f": what the fleet budget ({fleet.scope}, ${fleet.limit:.2f} a UTC day) granted this agent"
            else:  # no lease (the control plane out of reach, a call larger than a lease): refused, no breach
                reason += (
                    f": what the fleet budget ({fleet.scope}, ${fleet.limit:.2f} a UTC day) granted this agent"
                    + (f"; no lease: {fleet.last_error}" if fleet.last_error else "; a lease is at most 1/4 of it")
                )
            return self._refuse(now, budget.name, reason, f"TRIGGERS.{budget.name}", tool=False)

    def _refuse(self, now: float, trigger: str, reason: str, rule: str, *, tool: bool) -> Decision:
        stage = self._ladder.stage
        self._emit(
            "refusal",
            now,
            stage,
            stage,
            trigger,
            None,
            None,
            "refuse_tool_call" if tool else "refuse_model_call",
            reason,
            rule,
        )
        return Decision("refuse", reason=reason, rule=rule, stage=stage)

    # -- what happened after a call -----------------------------------------------------------------

    def record_tool(self, name: str, ok: bool = True) -> None:
        """A tool call ended (``ok`` False: with an error).  The usual one, a success with nothing in
        force, is noted without the lock (``Meter.note_tool``) and, far from every limit, ends there."""
        try:
            now = self._clock()
            if ok and self._ladder.stage is Stage.NONE:
                if not self._meter.note_tool(now, True, self._triggers):
                    return  # nothing to evaluate, nothing to flush
                with self._lock:
                    self._evaluate(now)
            else:
                with self._lock:
                    self._meter.note_tool(now, ok, self._triggers)
                    self._evaluate(now)
        except Exception:
            logger.exception("m99: policy engine failed to record tool %r", name)
        self._flush()

    def settle_model(
        self,
        ticket: ModelTicket | None,
        *,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        tokens: int | None = None,
        cost_usd: float | None = None,
        ok: bool = True,
    ) -> None:
        """A model call came back: its tokens and cost (the provider's, else the price table's) are
        counted and its reservations freed.  ``ticket`` None: a call the gate did not see."""
        try:
            if ticket is not None:
                if ticket.done:
                    return
                ticket.done = True
                model = model or ticket.model
            used = int(tokens) if tokens is not None else max(0, int(input_tokens)) + max(0, int(output_tokens))
            self.spend.settle(ticket, model, input_tokens, output_tokens, used, cost_usd, tokens is None, ok)
            with self._lock:
                now = self._clock()
                if self._ceiling is not None:
                    if ticket is not None and ticket.slot is not None:
                        self._ceiling.settle(ticket.slot, used)
                    else:
                        self._ceiling.add(now, used)
                self._meter.note(now, ok, used, breaks_run=False)
                if not self._clear_of_limits(now):
                    self._evaluate(now)
        except Exception:
            logger.exception("m99: policy engine failed to settle a model call")
        if self._pending:
            self._flush()

    def _clear_of_limits(self, now: float) -> bool:
        """A cheap and conservative ``not self._breached(self._measure(now))``, under the lock: True
        only when no trigger can be at its limit, so ``_evaluate`` would find nothing to do (overrides
        only take breaches away, so they need not be asked)."""
        if not self._limits_known or self._meter.may_breach(self._triggers):
            return False
        for budget, limit in self._budget_limits:
            spent = budget.spent
            if spent >= limit and spent > 0:
                return False
        runtime = self._triggers.runtime_limit_minutes
        return not (runtime and (now - self._run_started) / 60.0 >= runtime)

    def release_model(self, ticket: ModelTicket) -> None:
        """The admitted call was never sent: give its reservations back."""
        if ticket.done:
            return
        ticket.done = True
        self.spend.release(ticket)
        if ticket.slot is not None and self._ceiling is not None:
            with self._lock:
                self._ceiling.settle(ticket.slot, 0)

    def tick(self) -> None:
        """Time passed: level timeouts, the runtime limit, a new calendar day.  The Guard's timer calls it."""
        try:
            with self._lock:
                now = self._clock()
                self._overrides.expire(now)
                self._due(now)
                self.spend.rollover(now)
                self._evaluate(now)
        except Exception:
            logger.exception("m99: policy engine tick failed")
        self._flush()

    def next_deadline(self) -> float | None:
        """When ``tick`` has something to do next (a level timeout, the runtime limit), on the clock."""
        limit = self.policy.triggers.runtime_limit_minutes
        times = [t for t in (self._ladder.deadline, self._run_started + limit * 60 if limit else None) if t is not None]
        times.extend(self._overrides.deadlines())  # at an override's expiry its trigger is measured again
        return min(times) if times else None

    # -- measuring ----------------------------------------------------------------------------------

    def measured(self, now: float | None = None) -> dict[str, float]:
        """The value of every configured trigger now, as the engine compares it to the limit."""
        with self._lock:
            return self._measure(self._clock() if now is None else now)

    def _measure(self, now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        self.spend.measure(out)
        out.update(self._meter.measure(now, self.policy.triggers))
        limit = self.policy.triggers.runtime_limit_minutes
        if limit:
            out["runtime_limit_minutes"] = (now - self._run_started) / 60.0
        return out

    def _breached(self, measured: dict[str, float]) -> list[tuple[Stage, str, float, float]]:
        limits = self._limits
        out = []
        overrides = self._overrides
        for key, value in measured.items():
            if overrides and overrides.active(key):
                continue
            limit = limits[key]
            if key in ("tokens_per_minute", "api_calls_per_minute"):
                hit = value > limit  # a ceiling: reaching it is allowed
            elif key in ("cost_limit_usd", "cost_limit_daily_usd"):
                hit = value >= limit and value > 0
            else:
                hit = value >= limit
            if hit:
                out.append((self.policy.escalation.entry(key), key, value, limit))
        return out

    def _evaluate(self, now: float) -> None:
        if self._ladder.stage == Stage.SHUTDOWN:
            return
        breached = self._breached(self._measure(now))
        if breached:
            _, key, value, limit = max(breached, key=lambda b: b[0])
            self._breach(now, key, value, limit)

    # -- the ladder ---------------------------------------------------------------------------------

    def _breach(self, now: float, trigger: str, value: float, limit: float) -> None:
        target = self._ladder.target(trigger)
        if target is not None:
            self._move(now, target, trigger, value, limit, f"{trigger} {number(value)} over {number(limit)}")

    def _due(self, now: float) -> None:
        due = self._ladder.timeout(now)
        if due is not None:
            target, minutes, limit, why = due
            self._move(now, target, "timeout_minutes", minutes, limit, why)

    def _move(self, now: float, target: Stage, trigger: str, value: float | None, limit: float | None,
              reason: str, *, by: str = "", action: str = "") -> None:  # fmt: skip
        old = self._ladder.stage
        measured = self._measure(now)  # for the record, before measuring starts afresh
        level = self._ladder.move(now, target, reason, self._meter.rate(now))
        # Measure the breached triggers afresh from here, so that "still breached" at the new level is
        # measured there; the others go on counting (two failures in a row stay two).  A resume, after
        # a human looked, starts every measure again.
        keys = None if target == Stage.NONE else {k for _, k, _, _ in self._breached(measured)} | {trigger}
        self._meter.restart(now, keys)
        if target == Stage.NONE:
            self._run_started = now
        self._update_gates()
        self._changed.notify_all()
        action = action or (level.action if level is not None else "resume")
        rule = f"TRIGGERS.{trigger}" if trigger in self._limits else trigger
        self._emit("transition", now, target, old, trigger, value, limit, action, reason, rule, by, measured)
        logger.warning("m99: policy %s -> %s: %s", old.key, target.key, reason)

    def _emit(self, kind: Literal["transition", "refusal"], now: float, stage: Stage, previous: Stage, trigger: str,
              value: float | None, limit: float | None, action: str, reason: str, rule: str, by: str = "",
              measured: dict[str, float] | None = None) -> None:  # fmt: skip
        level = self.policy.escalation.level(stage) if stage != Stage.NONE else None
        event = PolicyEvent(
            kind, now, stage, previous, trigger, value, limit, action, reason, rule, by,
            save_state=bool(level and stage == Stage.SHUTDOWN and level.save_state),
            allow_restart=self.policy.escalation.level(Stage.SHUTDOWN).allow_restart,
            notify=bool(level and level.notify),
            channels=level.channels if level else (),
        )  # fmt: skip
        measured = self._measure(now) if measured is None else measured
        record = record_of(event, measured, self._meter.rate(now), self.session_id, self.agent_id)
        self._pending.append(dataclasses.replace(event, record=record))
