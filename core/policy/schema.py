"""The schema of KILLSWITCH.md's sections: the keys M99 knows in each, and the checks that turn a section's
YAML values into the typed policy, every problem naming its key and line."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from .forbidden import compile_glob, normal_tool_name, parse_host_rule
from .model import (
    DAILY_SCOPES,
    DEFAULT_LOG_FIELDS,
    LEVEL_ACTIONS,
    LEVEL_KEYS,
    TRIGGER_EXTENSIONS,
    TRIGGER_KEYS,
    Audit,
    Channel,
    Escalation,
    EscalationLevel,
    Forbidden,
    HostRule,
    Network,
    Override,
    Problem,
    Stage,
    Triggers,
)

__all__ = ["AUDIT_FIELDS", "BUILDERS", "KNOWN_KEYS", "LEVEL_FIELDS", "NETWORK_FIELDS", "Checker"]

# The keys M99 knows in each section (the spec's, and M99's extensions ``trigger_levels`` and
# ``action_tools``); ``m99.policy.explain`` says for each how it is enforced.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "TRIGGERS": (*TRIGGER_KEYS, *TRIGGER_EXTENSIONS),
    "FORBIDDEN": ("files", "directories", "network", "actions", "action_tools"),
    "ESCALATION": (*LEVEL_KEYS.values(), "trigger_levels"),
    "AUDIT": ("log_file", "log_format", "log_fields", "retain_logs_days"),
    "OVERRIDE": ("require_human_approval", "override_requires_mfa", "protected_branch", "allow_agent_modification"),
    "METADATA": (
        "owner",
        "contact",
        "last_reviewed",
        "review_frequency",
        "compliance_frameworks",
        "spec_version",
        "spec_url",
    ),
}
LEVEL_FIELDS = ("action", "notify", "channels", "timeout_minutes", "save_state", "allow_restart")
NETWORK_FIELDS = ("block_public_egress", "allowlist")
# What an audit line can carry (``m99.policy.audit_log``); other ``log_fields`` are written as null.
AUDIT_FIELDS = (
    *DEFAULT_LOG_FIELDS,
    "escalation_level",
    "previous_level",
    "rule",
    "reason",
    "operator",
    "human_approval",
    "cost_usd",
    "cost_daily_usd",
    "tokens_last_minute",
    "calls_last_minute",
    "error_rate",
    "consecutive_failures",
)


class Checker:
    """Collects problems; every getter names the key and its line, and returns None for a bad value."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.lines: dict[str, int] = {}

    def error(self, key: str, message: str, line: int | None = None) -> None:
        self.problems.append(
            Problem("error", line if line is not None else self.lines.get(key, 0), key, message, self.source)
        )

    def warn(self, key: str, message: str, line: int | None = None) -> None:
        self.problems.append(
            Problem("warning", line if line is not None else self.lines.get(key, 0), key, message, self.source)
        )

    def unknown(self, prefix: str, data: dict[str, Any], known: tuple[str, ...]) -> None:
        for key in data:
            if key not in known:
                hint = _closest(key, known)
                self.warn(f"{prefix}.{key}", "unknown key, ignored" + (f" (did you mean {hint!r}?)" if hint else ""))

    def number(
        self,
        key: str,
        value: Any,
        *,
        integer: bool = False,
        low: float = 0.0,
        low_open: bool = False,
        high: float | None = None,
        what: str = "",
    ) -> float | None:
        if value is None:
            self.warn(key, "no value: this limit is off")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = " (write a plain number, without quotes or units)" if isinstance(value, str) else ""
            self.error(key, f"must be a number, not {_kind(value)} {value!r}{hint}")
            return None
        if not math.isfinite(value):
            self.error(key, f"must be a finite number, not {value!r}")
            return None
        if integer and value != int(value):
            self.error(key, f"must be a whole number, not {value!r}")
            return None
        if value < low or (low_open and value == low):
            bound = f"greater than {_fmt(low)}" if low_open else f"at least {_fmt(low)}"
            self.error(key, f"must be {bound}, not {_fmt(value)}{what}")
            return None
        if high is not None and value > high:
            self.error(key, f"must be at most {_fmt(high)}, not {_fmt(value)}{what}")
            return None
        return int(value) if integer else float(value)

    def boolean(self, key: str, value: Any) -> bool | None:
        if isinstance(value, bool):
            return value
        self.error(key, f"must be true or false, not {_kind(value)} {value!r}")
        return None

    def text(self, key: str, value: Any) -> str | None:
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        self.error(key, f"must be a text, not {_kind(value)} {value!r}")
        return None

    def strings(self, key: str, value: Any, check: Callable[[str], str | None] | None = None) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(key, f"must be a list (lines starting with '- '), not {_kind(value)} {value!r}")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            item_key = f"{key}[{i}]"
            if not isinstance(item, str) or not item.strip():
                self.error(item_key, f"must be a text, not {_kind(item)} {item!r}")
                continue
            problem = check(item) if check else None
            if problem:
                self.error(item_key, problem)
                continue
            out.append(item.strip())
        return tuple(dict.fromkeys(out))

    def mapping(self, key: str, value: Any) -> dict[str, Any] | None:
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        self.error(key, f"must be a mapping of 'key: value' lines, not {_kind(value)} {value!r}")
        return None


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "the text",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), "a " + type(value).__name__.replace("NoneType", "null"))


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _closest(key: str, known: tuple[str, ...]) -> str | None:
    found = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return found[0] if found else None


