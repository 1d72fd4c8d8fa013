"""The ``m99`` command: the operator's console for the control plane.

Every expected failure prints one line ``m99: error: …`` and exits with the code of its error class
(see ``m99.errors``; a usage error exits 2); only a bug shows a traceback.  The global options
(``--url``, ``--token``, ``--data-dir``) work before or after the command.

The commands live in one module per area: ``serve``, ``operate`` (status, agents, arm, execute,
disarm, restore, lift, executions), ``audit``, ``tokens``, ``run``, ``demo``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from ..errors import M99Error

GLOBAL_OPTIONS = ("--url", "--token", "--data-dir")


def _hoist_global_options(args: list[str]) -> list[str]:
    """Move ``--url X`` / ``--token X`` / ``--data-dir X`` (or ``--url=X``) given after the command to
    the front, where the group reads them; nothing after ``--`` is touched."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS and i > 0:
            if "=" in arg:
                front.append(arg)
                i += 1
            else:
                front.extend(args[i : i + 2])
                i += 2
            continue
        rest.append(arg)
        i += 1
    return front + rest


# Each command's module, imported only when that command runs (or ``--help`` lists them all): an
# operator's ``m99 execute`` loads no server, no policy engine and no agent side.
LAZY_COMMANDS = {
    "serve": "serve",
    "status": "operate",
    "agents": "operate",
    "executions": "operate",
    "arm": "operate",
    "execute": "operate",
    "watch": "operate",
    "disarm": "operate",
    "restore": "operate",
    "lift": "operate",
    "run": "run",
    "audit": "audit",
    "token": "tokens",
    "policy": "m99.policy.cli",
    "demo": "demo",
    "casepack": "casepack",
    "drill": "drill",
    "breakglass": "breakglass",
}


class M99Group(click.Group):
    """The ``m99`` group: commands loaded on demand, one-line errors for usage mistakes and M99 errors alike."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(LAZY_COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            import importlib

            target = LAZY_COMMANDS[cmd_name]
            module = importlib.import_module(target if "." in target else f"{__name__}.{target}")
            command = getattr(module, cmd_name if cmd_name != "token" else "token")
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(_hoist_global_options(argv), prog_name, standalone_mode=False, **extra)
        try:
            result = super().main(_hoist_global_options(argv), prog_name or "m99", standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("m99: aborted", err=True)
            sys.exit(1)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            click.echo(f"m99: error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"m99: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except M99Error as exc:
            click.echo(f"m99: error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=M99Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--url", envvar="M99_URL", default=None, help="Control plane URL(s) (env M99_URL; default http://localhost:8099)."
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
    The options --url, --token and --data-dir may also follow the command.
    """
    ctx.obj = {"url": url, "token": token, "data_dir": data_dir}


if __name__ == "__main__":
    main()
