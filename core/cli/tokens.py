"""``m99 token``: operator and enrolment tokens."""

from __future__ import annotations

import click

from ..config import TOKEN_FILE
from ..errors import ConfigError
from ._common import operator, safe, table

__all__ = ["COMMANDS"]


@click.group()
def token() -> None:
    """Create, list, revoke and recover tokens (fleet role; recover on the server's machine)."""


@token.command("create")
@click.option("--name", required=True, help="Who the token belongs to (recorded beside --by).")
@click.option("--role", required=True, type=click.Choice(["agent", "viewer", "operator", "authority", "fleet"]))
@click.option("--name-prefix", default=None, help="agent role: only names starting with this may register.")
@click.option("--kind", default=None, help="agent role: only agents of this kind may register.")
@click.option("--rebind", is_flag=True, help="agent role: may re-bind a registered name (of its prefix) to a new key.")
@click.pass_context
def token_create(
    ctx: click.Context, name: str, role: str, name_prefix: str | None, kind: str | None, rebind: bool
) -> None:
    """Create a token; it is shown once.  An agent-role token is an enrolment credential: it may only
    register agents (for `m99 serve --enrol token`, or agents on other machines)."""
    with operator(ctx) as op:
        data = op.create_token(name, role, name_prefix=name_prefix, kind=kind, rebind=rebind)
    click.echo(f"token {data['id']} for {data['name']} ({data['role']}): {data['token']}")
    click.echo("it is shown only now; the server keeps its SHA-256 hash", err=True)


@token.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """List tokens (never their values)."""
    with operator(ctx) as op:
        rows = [
            [t["id"], t["name"], t["role"], "revoked" if t["revoked_at"] else "live", safe(t.get("grants") or "")]
            for t in op.tokens()
        ]
    table(["ID", "NAME", "ROLE", "STATE", "GRANTS"], rows, [24, 32, 10, 8, 60])


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke the token with this id (the last live fleet token cannot be revoked)."""
    with operator(ctx) as op:
        op.revoke_token(token_id)
    click.echo(f"revoked {token_id}")


@token.command("recover")
@click.option(
    "--store",
    "store_url",
    envvar="M99_STORE",
    default=None,
    help="The control plane's store, if not SQLite in the data dir.",
)
@click.option("--by", required=True, help="Who recovers (e-mail): recorded in the audit chain.")
@click.pass_context
def token_recover(ctx: click.Context, store_url: str | None, by: str) -> None:
    """Mint a new admin (fleet) token straight from the data, on the server's machine: for when every
    fleet token is lost.  Needs the data directory (and its server key), not a token."""
    from ..config import resolve_data_dir
    from ..crypto import write_private
    from ..server import build

    data_dir = resolve_data_dir(ctx.find_root().obj["data_dir"])
    if not (data_dir / "server.key").exists() and not store_url:
        raise ConfigError(f"no control plane data in {data_dir}: pass --data-dir (or --store)")
    cp = build(data_dir, store_url=store_url)
    try:
        token_id, value = cp.tokens.recover(by)
    finally:
        cp.close()
    write_private(data_dir / TOKEN_FILE, value + "\n")
    click.echo(f"recovered: new admin token {token_id} written owner-only to {data_dir / TOKEN_FILE}")


COMMANDS = [token]