def _triggers(c: Checker, data: dict[str, Any]) -> Triggers:
    c.unknown("TRIGGERS", data, KNOWN_KEYS["TRIGGERS"])
    values: dict[str, Any] = {}
    for key in TRIGGER_KEYS:
        if key not in data:
            continue
        k = f"TRIGGERS.{key}"
        if key in ("cost_limit_usd", "cost_limit_daily_usd"):
            values[key] = c.number(k, data[key], low=0.0, what=" (a limit in US dollars)")
        elif key in ("tokens_per_minute", "api_calls_per_minute", "consecutive_failures"):
            values[key] = c.number(k, data[key], integer=True, low=1)
        elif key == "error_rate_threshold":
            values[key] = c.number(k, data[key], low=0.0, low_open=True, high=1.0, what=" (a fraction: 0.25 is 25%)")
        else:
            values[key] = c.number(k, data[key], low=0.0, low_open=True, what=" minutes")
    _fleet(c, data, values)
    return Triggers(**values)


def _fleet(c: Checker, data: dict[str, Any], values: dict[str, Any]) -> None:
    """M99's extensions: ``cost_limit_daily_scope`` (agent, class, global) and its chunk size."""
    limit = values.get("cost_limit_daily_usd")
    if "cost_limit_daily_scope" in data:
        k, scope = "TRIGGERS.cost_limit_daily_scope", data["cost_limit_daily_scope"]
        if not isinstance(scope, str) or scope.strip().lower() not in DAILY_SCOPES:
            c.error(k, f"must be one of {', '.join(DAILY_SCOPES)}, not {_kind(scope)} {scope!r}")
        else:
            values["daily_scope"] = scope.strip().lower()
            if "cost_limit_daily_usd" not in data:
                c.warn(k, "has no effect without cost_limit_daily_usd")
    if "cost_limit_daily_chunk_usd" in data:
        k = "TRIGGERS.cost_limit_daily_chunk_usd"
        chunk = c.number(k, data["cost_limit_daily_chunk_usd"], low=0.0, low_open=True, what=" (US dollars)")
        if chunk is not None and limit is not None and chunk < limit / 1000:
            c.error(k, f"must be at least 1/1000 of cost_limit_daily_usd ({_fmt(limit / 1000)}), not {_fmt(chunk)}")
            chunk = None
        elif chunk is not None and limit is not None and chunk > limit / 4:
            c.error(
                k,
                f"must be at most 1/4 of cost_limit_daily_usd ({_fmt(limit / 4)}, the largest lease), "
                f"not {_fmt(chunk)}",
            )
            chunk = None
        elif chunk is not None:
            values["daily_chunk_usd"] = chunk
            if values.get("daily_scope", "agent") == "agent":
                c.warn(k, "has no effect unless cost_limit_daily_scope is class or global")


