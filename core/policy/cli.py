"""``m99 policy``: lint a KILLSWITCH.md and show what M99 enforces of it, or write a starter file.

Same conventions as the rest of the CLI: problems print as ``FILE:LINE: severity: KEY: message``, an
expected failure ends with one line ``m99: error: …`` and the exit code of its error class (2 for an
invalid or unreadable file); warnings alone exit 0.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, M99Error
from .explain import Entry, explain, trigger_paths
from .parse import PolicyError, parse_file
from .prices import resolve_prices
from .starter import STARTER

__all__ = ["policy"]

# The Guard loads KILLSWITCH.md (m99.init, M99Client, m99 run): "enforced" is what runs.  Were it ever
# False again, `check` says that "enforced" describes the engine, so that no key looks enforced when not.
GUARD_LOADS_POLICY = True

_WIDTH = 100


def _fail(exc: M99Error) -> None:
    click.echo(f"m99: error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value) or "[]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _entry_text(entry: Entry) -> list[str]:
    name = entry.key.split(".", 1)[1] if "." in entry.key else entry.key
    where = f"line {entry.line}" if entry.line else "default"
    head = f"  {name} = {_show(entry.value)}"
    if len(head) > 60:
        head = head[:57] + "..."
    lines = [f"{head:<62} [{entry.status}]  {where}"]
    lines += textwrap.wrap(entry.how, _WIDTH, initial_indent="      ", subsequent_indent="      ")
    return lines


def _report(path: Path, result: Any) -> None:
    policy = result.policy
    warnings = len(result.warnings)
    spec = policy.metadata.get("spec_version", "-")
    sections = ", ".join(policy.sections) or "none"
    click.echo(f"{path}: valid, {warnings} warning{'s' * (warnings != 1)} (spec {spec}; sections: {sections})")
    if not GUARD_LOADS_POLICY:
        click.echo(
            textwrap.fill(
                "note: this M99 release parses and checks the policy and has its decision engine, but the Guard "
                "does not load KILLSWITCH.md yet: 'enforced' below is what the engine enforces once wired.",
                _WIDTH,
            )
        )
    for section, entries in explain(policy).items():
        if not entries:
            continue
        click.echo("")
        click.echo(section + ("" if section in policy.sections else "  (section absent: defaults)"))
        for entry in entries:
            for line in _entry_text(entry):
                click.echo(line)
    click.echo("")
    click.echo("Which level each trigger enters")
    if not policy.triggers.configured():
        click.echo("  no trigger is set")
    for p in trigger_paths(policy):
        if p.limit is None:
            continue
        enters = f"{p.enters.key} ({policy.escalation.level(p.enters).action})"
        click.echo(f"  {p.trigger:<24} {_show(p.limit):>10}  -> {enters:<33} {p.then}")
    if policy.triggers.cost_limit_usd is not None or policy.triggers.cost_limit_daily_usd is not None:
        try:
            table = resolve_prices()
        except PolicyError as exc:
            click.echo(f"\nprice table: {exc.message}")
        else:
            click.echo(
                f"\nprice table: {len(table)} models from $M99_PRICES"
                if table is not None
                else "\nprice table: none ($M99_PRICES unset): only costs that providers report will count"
            )


def _as_json(path: Path, result: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"path": str(path), "valid": result.policy is not None}
    out["problems"] = [
        {"severity": p.severity, "line": p.line, "key": p.key, "message": p.message} for p in result.problems
    ]
    if result.policy is not None:
        out["keys"] = [
            {"key": e.key, "value": e.value, "status": e.status, "how": e.how, "line": e.line}
            for entries in explain(result.policy).values()
            for e in entries
        ]
        out["triggers"] = [
            {"trigger": p.trigger, "limit": p.limit, "enters": p.enters.key, "then": p.then}
            for p in trigger_paths(result.policy)
        ]
    return out


@click.group()
def policy() -> None:
    """Check KILLSWITCH.md, the policy the agent's Guard enforces, or write a starter one."""


@policy.command("check")
@click.argument("path", default="KILLSWITCH.md", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the findings and the effective policy as JSON.")
def check(path: Path, as_json: bool) -> None:
    """Lint PATH (default ./KILLSWITCH.md) and print the effective policy: for every key, how M99
    enforces it, or that it does not; and which escalation level each trigger enters.

    Exit 0 when the file is valid (warnings are printed), 2 when it is invalid or unreadable."""
    try:
        result = parse_file(path)
    except M99Error as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(_as_json(path, result), indent=2, default=str))
        if result.policy is None:
            sys.exit(ConfigError.exit_code)
        return
    for problem in result.problems:
        click.echo(str(problem), err=True)
    if result.policy is None:
        count = len(result.errors)
        _fail(PolicyError(f"{path} is not a valid policy ({count} error{'s' * (count != 1)})", result.problems))
        return
    _report(path, result)


