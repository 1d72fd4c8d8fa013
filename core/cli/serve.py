"""``m99 serve``: run the control plane."""

from __future__ import annotations

import click

from ..config import DEFAULT_PORT
from ..control.settings import ENROL_MODES

__all__ = ["COMMANDS"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--store",
    "store_url",
    envvar="M99_STORE",
    default=None,
    help="postgresql://… to share one database between replicas (env M99_STORE; default: SQLite in the data dir).",
)
@click.option("--database-url", "database_url", envvar="M99_DATABASE_URL", default=None, hidden=True)
@click.option(
    "--key-file",
    envvar="M99_KEY_FILE",
    default=None,
    type=click.Path(dir_okay=False),
    help="The server's signing key (default: server.key in the data dir). Replicas share one.",
)
@click.option(
    "--enrol",
    type=click.Choice(ENROL_MODES),
    default="open",
    show_default=True,
    help="open: any process may register a new agent name; token: every registration needs an agent-role "
    "token (m99 token create --role agent).",
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
    help="Seconds a signed request's timestamp may differ from the server clock.",
)
@click.option(
    "--lease",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 86400),
    help="Seconds an agent keeps acting without contact (0: interval x missed).",
)
@click.option(
    "--register-rate",
    default=50.0,
    show_default=True,
    type=click.FloatRange(0, 1e6),
    help="Registrations per second from one address (0: unlimited).",
)
@click.option(
    "--retention",
    default=7 * 86400.0,
    show_default=True,
    type=click.FloatRange(0, 1e9),
    help="Seconds a stopped agent is kept before its name is freed (0: forever).",
)
@click.option(
    "--halt-slo",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.001, 3600),
    help="Seconds from execute to a confirmed halt before an agent is flagged.",
)
@click.option(
    "--webhook",
    default="",
    metavar="URL",
    help="POST each KILLSWITCH.md notification (a level with notify: true) here, signed with the server key.",
)
@click.option(
    "--webhook-format",
    default="json",
    show_default=True,
    type=click.Choice(["json", "slack"]),
    help='The webhook body: M99\'s JSON, or Slack-compatible {"text": ...} with M99\'s fields under "m99".',
)
@click.option(
    "--canary",
    default=0.0,
    type=click.FloatRange(0, 3600),
    help="Seconds between pushes to a canary on this server's own push path; one not received within 2 s "
    "is reported in /metrics and m99 status (0: no canary).",
)
@click.option(
    "--two-person",
    is_flag=True,
    help="Two-person rule: the token that executes an authorisation must belong to another identity than "
    "the one that armed it (refusals are audited).",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    help="Least severe log line written (to stderr). Executions and dead man's switch firings are warnings.",
)
@click.option(
    "--log-format",
    envvar="M99_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="text: one readable line each; json: one JSON object a line (time, level, logger, message, fields), "
    "the start-up lines too (env M99_LOG_FORMAT). Tokens are masked in either.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    store_url: str | None,
    database_url: str | None,
    key_file: str | None,
    enrol: str,
    heartbeat_interval: float,
    missed: int,
    deadman_level: int,
    clock_skew: float,
    lease: float,
    register_rate: float,
    retention: float,
    halt_slo: float,
    webhook: str,
    webhook_format: str,
    canary: float,
    two_person: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the control plane: REST API, push stream, dashboard and API docs.

    It binds its port first, then opens (or creates) its data: on a busy port it says so and
    changes nothing.  On first start it writes an admin token owner-only into the data dir.
    Several replicas share one PostgreSQL (--store) and one key (--key-file).
    """
    import functools

    from .. import logs
    from ..control import Settings
    from ..server import serve as run_server

    logs.configure(log_level, log_format)
    settings = Settings(
        heartbeat_interval=heartbeat_interval,
        missed_heartbeats=missed,
        deadman_level=deadman_level,
        clock_skew=clock_skew,
        lease_seconds=lease,
        enrol=enrol,
        register_rate=register_rate,
        retention=retention,
        halt_slo=halt_slo,
        webhook=webhook,
        webhook_format=webhook_format,
        two_person=two_person,
        canary=canary,
    )
    run_server(
        host,
        port,
        ctx.find_root().obj["data_dir"],
        settings,
        store_url or database_url,
        log_level,
        key_file=key_file,
        announce=functools.partial(logs.announce, fmt=log_format),
    )


COMMANDS = [serve]