def _network(c: Checker, value: Any) -> Network:
    key = "FORBIDDEN.network"
    merged: dict[str, Any] = {}
    if isinstance(value, list):  # the template's form: a list of one-key mappings
        for i, item in enumerate(value):
            if not isinstance(item, dict) or len(item) != 1:
                c.error(f"{key}[{i}]", f"must be one 'name: value' entry, not {_kind(item)} {item!r}")
                continue
            name, item_value = next(iter(item.items()))
            prefix = f"{key}[{i}].{name}"
            for path, line in list(c.lines.items()):  # the lines of the entry, under the merged key
                if path == prefix or path.startswith((prefix + ".", prefix + "[")):
                    c.lines.setdefault(f"{key}.{name}" + path[len(prefix) :], line)
            if name in merged:
                c.error(f"{key}.{name}", "given twice", c.lines.get(f"{key}[{i}].{name}"))
            merged[name] = item_value
    else:
        mapping = c.mapping(key, value)
        if mapping is None:
            return Network()
        merged = mapping
    c.unknown(key, merged, NETWORK_FIELDS)
    block = (
        c.boolean(f"{key}.block_public_egress", merged["block_public_egress"])
        if "block_public_egress" in merged
        else None
    )
    rules: list[HostRule] = []
    hosts = c.strings(f"{key}.allowlist", merged.get("allowlist"), check=_host_problem)
    for host in hosts:
        rules.append(parse_host_rule(host))
    if rules and not block:
        c.warn(f"{key}.allowlist", "has no effect while block_public_egress is false")
    return Network(bool(block), tuple(rules))


def _host_problem(text: str) -> str | None:
    try:
        parse_host_rule(text)
    except ValueError as exc:
        return f"not a host, address or network: {exc}"
    return None


def _glob_problem(text: str) -> str | None:
    try:
        compile_glob(text.strip())
    except ValueError as exc:
        return f"not a usable glob: {exc}"
    return None


def _action_problem(text: str) -> str | None:
    return None if normal_tool_name(text) else f"not an action name: {text!r}"


def _forbidden(c: Checker, data: dict[str, Any]) -> Forbidden:
    c.unknown("FORBIDDEN", data, KNOWN_KEYS["FORBIDDEN"])
    files = c.strings("FORBIDDEN.files", data.get("files"), check=_glob_problem)
    directories = c.strings("FORBIDDEN.directories", data.get("directories"), check=_glob_problem)
    actions = c.strings("FORBIDDEN.actions", data.get("actions"), check=_action_problem)
    network = _network(c, data["network"]) if "network" in data else Network()
    extra: dict[str, tuple[str, ...]] = {}
    mapping = c.mapping("FORBIDDEN.action_tools", data.get("action_tools"))
    for action, tools in (mapping or {}).items():
        names = c.strings(f"FORBIDDEN.action_tools.{action}", tools, check=_action_problem)
        if normal_tool_name(action) not in {normal_tool_name(a) for a in actions}:
            c.warn(f"FORBIDDEN.action_tools.{action}", "maps an action that FORBIDDEN.actions does not list: no effect")
        extra[action] = names
    return Forbidden(files, directories, actions, network, MappingProxyType(extra))


_STAGE_NAMES: dict[str | int, Stage] = {
    **{key: stage for stage, key in LEVEL_KEYS.items()},
    **{action: stage for stage, action in LEVEL_ACTIONS.items()},
    "throttle": Stage.THROTTLE,
    "pause": Stage.PAUSE,
    "shutdown": Stage.SHUTDOWN,
    1: Stage.THROTTLE,
    2: Stage.PAUSE,
    3: Stage.SHUTDOWN,
}


def _level(c: Checker, stage: Stage, value: Any) -> EscalationLevel | None:
    name = LEVEL_KEYS[stage]
    key = f"ESCALATION.{name}"
    data = c.mapping(key, value)
    if data is None:
        return None
    c.unknown(key, data, LEVEL_FIELDS)
    action = LEVEL_ACTIONS[stage]
    if "action" in data:
        given = c.text(f"{key}.action", data["action"])
        if given is not None and given != action:
            other = next((LEVEL_KEYS[s] for s, a in LEVEL_ACTIONS.items() if a == given), None)
            why = f"{given!r} is the action of {other}" if other else f"unknown action {given!r}"
            c.error(f"{key}.action", f"{why}; {name} takes {action!r}")
    notify = c.boolean(f"{key}.notify", data["notify"]) if "notify" in data else None
    channels: list[Channel] = []
    raw = data.get("channels")
    if raw is not None and not isinstance(raw, list):
        c.error(f"{key}.channels", f"must be a list of 'kind: target' entries, not {_kind(raw)} {raw!r}")
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if isinstance(item, dict) and len(item) == 1:
            kind, target = next(iter(item.items()))
            if isinstance(target, str | int | float | bool) and not isinstance(target, dict | list):
                channels.append(Channel(str(kind), str(target).lower() if isinstance(target, bool) else str(target)))
                continue
        c.error(f"{key}.channels[{i}]", f"must be one 'kind: target' entry (email: ops@example.com), not {item!r}")
    timeout = None
    if "timeout_minutes" in data:
        timeout = c.number(f"{key}.timeout_minutes", data["timeout_minutes"], low=0.0, low_open=True, what=" minutes")
        if timeout is not None and stage == Stage.SHUTDOWN:
            c.warn(f"{key}.timeout_minutes", "there is no level above level_3_shutdown: ignored")
            timeout = None
    flags: dict[str, bool] = {}
    for flag in ("save_state", "allow_restart"):
        if flag in data:
            got = c.boolean(f"{key}.{flag}", data[flag])
            if stage != Stage.SHUTDOWN:
                c.warn(f"{key}.{flag}", "only level_3_shutdown uses it: ignored")
            elif got is not None:
                flags[flag] = got
    return EscalationLevel(stage, action, bool(notify), tuple(channels), timeout, **flags)