@policy.command("init")
@click.argument("path", default="KILLSWITCH.md", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented starter KILLSWITCH.md at PATH (default ./KILLSWITCH.md)."""
    try:
        if path.exists() and not force:
            raise ConfigError(f"{path} exists: pass --force to overwrite it")
        if path.is_dir():
            raise ConfigError(f"{path} is a directory")
        tmp = ""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".KILLSWITCH-", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(STARTER)
            os.replace(tmp, path)
        except OSError as exc:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    except M99Error as exc:
        _fail(exc)
        return
    click.echo(f"wrote {path}: review the limits, then run `m99 policy check {path}`")


# -- an operator's acts on a running agent's policy (through the control plane) ----------------------

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` → seconds; ConfigError for anything else."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:], None) if raw else None
    number = raw[:-1] if unit is not None else raw
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise ConfigError(f"bad duration {text!r}: a number with s, m, h or d (15m, 2h)") from None
    if not seconds > 0 or seconds != seconds:
        raise ConfigError(f"bad duration {text!r}: it must be more than 0")
    return seconds


def _act(fn: Any) -> Any:
    fn = click.option("--reason", required=True, help="Why — recorded in the audit chain.")(fn)
    fn = click.option("--by", required=True, help="The named human (e-mail).")(fn)
    return click.argument("agent")(fn)


def _send(ctx: click.Context, op: str, body: dict[str, Any]) -> dict[str, Any]:
    from ..cli._common import operator

    with operator(ctx) as op_client:
        answer: dict[str, Any] = op_client.policy(op, body)
    return answer


def _sent(answer: dict[str, Any], what: str) -> None:
    reach = "" if answer.get("connected") else " (the agent is not connected now: it applies it only if it hears it)"
    click.echo(f"{what}: sent to {answer['agent']} as {answer['id']}{reach}; the agent reports the transition")


@policy.command("resume")
@_act
@click.pass_context
def resume(ctx: click.Context, agent: str, by: str, reason: str) -> None:
    """Resume AGENT's policy from a throttle or a pause (operator role).

    Audited on the server, pushed signed to the agent, enforced there; the agent reports the
    transition (see `m99 executions`).  A policy's full stop is lifted with `m99 restore`."""
    _sent(_send(ctx, "resume", {"agent": agent, "by": by, "reason": reason}), "resume")


@policy.command("escalate")
@_act
@click.pass_context
def escalate(ctx: click.Context, agent: str, by: str, reason: str) -> None:
    """Move AGENT's policy one escalation level up now (operator role): a throttle pauses, a pause
    shuts down.  Audited on the server, pushed signed to the agent, reported back by it."""
    _sent(_send(ctx, "escalate", {"agent": agent, "by": by, "reason": reason}), "escalate")


@policy.command("override")
@_act
@click.option("--trigger", required=True, help="The TRIGGERS key to suspend (cost_limit_usd, consecutive_failures…).")
@click.option("--until", "until", required=True, help="How long: 90s, 15m, 2h, 1d (at most 7d).")
@click.pass_context
def override(ctx: click.Context, agent: str, by: str, reason: str, trigger: str, until: str) -> None:
    """Suspend one trigger of AGENT's policy until the expiry (authority role): it is neither
    measured nor, for a budget, refuses a call; at the expiry it is enforced again.  Audited on
    the server and pushed signed to the agent."""
    try:
        seconds = parse_duration(until)
    except M99Error as exc:
        _fail(exc)
        return
    body = {"agent": agent, "by": by, "reason": reason, "trigger": trigger, "seconds": seconds}
    answer = _send(ctx, "override", body)
    _sent(answer, f"override of {trigger} for {until}")


@policy.command("budgets")
@click.option("--days", default=2, show_default=True, type=click.IntRange(1, 31), help="How many UTC days back.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def budgets(ctx: click.Context, days: int, as_json: bool) -> None:
    """Show the fleet budgets (TRIGGERS.cost_limit_daily_scope: class or global): for each scope and
    UTC day what the control plane granted, what the agents reported spent, and each agent's share."""
    from ..cli._common import operator, print_json, safe

    with operator(ctx) as op_client:
        data = op_client.budgets(days)
    if as_json:
        print_json(data)
        return
    if not data["budgets"]:
        click.echo("no fleet budgets in use (no agent's policy sets cost_limit_daily_scope: class or global)")
    for group in data["budgets"]:
        click.echo(
            f"{group['day']}  {group['scope']}: granted {group['granted_usd']:.4f} USD, spent "
            f"{group['spent_usd']:.4f} USD (used {group['used_usd']:.4f})"
        )
        for share in group["agents"]:
            refused = f", {share['refused']} leases refused" if share["refused"] else ""
            click.echo(
                f"  {safe(share['agent'])}: granted {share['granted_usd']:.4f}, spent {share['spent_usd']:.4f} "
                f"of its limit {share['limit_usd']:g}{refused}"
            )
