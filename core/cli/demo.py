"""``m99 demo``: a LangChain agent, a CrewAI crew and an AutoGen team, each in its own process, under
one kill switch — embedded and checked step by step, or against a running ``m99 serve``."""

from __future__ import annotations

import click
from click.core import ParameterSource

__all__ = ["demo"]


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(1, 24 * 3600),
    default=None,
    help="With --url: stop the agents after SECONDS (default: at Ctrl-C, or after an hour).",
)
@click.option("--plain", is_flag=True, help="Plain lines instead of the live table (the default when not a terminal).")
@click.option(
    "--log",
    "log",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append the frameworks' own output here (default: a new file in the temporary directory).",
)
@click.option(
    "--pause",
    type=click.FloatRange(0.01, 5),
    default=0.25,
    show_default=True,
    help="Seconds each scripted tool call takes.",
)
@click.pass_context
def demo(ctx: click.Context, duration: float | None, plain: bool, log: str | None, pause: float) -> None:
    """Run three framework agents under the kill switch, offline: no API key, no second terminal.

    \b
    Without --url: an embedded control plane on a temporary data directory; the demo shows each agent's
    state and tool calls live, kills `framework:langchain`, then the whole fleet (global), prints each
    agent's confirmed time-to-halt from the execution record, restores, and verifies the audit chain.
    Exits 0 only if every step held, 1 naming the step that did not.

    \b
    With --url URL (and --token, or the admin token file): the same agents against a running
    `m99 serve`; you press the switch from its dashboard or with `m99 arm` / `m99 execute` in another
    terminal, and see the agents stop and resume here.  M99_URL alone does not select this mode.

    The frameworks' own output (warnings, the tracebacks of stopped runs) goes to a log file the summary names.
    """
    from ..demo import run_demo, watch_demo

    root = ctx.find_root()
    obj = root.obj
    url_given = root.get_parameter_source("url") == ParameterSource.COMMANDLINE
    if url_given and obj["url"]:
        code = watch_demo(
            obj["url"],
            obj["token"],
            data_dir=obj["data_dir"],
            duration=duration or 3600.0,
            plain=plain,
            log=log,
            pause=pause,
        )
    else:
        if duration is not None:
            raise click.UsageError("--duration goes with --url: the embedded demo ends when its steps do")
        code = run_demo(plain=plain, log=log, pause=pause)
    ctx.exit(code)
