"""The ``m99`` command: the operator's console for the control plane.

Every expected failure prints one line ``m99: error: …`` and exits with the code of its error
class (see ``m99.errors``); only a bug shows a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from .config import DEFAULT_PORT
from .errors import BadRequest, ConfigError, M99Error
from .levels import Scope

F = TypeVar("F", bound=Callable[..., Any])


def _fail(exc: M99Error) -> None:
    click.echo(f"m99: error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


def handled(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except M99Error as exc:
            _fail(exc)

    return wrapper  # type: ignore[return-value]


def _operator(ctx: click.Context) -> Any:
    from .client import OperatorClient

    obj = ctx.find_root().obj
    return OperatorClient(obj["url"], obj["token"], data_dir=obj["data_dir"])


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _scope(value: str) -> str:
    try:
        return str(Scope.parse(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--url",
    envvar="M99_URL",
    default=None,
    help="Control plane URL (env M99_URL; default http://localhost:8099).",
)
@click.option(
    "--token",
    envvar="M99_TOKEN",
    default=None,
    help="Operator token (env M99_TOKEN; default: the admin token `m99 serve` wrote in the data dir).",
)
@click.option(
    "--data-dir",
    envvar="M99_DATA_DIR",
    default=None,
    type=click.Path(file_okay=False),
    help="Data directory (env M99_DATA_DIR; default ~/.m99).",
)
@click.version_option(package_name="m99", prog_name="m99")
@click.pass_context
def main(ctx: click.Context, url: str | None, token: str | None, data_dir: str | None) -> None:
    """M99 — an emergency stop for AI agents.

    \b
    Quick start:
      m99 serve                                        # terminal 1: control plane on :8099
      m99 status                                       # see registered agents
      m99 arm --by admin@example.com --reason "Rogue behaviour"
      m99 execute --auth <id_from_arm> --force         # agents stop
      m99 restore --scope global --by admin@example.com --reason "Investigated"

    Levels: L1 credential revocation, L2 SaaS disconnection, L3 tool-call freeze (reversible);
    L4 restriction, L5 targeted termination, L6 fleet kill (need an authority to lift).
    """
    ctx.obj = {"url": url, "token": token, "data_dir": data_dir}


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--database-url",
    envvar="M99_DATABASE_URL",
    default=None,
    help="postgresql://… to share one database between replicas (default: SQLite in the data dir).",
)
@click.option(
    "--heartbeat-interval",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.05, 3600),
    help="Seconds between agent heartbeats.",
)
@click.option(
    "--missed",
    default=3,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Missed heartbeats before the dead man's switch fires.",
)
@click.option(
    "--deadman-level",
    default=3,
    show_default=True,
    type=click.IntRange(1, 6),
    help="Level the dead man's switch executes on a silent agent.",
)
@click.option(
    "--clock-skew",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds a signed heartbeat's timestamp may differ from the server clock.",
)
@click.option(
    "--lease",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 86400),
    help="Seconds an agent keeps acting without contact (0: interval x missed).",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.pass_context
@handled
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    database_url: str | None,
    heartbeat_interval: float,
    missed: int,
    deadman_level: int,
    clock_skew: float,
    lease: float,
    log_level: str,
) -> None:
    """Run the control plane: REST API, push stream and dashboard."""
    from .control import Settings
    from .server import serve as run_server

    settings = Settings(
        heartbeat_interval=heartbeat_interval,
        missed_heartbeats=missed,
        deadman_level=deadman_level,
        clock_skew=clock_skew,
        lease_seconds=lease,
    )
    run_server(host, port, ctx.find_root().obj["data_dir"], settings, database_url, log_level)


def _agents_table(agents: list[dict[str, Any]]) -> None:
    if not agents:
        click.echo("no agents registered")
        return
    click.echo(f"{'NAME':24} {'KIND':14} {'FRAMEWORK':10} {'STATUS':10} {'LEVEL':5} {'PID':>7}  LAST HEARTBEAT")
    for a in agents:
        level = f"L{a['level']}" if a["level"] else "-"
        click.echo(
            f"{a['name']:24} {a['kind']:14} {a['framework']:10} {a['status']:10} {level:5} "
            f"{a['pid'] or '':>7}  {a['seconds_since_heartbeat']:.1f}s ago"
        )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
@handled
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the switch's state, armed authorisations and registered agents."""
    with _operator(ctx) as op:
        data = op.status()
    if as_json:
        _print_json(data)
        return
    click.echo(
        f"M99 at {op.url}: {data['status']}  ({data['agents_total']} agents, {data['agents_held']} held, "
        f"audit head #{data['audit_head']['seq']})"
    )
    for auth in data["armed"]:
        click.echo(
            f"ARMED {auth['id']}: L{auth['level']} on {auth['scope']} by {auth['by']} "
            f"until {auth['expires_at']} — {auth['reason']}"
        )
    for d in data["directives"]:
        click.echo(f"ACTIVE {d['id']}: L{d['level']} on {d['scope']} ({d['origin']}, {d['execution_id']})")
    _agents_table(data["agents"])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
