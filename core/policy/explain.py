"""What M99 does with each key of a policy: enforced (and how), not enforced (and whose business it is),
or information only; and which escalation level each trigger enters.  ``m99 policy check`` prints it.

No key may look enforced when it is not: every key the parser knows has an entry here (a test holds
that), and one that M99 does not act on says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .decision import number
from .forbidden import ActionMap
from .model import LEVEL_KEYS, TRIGGER_KEYS, Policy, Stage
from .schema import KNOWN_KEYS

__all__ = ["Entry", "Status", "TriggerPath", "explain", "trigger_paths"]

Status = Literal["enforced", "not enforced", "not yet enforced", "information", "off"]


@dataclass(frozen=True)
class Entry:
    key: str  # SECTION.key
    value: Any  # the effective value (a default when the file does not set it)
    status: Status
    how: str
    line: int | None  # None when the file does not set it (a default)


@dataclass(frozen=True)
class TriggerPath:
    trigger: str
    limit: float | None
    enters: Stage
    then: str  # what follows at that level


def _level_name(stage: Stage, policy: Policy) -> str:
    return f"{stage.key} ({policy.escalation.level(stage).action})"


def trigger_paths(policy: Policy) -> list[TriggerPath]:
    """For each trigger of the spec: its limit (None when unset), the level it enters, what comes next."""
    esc = policy.escalation
    out: list[TriggerPath] = []
    configured = policy.triggers.configured()
    for key in TRIGGER_KEYS:
        stage = esc.entry(key)
        steps: list[str] = []
        current = stage
        while current != Stage.SHUTDOWN:
            level = esc.level(current)
            nxt = esc.next_after(current)
            # At a throttle calls go on, so a trigger can be breached again; at a pause nothing new runs.
            when = ["still breached"] if current == Stage.THROTTLE else []
            if level.timeout_minutes:
                when.append(f"after {number(level.timeout_minutes)} min")
            steps.append(f"{' or '.join(when) or 'when an operator escalates'}: {nxt.key}")
            current = nxt
        if stage == Stage.SHUTDOWN:
            steps.append(
                "stays until an operator resumes"
                if esc.level(Stage.SHUTDOWN).allow_restart
                else "stays until an authority lifts it"
            )
        out.append(TriggerPath(key, configured.get(key), stage, "; ".join(steps)))
    return out


_TRIGGER_HOW = {
    "cost_limit_usd": (
        "hard budget for this process's session: before each model call M99 reserves its worst case "
        "(prompt + max_tokens at the model's price) and refuses the call if the spend plus the calls in "
        "flight would pass the limit; the response settles the actual cost (the provider's, else the "
        "price table's). Reaching it enters {enters}."
    ),
    "cost_limit_daily_usd": (
        "the same hard budget per calendar day (local time), kept in a state file across restarts and "
        "shared by the processes that use the same file (m99.init keeps one per agent name in the data "
        "directory); for a class or every agent, see cost_limit_daily_scope. Reaching it enters {enters}."
    ),
    "tokens_per_minute": (
        "ceiling on tokens (prompt + completion) in any sliding minute, reserved at each call's worst "
        "case: a call that would pass it waits until it fits, and the first wait enters {enters}; a "
        "call whose worst case alone is over the ceiling is refused."
    ),
    "api_calls_per_minute": (
        "tool and model calls completed in a sliding minute, every framework of the process together; "
        "above it enters {enters} (measured after the calls: concurrent calls may pass it by those in "
        "flight)."
    ),
    "error_rate_threshold": (
        "share of failed tool and model calls among the last 20, once 10 have run; at or above it enters {enters}."
    ),
    "runtime_limit_minutes": (
        "time since the Guard started (or an operator last resumed), checked at every call and by the "
        "Guard's timer; reaching it enters {enters}."
    ),
    "consecutive_failures": "failed tool or model calls in a row; reaching it enters {enters}.",
}
_COST_NOTE = (
    " Needs each call's cost: the provider's, or a price table (prices= or $M99_PRICES); without "
    "either, the Guard says so at start."
)


def _entry(policy: Policy, key: str, value: Any, status: Status, how: str) -> Entry:
    return Entry(key, value, status, how, policy.line(key))


def _triggers(policy: Policy) -> list[Entry]:
    out = []
    paths = {p.trigger: p for p in trigger_paths(policy)}
    for key in TRIGGER_KEYS:
        value = getattr(policy.triggers, key)
        full = f"TRIGGERS.{key}"
        if value is None:
            out.append(_entry(policy, full, None, "off", "not set: no limit."))
            continue
        how = _TRIGGER_HOW[key].format(enters=_level_name(paths[key].enters, policy))
        if key == "cost_limit_daily_usd" and policy.triggers.fleet:
            how = (
                f"the same hard budget per UTC day, one for the whole {policy.triggers.daily_scope} scope: see "
                f"cost_limit_daily_scope. Reaching it enters {_level_name(paths[key].enters, policy)}."
            )
        if key.startswith("cost_"):
            how += _COST_NOTE
        out.append(_entry(policy, full, value, "enforced", how))
    if policy.triggers.cost_limit_daily_usd is not None or "TRIGGERS.cost_limit_daily_scope" in policy.lines:
        out.extend(_fleet(policy))
    return out


def _fleet(policy: Policy) -> list[Entry]:
    t = policy.triggers
    scope_key, chunk_key = "TRIGGERS.cost_limit_daily_scope", "TRIGGERS.cost_limit_daily_chunk_usd"
    if not t.fleet:
        how = (
            "M99's extension; agent (the default): cost_limit_daily_usd is this agent's own day."
            if t.cost_limit_daily_usd is not None
            else "no effect without cost_limit_daily_usd."
        )
        return [_entry(policy, scope_key, t.daily_scope, "enforced" if t.cost_limit_daily_usd else "off", how)]
    whose = "every agent of the agent's class (its registered kind)" if t.daily_scope == "class" else "every agent"
    how = (
        f"M99's extension: cost_limit_daily_usd is one budget per UTC day for {whose} that declares the same "
        "scope, kept by the control plane (the smallest limit declared that day binds); only an agent enrolled "
        "with a token (M99_ENROL_TOKEN) may lease it. Each process leases it in chunks (signed requests, at "
        "most a quarter of the limit each) and spends only within its grants, so the fleet's granted total "
        "never passes the limit; its spend passes it only by "
        "what calls cost beyond the worst case they reserved (nothing with a price for every model; an "
        "unpriced call reserves 0), and a process never holds more than one chunk plus one call unspent. "
        "A process that "
        "cannot reach the control plane gets no new chunk (it spends what it holds, then refuses). A closing "
        "process returns what it did not spend; a dead one's unspent chunk stays granted for the day (its "
        "restart under the same name takes it up again). See `m99 policy budgets`."
    )
    out = [_entry(policy, scope_key, t.daily_scope, "enforced", how)]
    chunk_how = (
        f"each lease asks for {number(t.chunk_usd)} USD (the bound on one process's overshoot)"
        + ("" if t.daily_chunk_usd else ": not set, 1/20 of the limit")
        + "; a chunk larger than a call's worst case is asked for when that call needs it."
    )
    out.append(_entry(policy, chunk_key, t.daily_chunk_usd, "enforced", chunk_how))
    return out


_PATHS_HOW = (
    "a tool call whose arguments name a matching path (any string at any depth, and each word of a "
    "command line) is refused before it runs, for reading and writing alike; ~ is expanded, relative "
    "patterns start at the policy file's directory, a pattern without '/' matches a name at any depth, "
    "symlinks are resolved. Not seen: a path a tool builds itself or a shell expands (a glob, a variable)."
)


def _forbidden(policy: Policy) -> list[Entry]:
    f = policy.forbidden
    out = []
    for key, values in (("files", f.files), ("directories", f.directories)):
        status: Status = "enforced" if values else "off"
        how = (
            _PATHS_HOW if key == "files" else "as files: a tool call naming the directory or anything in it is refused."
        )
        out.append(_entry(policy, f"FORBIDDEN.{key}", list(values), status, how if values else "none listed."))
    actions = ActionMap(f.actions, {k: tuple(v) for k, v in f.action_tools.items()})
    if f.actions:
        mapping = "; ".join(f"{a} = {', '.join(actions.tools[a])}" for a in actions.actions)
        how = (
            f"a tool whose name is one of the action's tool names is refused: {mapping}. Extend the mapping "
            "with FORBIDDEN.action_tools or action_tools=. An action done through a general tool (a shell "
            "running git push --force) is not recognised."
        )
        out.append(_entry(policy, "FORBIDDEN.actions", list(f.actions), "enforced", how))
    else:
        out.append(_entry(policy, "FORBIDDEN.actions", [], "off", "none listed."))
    if f.action_tools:
        out.append(
            _entry(
                policy,
                "FORBIDDEN.action_tools",
                {k: list(v) for k, v in f.action_tools.items()},
                "enforced",
                "M99's extension: more tool names for the actions above.",
            )
        )
    net = f.network
    if net.block_public_egress:
        hosts = ", ".join(r.text for r in net.allowlist) or "none"
        how = (
            "outbound connections and name lookups of the whole process are refused by M99's in-process "
            f"egress guard unless allow-listed or non-public (loopback, private addresses); allowed: {hosts}; "
            "the control plane always stays reachable. Not seen: C extensions with their own sockets, "
            "subprocesses."
        )
        out.append(_entry(policy, "FORBIDDEN.network.block_public_egress", True, "enforced", how))
    else:
        out.append(
            _entry(policy, "FORBIDDEN.network.block_public_egress", False, "off", "outbound traffic is not restricted.")
        )
    if net.allowlist:
        out.append(
            _entry(
                policy,
                "FORBIDDEN.network.allowlist",
                [r.text for r in net.allowlist],
                "enforced",
                "see block_public_egress; a name passes, and so do the addresses it resolves to.",
            )
        )
    return out


def _escalation(policy: Policy) -> list[Entry]:
    esc = policy.escalation
    out = []
    if not esc.present:
        out.append(
            Entry(
                "ESCALATION",
                None,
                "enforced",
                "no ESCALATION section: every trigger stops the agent at once (full_stop, with "
                "evidence; an operator may restart).",
                None,
            )
        )
        return out
    actions = {
        Stage.THROTTLE: "tool and model calls are spaced to half the call rate of the minute before.",
        Stage.PAUSE: (
            "new tool and model calls wait (those in flight finish) until the level's timeout escalates it or "
            "an operator resumes it (`m99 policy resume AGENT`) or escalates it (`m99 policy escalate AGENT`)."
        ),
        Stage.SHUTDOWN: (
            "every tool and model call is refused and check_status() raises, in the process (with the "
            "control plane out of reach too), like M99's level-3 tool-call freeze; then reported, and held "
            "at the control plane as L3 on the agent until an operator's m99 restore."
        ),
    }
    for stage, name in LEVEL_KEYS.items():
        if stage not in esc.levels:
            text = "not declared: triggers that would enter it go to the next level up."
            if stage == Stage.SHUTDOWN:
                text = "not declared: M99 still stops on a trigger that reaches it (full_stop, with evidence)."
            out.append(Entry(f"ESCALATION.{name}", None, "enforced" if stage == Stage.SHUTDOWN else "off", text, None))
            continue
        level = esc.levels[stage]
        key = f"ESCALATION.{name}"
        nxt = esc.next_after(stage)
        out.append(_entry(policy, f"{key}.action", level.action, "enforced", actions[stage]))
        if stage != Stage.SHUTDOWN:
            if level.timeout_minutes:
                how = f"unresolved after {number(level.timeout_minutes)} min, it escalates to {nxt.key}."
                out.append(_entry(policy, f"{key}.timeout_minutes", level.timeout_minutes, "enforced", how))
            else:
                out.append(
                    _entry(
                        policy,
                        f"{key}.timeout_minutes",
                        None,
                        "off",
                        "not set: the level holds until an operator acts, or a trigger escalates it.",
                    )
                )
        else:
            how = (
                "the Guard's evidence snapshot (secrets redacted) is taken as the stop takes effect."
                if level.save_state
                else "no evidence snapshot before the stop."
            )
            out.append(_entry(policy, f"{key}.save_state", level.save_state, "enforced", how))
            how = (
                "an operator may resume after the stop."
                if level.allow_restart
                else "only an authority may lift the stop (an operator's resume is refused)."
            )
            out.append(_entry(policy, f"{key}.allow_restart", level.allow_restart, "enforced", how))
        out.append(
            _entry(
                policy,
                f"{key}.notify",
                level.notify,
                "enforced" if level.notify else "off",
                (
                    "the control plane POSTs the transition, signed with its key, to the webhook its operator "
                    "configured (m99 serve --webhook URL; Slack-compatible with --webhook-format slack); "
                    "with no webhook it is audited as not delivered."
                    if level.notify
                    else "no notification; the transition is still reported to the control plane."
                ),
            )
        )
        if level.channels:
            out.append(
                _entry(
                    policy,
                    f"{key}.channels",
                    [f"{c.kind}: {c.target}" for c in level.channels],
                    "enforced" if level.notify else "off",
                    "named in the webhook's body; the webhook's receiver routes to them (M99 sends no "
                    "email or page itself).",
                )
            )
    if esc.trigger_levels:
        value = {k: v.key for k, v in esc.trigger_levels.items()}
        out.append(
            _entry(
                policy,
                "ESCALATION.trigger_levels",
                value,
                "enforced",
                "M99's extension: the level each trigger listed enters instead of its default.",
            )
        )
    return out


def _audit(policy: Policy) -> list[Entry]:
    a = policy.audit
    if not a.present or not a.log_file:
        return [
            Entry(
                "AUDIT.log_file",
                None,
                "off",
                "no local log (the control plane's audit chain still records what the Guard reports).",
                policy.line("AUDIT"),
            )
        ]
    return [
        _entry(
            policy,
            "AUDIT.log_file",
            a.log_file,
            "enforced",
            f"append-only JSON Lines at {policy.log_path}: one line per escalation event and per refused "
            "call; agent tools may not write it.",
        ),
        _entry(policy, "AUDIT.log_format", a.log_format, "enforced", "JSON Lines, the one format M99 writes."),
        _entry(
            policy,
            "AUDIT.log_fields",
            list(a.log_fields),
            "enforced",
            "each line has exactly these fields, null where M99 has no value.",
        ),
        _entry(
            policy,
            "AUDIT.retain_logs_days",
            a.retain_logs_days,
            "not enforced",
            "M99 never deletes nor rotates the log: retention is the operator's business.",
        ),
    ]


def _override(policy: Policy) -> list[Entry]:
    o = policy.override
    modify = (
        "the agent may not change its policy: a tool call naming this file is refused unless the tool is "
        "declared read-only, and M99 never reloads it at run time."
        if not o.allow_agent_modification
        else "agent tools may write this file (M99 still reads it only at start)."
    )
    if not o.present:
        modify = "no OVERRIDE section: defaults to false. " + modify
    human = _entry(
        policy,
        "OVERRIDE (a human override)",
        None,
        "enforced",
        "an authority suspends one trigger until an expiry: `m99 policy override AGENT --trigger KEY --until "
        "15m`, authorised and audited on the server, pushed signed to the agent; enforced again at the expiry.",
    )
    return [
        human,
        _entry(
            policy,
            "OVERRIDE.allow_agent_modification",
            o.allow_agent_modification,
            "enforced" if not o.allow_agent_modification else "off",
            modify,
        ),
        _entry(
            policy,
            "OVERRIDE.require_human_approval",
            o.require_human_approval,
            "not enforced",
            "changes are the repository's review process; M99 reads the file once at start, so a change "
            "takes effect when a human restarts the agent.",
        ),
        _entry(
            policy,
            "OVERRIDE.override_requires_mfa",
            o.override_requires_mfa,
            "not enforced",
            "the repository's business (signed commits, its host's MFA).",
        ),
        _entry(
            policy,
            "OVERRIDE.protected_branch",
            o.protected_branch,
            "not enforced",
            "the repository's business (branch protection).",
        ),
    ]


def explain(policy: Policy) -> dict[str, list[Entry]]:
    """Every key of every section, with its effective value and what M99 does with it."""
    metadata = [
        _entry(policy, f"METADATA.{key}", value, "information", "for people and auditors; M99 does not act on it.")
        for key, value in policy.metadata.items()
        if key in KNOWN_KEYS["METADATA"]
    ]
    return {
        "TRIGGERS": _triggers(policy),
        "FORBIDDEN": _forbidden(policy),
        "ESCALATION": _escalation(policy),
        "AUDIT": _audit(policy),
        "OVERRIDE": _override(policy),
        "METADATA": metadata,
    }
