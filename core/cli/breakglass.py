"""``m99 breakglass``: a sealed, single-use credential for when normal authentication is down."""

from __future__ import annotations

import click

from ._common import operator, print_json

__all__ = ["breakglass"]


@click.group()
def breakglass() -> None:
    """Break-glass credentials: may only arm and execute one kill; every use is audited loudly and shown
    by m99 status until a fleet token acknowledges it."""


@breakglass.command("create")
@click.option("--by", "by", required=True, help="Who creates it (recorded).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def breakglass_create(ctx: click.Context, by: str, as_json: bool) -> None:
    """Create one (fleet role) and print it once: seal it away; only its hash is stored."""
    with operator(ctx) as op:
        data = op.breakglass_create(by=by)
    if as_json:
        print_json(data)
        return
    click.echo(f"break-glass credential {data['id']} (shown once, single use, may only arm and execute):")
    click.echo(data["token"])


@breakglass.command("ack")
@click.argument("token_id")
@click.option("--by", "by", required=True, help="Who acknowledges the use (recorded).")
@click.pass_context
def breakglass_ack(ctx: click.Context, token_id: str, by: str) -> None:
    """Acknowledge a break-glass use (fleet role): m99 status stops showing it."""
    with operator(ctx) as op:
        op.breakglass_ack(token_id, by=by)
    click.echo(f"break-glass use of {token_id} acknowledged")