@handled
def agents(ctx: click.Context, as_json: bool) -> None:
    """List registered agents with their status and level."""
    with _operator(ctx) as op:
        data = op.agents()
    _print_json(data) if as_json else _agents_table(data)


@main.command()
@click.argument("execution_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
@handled
def executions(ctx: click.Context, execution_id: str | None, as_json: bool) -> None:
    """List the executions (kills and dead man's switch firings), newest first; with an EXECUTION_ID,
    show that one and each agent's time-to-halt as the agents acknowledged it."""
    with _operator(ctx) as op:
        data: Any = op.execution(execution_id) if execution_id else op.executions()
    if as_json:
        _print_json(data)
        return
    if not execution_id:
        if not data:
            click.echo("no executions yet")
        for e in data:
            click.echo(
                f"{e['id']}  {e['started_at']}  L{e['level']} on {e['scope']}  {e['origin']} by {e['by_email']}  "
                f"{len(e['agents'])} agents — {e['reason']}"
            )
        return
    halt = data["time_to_halt"]
    click.echo(
        f"{data['id']}: L{data['level']} on {data['scope']} ({', '.join(data['levels_fired'])}), {data['origin']} "
        f"by {data['by_email']} at {data['started_at']} — {data['reason']}"
    )
    if halt["p50_ms"] is None:
        click.echo(f"time to halt: no acknowledgement yet from the {halt['in_scope']} agents in scope")
        return
    click.echo(
        f"time to halt: {halt['acknowledged']} of {halt['in_scope']} agents acknowledged, "
        f"p50 {halt['p50_ms']:.1f} ms, max {halt['max_ms']:.1f} ms"
    )
    for agent, ms in sorted(halt["per_agent"].items(), key=lambda item: item[1]):
        click.echo(f"  {agent:<32} {ms:9.1f} ms")
    silent = sorted(set(data["agents"]) - set(halt["per_agent"]))
    if silent:
        click.echo(f"  not acknowledged: {', '.join(silent)}")


@main.command()
@click.option("--by", required=True, help="The named human taking responsibility (e-mail).")
@click.option("--reason", required=True, help="Why — recorded in the audit chain.")
@click.option(
    "--level", default=3, show_default=True, type=click.IntRange(1, 6), help="Level to fire (L1…LN all fire)."
)
@click.option(
    "--scope",
    default="global",
    show_default=True,
    callback=lambda c, p, v: _scope(v),
    help="global | agent:NAME | class:KIND | framework:NAME",
)
@click.option(
    "--window",
    default=300.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Seconds the authorisation stays valid.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
@handled
def arm(ctx: click.Context, by: str, reason: str, level: int, scope: str, window: float, as_json: bool) -> None:
    """Phase one: create a time-limited, single-use authorisation."""
    with _operator(ctx) as op:
        data = op.arm(by, reason, level=level, scope=scope, window=window)
    if as_json:
        _print_json(data)
        return
    click.echo(f"armed: {data['id']}")
    click.echo(
        f"  L{data['level']} ({data['level_name']}) on {data['scope']}, {len(data['agents_in_scope'])} agents "
        f"in scope, expires {data['expires_at']}"
    )
    extra = f" --confirm '{data['confirmation_phrase']}'" if data.get("requires_confirmation") else ""
    click.echo(f"  execute with: m99 execute --auth {data['id']} --force{extra}")


@main.command()
@click.option("--auth", "auth_id", required=True, help="The authorisation id from `m99 arm`.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--confirm", default=None, help="For L6: the exact phrase `m99 arm` printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
@handled
def execute(ctx: click.Context, auth_id: str, force: bool, confirm: str | None, as_json: bool) -> None:
    """Phase two: fire the armed levels, L1 up to the armed level, on every agent in scope."""
    with _operator(ctx) as op:
        if not force:
            auth = op.authorization(auth_id)
            click.echo(
                f"About to fire on {auth['scope']} ({len(auth.get('agents_in_scope', []))} agents: "
                f"{', '.join(auth.get('agents_in_scope', [])) or 'none yet'}):"
            )
            for step in auth["levels_to_fire"]:
                click.echo(f"  {step}")
            if auth.get("requires_confirmation") and confirm is None:
                confirm = click.prompt(
                    f"Type '{auth['confirmation_phrase']}' to confirm", default="", show_default=False
                )
            elif not sys.stdin.isatty() and not force:
                raise BadRequest("not a terminal: pass --force to execute without a prompt")
            elif not click.confirm("Execute?", default=False):
                click.echo("not executed")
                sys.exit(1)
        data = op.execute(auth_id, confirm=confirm)
    if as_json:
        _print_json(data)
        return
    click.echo(
        f"executed {data['execution_id']}: {', '.join(data['levels_fired'])} on {data['scope']} — "
        f"{data['agents_terminated']} agents ({data['duration_ms']:.1f} ms)"
    )


@main.command()
@click.option("--auth", "auth_id", default=None, help="Disarm one authorisation (default: every armed one).")
@click.option("--by", default=None, help="Who disarms.")
@click.option("--reason", default=None, help="Why.")
@click.pass_context
@handled
def disarm(ctx: click.Context, auth_id: str | None, by: str | None, reason: str | None) -> None:
    """Cancel armed authorisations before they are executed."""
    with _operator(ctx) as op:
        data = op.disarm(auth_id, by=by, reason=reason)
    click.echo(f"disarmed: {', '.join(data['disarmed'])}" if data["disarmed"] else "nothing was armed")


def _scope_act(verb: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        fn = click.option("--reason", required=True, help="Why — recorded in the audit chain.")(fn)
        fn = click.option("--by", required=True, help="The named human (e-mail).")(fn)
        fn = click.option(
            "--scope",
            required=True,
            callback=lambda c, p, v: _scope(v),
            help="global | agent:NAME | class:KIND | framework:NAME",
        )(fn)
        return fn

    return deco


@main.command()
@_scope_act("restore")
@click.pass_context
@handled
def restore(ctx: click.Context, scope: str, by: str, reason: str) -> None:
    """Reverse L1–L3 on a scope (operator role). L4–L6 need `m99 lift`."""
    with _operator(ctx) as op:
        data = op.restore(scope, by=by, reason=reason)
    click.echo(f"restored {scope}: {len(data['lifted'])} directives lifted, agents: {', '.join(data['agents']) or '-'}")
    if data["still_held"]:
        click.echo(f"still held by other directives: {', '.join(data['still_held'])}")


@main.command()
@_scope_act("lift")
@click.pass_context
@handled
def lift(ctx: click.Context, scope: str, by: str, reason: str) -> None:
    """Lift L4–L6 and tombstones on a scope (authority role; fleet for L6)."""
    with _operator(ctx) as op:
        data = op.lift(scope, by=by, reason=reason)
    click.echo(
        f"lifted {scope}: {len(data['lifted'])} directives, tombstones lifted: "
        f"{', '.join(data['tombstones_lifted']) or '-'}"
    )


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--name", default=None, help="Agent name to register (default: the command's basename).")
@click.option("--kind", default="process", show_default=True, help="Agent kind, for class:KIND scopes.")
@click.option(
    "--grace",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="Seconds between SIGTERM and SIGKILL at L5/L6.",
)
@click.option(
    "--pause-on-freeze",
    is_flag=True,
    help="SIGSTOP the command while frozen (L3, L4, lease lost) and SIGCONT it when lifted.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
@handled
def run(
    ctx: click.Context, name: str | None, kind: str, grace: float, pause_on_freeze: bool, command: tuple[str, ...]
) -> None:
    """Run COMMAND as an agent that M99 can terminate from outside.

    The command needs no M99 code: the supervisor registers it, and at L5/L6 kills its whole
    process group (SIGTERM, --grace seconds, SIGKILL), reports who stopped it, and does not
    restart it.  Below L5 the command keeps running (see --pause-on-freeze), and so it does
    when the control plane is out of reach.  The exit code is the command's own, or 128+N if
    signal N ended it; a tombstoned name is refused before the command starts.

    \b
    Example:
      m99 run --name researcher --grace 10 -- python agent.py --task report
      m99 arm --by admin@example.com --reason "Runaway" --level 5 --scope agent:researcher
    """
    from .supervisor import Supervisor

    supervisor = Supervisor(
        command,
        name=name,
        kind=kind,
        url=ctx.find_root().obj["url"],
        grace_seconds=grace,
        pause_on_freeze=pause_on_freeze,
    )
    sys.exit(supervisor.run())


@main.group()
def audit() -> None:
    """Verify or export the tamper-evident audit chain."""


@audit.command("verify")
@click.option(
    "--db",
    "db",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Verify a database file offline (its audit-head.json beside it is used if present).",
)
@click.option(
    "--jsonl",
    "jsonl",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Verify a JSONL export offline.",
)
@click.option("--public-key", default=None, help="Pin the server's public key (base64).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
@handled
def audit_verify(ctx: click.Context, db: str | None, jsonl: str | None, public_key: str | None, as_json: bool) -> None:
    """Check the whole chain: valid, or the first bad entry and why. Exit 9 if it does not verify."""
    from . import audit as chain

    if db and jsonl:
        raise ConfigError("give --db or --jsonl, not both")
    if db:
        data = chain.verify_sqlite(Path(db), public_key_b64=public_key).to_dict()
    elif jsonl:
        data = chain.verify_jsonl(Path(jsonl), public_key_b64=public_key).to_dict()
    else:
        with _operator(ctx) as op:
            data = op.audit_verify()
    if as_json:
        _print_json(data)
    elif data["valid"]:
        click.echo(f"audit chain valid: {data['entries']} entries, head #{data['head_seq']} {data['head_hash'][:16]}…")
    if not data["valid"]:
        click.echo(f"m99: error: audit chain INVALID at entry {data.get('bad_seq')}: {data.get('reason')}", err=True)
        sys.exit(9)


@audit.command("export")
@click.option("--jsonl", "jsonl", is_flag=True, required=True, help="Export as JSON lines (one entry a line).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-", help="File to write (default stdout).")
@click.pass_context
@handled
def audit_export(ctx: click.Context, jsonl: bool, output: str) -> None:
    """Export the chain with its latest signed checkpoint, verifiable offline."""
    with _operator(ctx) as op, click.open_file(output, "w") as out:
        count = 0
        for line in op.audit_export():
            if line:
                out.write(line + "\n")
                count += 1
    if output != "-":
        click.echo(f"wrote {count} lines to {output}", err=True)


@main.group()
def token() -> None:
    """Create, list and revoke operator tokens (needs the fleet role)."""


@token.command("create")
@click.option("--name", required=True, help="Who the token belongs to (recorded beside --by).")
@click.option("--role", required=True, type=click.Choice(["viewer", "operator", "authority", "fleet"]))
@click.pass_context
@handled
def token_create(ctx: click.Context, name: str, role: str) -> None:
    """Create a token; it is shown once."""
    with _operator(ctx) as op:
        data = op.create_token(name, role)
    click.echo(f"token {data['id']} for {data['name']} ({data['role']}): {data['token']}")
    click.echo("it is shown only now; the server keeps its SHA-256 hash", err=True)


@token.command("list")
@click.pass_context
@handled
def token_list(ctx: click.Context) -> None:
    """List tokens (never their values)."""
    with _operator(ctx) as op:
        for t in op.tokens():
            state = "revoked" if t["revoked_at"] else "live"
            click.echo(f"{t['id']}  {t['name']:20} {t['role']:10} {state}")


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
@handled
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token by id."""
    with _operator(ctx) as op:
        op.revoke_token(token_id)
    click.echo(f"revoked {token_id}")


if __name__ == "__main__":
    main()
