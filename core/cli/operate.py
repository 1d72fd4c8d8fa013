"""The operator's commands: see (status, agents, executions), stop (arm, execute), undo (disarm,
restore, lift) and free a name (agents forget)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import BadRequest
from ._common import ago, human_time, operator, plural, print_json, safe, scope_option, table, when

__all__ = ["COMMANDS"]

F = TypeVar("F", bound=Callable[..., Any])


def _agents_table(agents: list[dict[str, Any]]) -> None:
    if not agents:
        click.echo("no agents registered")
        return
    rows = [
        [
            a["name"],
            a["kind"],
            ",".join(a.get("frameworks") or [a.get("framework", "")]),
            a["status"] + (f" ({a['status_reason']})" if a["status"] != "active" and a.get("status_reason") else ""),
            f"L{a['level']}" if a["level"] else "-",
            a["pid"] or "",
            ago(a["seconds_since_heartbeat"]),
            (a.get("policy") or "-").removeprefix("sha256:")[:12],
        ]
        for a in agents
    ]
    heads = ["NAME", "KIND", "FRAMEWORKS", "STATUS", "LEVEL", "PID", "LAST HEARTBEAT", "POLICY"]
    table(heads, rows, [32, 20, 24, 28, 5, 8, 15, 0])


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the switch's state, armed authorisations, active directives and running agents."""
    with operator(ctx) as op:
        data = op.status()
    if as_json:
        print_json(data)
        return
    stopped = data.get("agents_stopped", 0)
    click.echo(
        f"M99 at {op.url}: {data['status']}  ({plural(data['agents_total'], 'agent')} running, "
        f"{data['agents_held']} held"
        + (f", {stopped} stopped" if stopped else "")
        + f"; audit head #{data['audit_head']['seq']})"
    )
    for auth in data["armed"]:
        click.echo(
            f"ARMED {auth['id']}: L{auth['level']} on {auth['scope']} by {safe(auth['by'])}, "
            f"expires {when(auth['expires_at'])} — {safe(auth['reason'])}"
        )
    for d in data["directives"]:
        who = f" by {safe(d['by'])}" if d.get("by") else ""
        click.echo(f"ACTIVE {d['id']}: L{d['level']} on {d['scope']} ({d['origin']}{who}, {d['execution_id']})")
    for used in data.get("breakglass_used", []):
        click.echo(
            f"BREAK-GLASS {used['token_id']} used to {used['act']} at {used['at']} "
            f"({used.get('execution_id') or used.get('id')}): acknowledge with m99 breakglass ack {used['token_id']}"
        )
    canary = data.get("canary")
    if canary is not None and not canary["ok"]:
        click.echo(
            f"WARNING: the kill path's canary is failing: {canary['failures']} push(es) not received in time "
            f"(since {canary.get('failing_since') or 'its start'})"
        )
    drills = data.get("drills") or {}
    if drills.get("overdue"):
        click.echo(
            f"WARNING: a drill is overdue (every {drills['every_seconds']:g} s; last {drills.get('last') or 'never'})"
        )
    for h in data.get("halts", []):
        if h["not_confirmed"] or h["slo_breaches"]:
            click.echo(
                f"HALT {h['id']}: L{h['level']} on {h['scope']}, {h['confirmed']} of {h['in_scope']} confirmed"
                + (f"; NOT confirmed: {', '.join(h['not_confirmed'])}" if h["not_confirmed"] else "")
                + (f"; over the time-to-halt SLO: {', '.join(h['slo_breaches'])}" if h["slo_breaches"] else "")
            )
    _agents_table(data["agents"])


