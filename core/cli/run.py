"""``m99 run``: supervise any process, so M99 can terminate it from outside."""

from __future__ import annotations

import sys

import click

__all__ = ["COMMANDS"]


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
@click.option(
    "--policy",
    default=None,
    type=click.Path(dir_okay=False),
    help="A KILLSWITCH.md for the command: checked before it starts, handed to it as $M99_POLICY "
    "(enforced by the command's m99.init or M99Client).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    name: str | None,
    kind: str,
    grace: float,
    pause_on_freeze: bool,
    policy: str | None,
    command: tuple[str, ...],
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
    from ..supervisor import Supervisor

    supervisor = Supervisor(
        command,
        name=name,
        kind=kind,
        url=ctx.find_root().obj["url"],
        grace_seconds=grace,
        pause_on_freeze=pause_on_freeze,
        policy=policy,
    )
    sys.exit(supervisor.run())


COMMANDS = [run]