def _escalation(c: Checker, data: dict[str, Any]) -> Escalation:
    c.unknown("ESCALATION", data, KNOWN_KEYS["ESCALATION"])
    levels: dict[Stage, EscalationLevel] = {}
    for stage, name in LEVEL_KEYS.items():
        if name in data:
            level = _level(c, stage, data[name])
            if level is not None:
                levels[stage] = level
    entry: dict[str, Stage] = {}
    mapping = c.mapping("ESCALATION.trigger_levels", data.get("trigger_levels"))
    for trigger, value in (mapping or {}).items():
        key = f"ESCALATION.trigger_levels.{trigger}"
        if trigger not in TRIGGER_KEYS:
            c.error(key, f"not a trigger (one of: {', '.join(TRIGGER_KEYS)})")
            continue
        found = _STAGE_NAMES.get(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
        if found is None:
            c.error(key, f"must be 1, 2, 3 or a level name (level_1_throttle…), not {value!r}")
            continue
        entry[trigger] = found
    return Escalation(True, MappingProxyType(levels), MappingProxyType(entry))


def _audit(c: Checker, data: dict[str, Any]) -> Audit:
    c.unknown("AUDIT", data, KNOWN_KEYS["AUDIT"])
    log_file = c.text("AUDIT.log_file", data["log_file"]) if "log_file" in data else None
    if log_file is not None and "\x00" in log_file:
        c.error("AUDIT.log_file", "not a path")
        log_file = None
    fmt = "jsonl"
    if "log_format" in data:
        given = c.text("AUDIT.log_format", data["log_format"])
        if given is not None and given.lower() != "jsonl":
            c.error("AUDIT.log_format", f"M99 writes 'jsonl' (JSON Lines) only, not {given!r}")
    fields: tuple[str, ...] = DEFAULT_LOG_FIELDS
    if "log_fields" in data:
        fields = c.strings("AUDIT.log_fields", data["log_fields"])
        for i, name in enumerate(fields):
            if name not in AUDIT_FIELDS:
                c.warn(f"AUDIT.log_fields[{i}]", f"M99 has no value for {name!r}: it is written as null")
    retain = None
    if "retain_logs_days" in data:
        got = c.number("AUDIT.retain_logs_days", data["retain_logs_days"], integer=True, low=0)
        retain = int(got) if got is not None else None
    return Audit(True, log_file, fmt, fields, retain)


def _override(c: Checker, data: dict[str, Any]) -> Override:
    c.unknown("OVERRIDE", data, KNOWN_KEYS["OVERRIDE"])
    values: dict[str, Any] = {}
    for key in ("require_human_approval", "override_requires_mfa", "allow_agent_modification"):
        if key in data:
            got = c.boolean(f"OVERRIDE.{key}", data[key])
            if got is not None:
                values[key] = got
    if "protected_branch" in data:
        values["protected_branch"] = c.text("OVERRIDE.protected_branch", data["protected_branch"])
    return Override(True, **values)


def _metadata(c: Checker, data: dict[str, Any]) -> dict[str, Any]:
    c.unknown("METADATA", data, KNOWN_KEYS["METADATA"])
    version = data.get("spec_version")
    if version is not None and str(version) not in ("1", "1.0"):
        c.warn("METADATA.spec_version", f"written for KILLSWITCH.md {version}; M99 reads version 1.0")
    return data


BUILDERS: dict[str, Callable[[Checker, dict[str, Any]], Any]] = {
    "TRIGGERS": _triggers,
    "FORBIDDEN": _forbidden,
    "ESCALATION": _escalation,
    "AUDIT": _audit,
    "OVERRIDE": _override,
    "METADATA": _metadata,
}