@click.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Include stopped agents (deregistered or gone).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def agents(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List running agents with their status and level (--all: stopped ones too)."""
    if ctx.invoked_subcommand is not None:
        return
    with operator(ctx) as op:
        data = op.agents(include_stopped=show_all)
    print_json(data) if as_json else _agents_table(data)


@agents.command("forget")
@click.argument("name")
@click.option("--by", required=True, help="The named human (e-mail).")
@click.option("--reason", required=True, help="Why — recorded in the audit chain.")
@click.pass_context
def agents_forget(ctx: click.Context, name: str, by: str, reason: str) -> None:
    """Free the name NAME so another key may register it (authority role).  Its directives stay: a stop
    aimed at the name still holds whoever registers it next."""
    with operator(ctx) as op:
        op.forget(name, by=by, reason=reason)
    click.echo(f"forgot {name}: the name may be registered again with a new key")


@click.command()
@click.argument("execution_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def executions(ctx: click.Context, execution_id: str | None, as_json: bool) -> None:
    """List the executions (kills and dead man's switch firings), newest first; with an EXECUTION_ID,
    show each agent in scope: halt confirmed, with its time-to-halt, or not confirmed."""
    with operator(ctx) as op:
        data: Any = op.execution(execution_id) if execution_id else op.executions()
    if as_json:
        print_json(data)
        return
    if not execution_id:
        if not data:
            click.echo("no executions yet")
        for e in data:
            click.echo(
                f"{e['id']}  {human_time(e['started_at'])}  L{e['level']} on {e['scope']}  {e['origin']} by "
                f"{safe(e['by_email'])}  {plural(len(e['agents']), 'agent')} — {safe(e['reason'])}"
            )
        return
    _execution(data)


def _execution(data: dict[str, Any]) -> None:
    halt = data["time_to_halt"]
    click.echo(
        f"{data['id']}: L{data['level']} on {data['scope']} ({', '.join(data['levels_fired'])}), {data['origin']} "
        f"by {safe(data['by_email'])} at {human_time(data['started_at'])} — {safe(data['reason'])}"
    )
    if halt["p50_ms"] is None:
        click.echo(f"time to halt: no acknowledgement yet from the {plural(halt['in_scope'], 'agent')} in scope")
    else:
        click.echo(
            f"time to halt: {halt['confirmed']} of {plural(halt['in_scope'], 'agent')} acknowledged (halt confirmed), "
            f"p50 {halt['p50_ms']:.1f} ms, max {halt['max_ms']:.1f} ms"
        )
    for agent, ms in sorted(halt["per_agent"].items(), key=lambda item: item[1]):
        click.echo(f"  {safe(agent):<32} {ms:9.1f} ms")
    why = halt.get("not_confirmed_why", {})
    for agent in halt["not_confirmed"]:
        click.echo(f"  {safe(agent):<32} NOT confirmed halted: {why.get(agent, 'not acknowledged')}")
    if halt.get("breaches"):
        click.echo(f"  over the {halt['slo_ms'] / 1000:g} s time-to-halt SLO: {', '.join(halt['breaches'])}")


@click.command()
@click.option("--by", required=True, help="The named human taking responsibility (an e-mail, or the token's name).")
@click.option("--reason", required=True, help="Why — recorded in the audit chain.")
@click.option(
    "--level", default=3, show_default=True, type=click.IntRange(1, 6), help="Level to fire (L1…LN all fire)."
)
@scope_option(default="global", show_default=True)
@click.option(
    "--window",
    default=300.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Seconds the authorisation stays valid.",
)
@click.option("--allow-empty", is_flag=True, help="Arm even when no running agent is in scope (a pre-emptive stop).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def arm(
    ctx: click.Context, by: str, reason: str, level: int, scope: str, window: float, allow_empty: bool, as_json: bool
) -> None:
    """Phase one: create a time-limited, single-use authorisation.

    A scope with no running agent in it is refused (it is usually a typo) unless --allow-empty.
    """
    with operator(ctx) as op:
        data = op.arm(by, reason, level=level, scope=scope, window=window, allow_empty=allow_empty)
    if as_json:
        print_json(data)
        return
    click.echo(f"armed: {data['id']}")
    click.echo(
        f"  L{data['level']} ({data['level_name']}) on {data['scope']}, "
        f"{plural(len(data['agents_in_scope']), 'agent')} in scope, expires {when(data['expires_at'])}"
    )
    extra = f" --confirm '{data['confirmation_phrase']}'" if data.get("requires_confirmation") else ""
    click.echo(f"  execute with: m99 execute --auth {data['id']} --force{extra}")


def _watch(op: Any, execution_id: str, seconds: float) -> int:
    """Print each agent's confirmed halt as it arrives; 0 if every agent in scope confirmed in time."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    halt: dict[str, Any] = {}
    while True:
        halt = op.execution(execution_id)["time_to_halt"]
        for name, ms in sorted(halt["per_agent"].items(), key=lambda item: item[1]):
            if name not in seen:
                seen.add(name)
                click.echo(f"  halt confirmed  {safe(name):<32} {ms:9.1f} ms")
        if not halt["not_confirmed"] or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if halt["not_confirmed"]:
        click.echo(
            f"NOT confirmed after {seconds:g} s: {', '.join(safe(n) for n in halt['not_confirmed'])} "
            f"({len(halt['not_confirmed'])} of {plural(halt['in_scope'], 'agent')})"
        )
        return 1
    worst = max(halt["per_agent"].values(), default=0.0)
    click.echo(f"all {plural(halt['in_scope'], 'agent')} in scope confirmed halted; slowest {worst:.1f} ms")
    return 0


@click.command()
@click.option("--auth", "auth_id", required=True, help="The authorisation id from `m99 arm`.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--confirm", default=None, help="For L6: the exact phrase `m99 arm` printed.")
@click.option(
    "--wait",
    "wait",
    type=click.FloatRange(0, 3600),
    default=None,
    is_flag=False,
    flag_value=30.0,
    help="Then wait up to SECONDS (default 30) and print each agent's confirmed halt as it arrives; exit 1 "
    "if one is not confirmed by then.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def execute(
    ctx: click.Context, auth_id: str, force: bool, confirm: str | None, wait: float | None, as_json: bool
) -> None:
    """Phase two: fire the armed levels, L1 up to the armed level, on every agent in scope."""
    with operator(ctx) as op:
        if not force:
            auth = op.authorization(auth_id)
            names = auth.get("agents_in_scope", [])
            click.echo(
                f"About to fire on {auth['scope']} ({plural(len(names), 'agent')}: {', '.join(names) or 'none yet'}):"
            )
            for step in auth["levels_to_fire"]:
                click.echo(f"  {step}")
            if auth.get("requires_confirmation") and confirm is None:
                confirm = click.prompt(
                    f"Type '{auth['confirmation_phrase']}' to confirm", default="", show_default=False
                )
            elif not sys.stdin.isatty():
                raise BadRequest("not a terminal: pass --force to execute without a prompt")
            elif not click.confirm("Execute?", default=False):
                click.echo("not executed")
                sys.exit(1)
        data = op.execute(auth_id, confirm=confirm)
        if as_json:
            print_json(data)
            return
        if wait is None:
            click.echo(
                f"executed {data['execution_id']}: {', '.join(data['levels_fired'])} on {data['scope']} — "
                f"{plural(data['agents_terminated'], 'agent')} in scope (recorded in {data['committed_ms']:.1f} ms; "
                f"this is not the time-to-halt: each agent's confirmed halt is in "
                f"m99 executions {data['execution_id']}, or use --wait)"
            )
            return
        click.echo(
            f"executed {data['execution_id']}: {', '.join(data['levels_fired'])} on {data['scope']} — "
            f"{plural(data['agents_terminated'], 'agent')} in scope; waiting up to {wait:g} s for each to confirm"
        )
        code = _watch(op, data["execution_id"], wait)
    sys.exit(code)


@click.command()
@click.argument("execution_id")
@click.option("--wait", type=click.FloatRange(0, 3600), default=30.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def watch(ctx: click.Context, execution_id: str, wait: float) -> None:
    """Follow an execution: print each agent's confirmed halt as it arrives, and the agents still not
    confirmed when the wait ends (exit 1 then)."""
    with operator(ctx) as op:
        data = op.execution(execution_id)
        click.echo(
            f"{data['id']}: L{data['level']} on {data['scope']}, {plural(len(data['agents']), 'agent')} in scope"
        )
        code = _watch(op, execution_id, wait)
    sys.exit(code)


@click.command()
@click.option("--auth", "auth_id", default=None, help="Disarm one authorisation.")
@click.option("--all", "every", is_flag=True, help="Disarm every armed authorisation.")
@click.option("--by", default=None, help="Who disarms.")
@click.option("--reason", default=None, help="Why.")
@click.pass_context
def disarm(ctx: click.Context, auth_id: str | None, every: bool, by: str | None, reason: str | None) -> None:
    """Cancel an armed authorisation before it is executed.  With neither --auth nor --all, the only
    armed one (if there is exactly one)."""
    with operator(ctx) as op:
        if not auth_id and not every:
            armed = op.status()["armed"]
            if not armed:
                click.echo("nothing was armed")
                return
            if len(armed) > 1:
                raise BadRequest(
                    f"{len(armed)} authorisations are armed ({', '.join(a['id'] for a in armed)}): "
                    "pass --auth ID, or --all"
                )
            auth_id = armed[0]["id"]
        data = op.disarm(auth_id, every=every, by=by, reason=reason)
    click.echo(f"disarmed: {', '.join(data['disarmed'])}" if data["disarmed"] else "nothing was armed")


def _scope_act(fn: F) -> F:
    fn = click.option("--reason", required=True, help="Why — recorded in the audit chain.")(fn)
    fn = click.option("--by", required=True, help="The named human (e-mail).")(fn)
    return scope_option(required=True)(fn)


@click.command()
@_scope_act
@click.pass_context
def restore(ctx: click.Context, scope: str, by: str, reason: str) -> None:
    """Reverse L1–L3 on a scope (operator role); L4–L6 need `m99 lift`.

    A scope lifts every directive it covers: `--scope global` lifts them all (also those aimed at one
    agent, and the dead man's switch's); `class:K` and `framework:F` lift those aimed at their agents.
    """
    with operator(ctx) as op:
        data = op.restore(scope, by=by, reason=reason)
    if data.get("pending"):
        click.echo(f"restore of {scope} requested: {data['message']}")
        return
    click.echo(
        f"restored {scope}: {plural(len(data['lifted']), 'directive')} lifted, "
        f"agents: {', '.join(data['agents']) or '-'}"
    )
    if data["still_held"]:
        click.echo(f"still held by other directives: {', '.join(data['still_held'])}")


@click.command()
@_scope_act
@click.pass_context
def lift(ctx: click.Context, scope: str, by: str, reason: str) -> None:
    """Lift L4–L6 and tombstones on a scope (authority role; fleet for L6)."""
    with operator(ctx) as op:
        data = op.lift(scope, by=by, reason=reason)
    click.echo(
        f"lifted {scope}: {plural(len(data['lifted']), 'directive')}, tombstones lifted: "
        f"{', '.join(data['tombstones_lifted']) or '-'}"
    )


COMMANDS = [status, agents, executions, arm, execute, watch, disarm, restore, lift]
