"""``m99 audit``: verify the chain online or offline, export it, and anchor it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .. import audit as chain
from ..errors import ConfigError
from ._common import operator, print_json

__all__ = ["COMMANDS"]


@click.group()
def audit() -> None:
    """Verify, export or anchor the tamper-evident audit chain."""


def _anchors(files: tuple[str, ...]) -> list[chain.Checkpoint]:
    out = []
    for name in files:
        try:
            checkpoint, _key = chain.read_head_file(Path(name))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot use the anchor {name}: {exc}") from None
        out.append(checkpoint)
    return out


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
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="A signed checkpoint exported earlier (m99 audit anchor): entries it covers must all still be there.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def audit_verify(
    ctx: click.Context,
    db: str | None,
    jsonl: str | None,
    public_key: str | None,
    anchors: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check the whole chain: valid, or the first bad entry and why.  Exit 9 if it does not verify.

    Offline, deleting the newest entries together with their checkpoints and the head file cannot be
    told from a shorter chain: keep an anchor (``m99 audit anchor``) somewhere else, and pass it here.
    """
    from ..store.sqlite import verify_sqlite

    if db and jsonl:
        raise ConfigError("give --db or --jsonl, not both")
    anchored = _anchors(anchors)
    data: dict[str, Any]
    if db:
        data = verify_sqlite(Path(db), public_key_b64=public_key, anchors=anchored).to_dict()
    elif jsonl:
        data = chain.verify_jsonl(Path(jsonl), public_key_b64=public_key, anchors=anchored).to_dict()
    else:
        if anchored:
            raise ConfigError("--anchor is for offline verification (with --db or --jsonl)")
        with operator(ctx) as op:
            data = op.audit_verify()
    offline = bool(db or jsonl)
    if as_json:
        print_json(data)
    elif data["valid"]:
        click.echo(f"audit chain valid: {data['entries']} entries, head #{data['head_seq']} {data['head_hash'][:16]}…")
        if offline and not anchored:
            click.echo(
                "note: without an anchor (m99 audit anchor, kept elsewhere), removal of the newest entries "
                "together with their checkpoints cannot be ruled out"
            )
    if not data["valid"]:
        click.echo(f"m99: error: audit chain INVALID at entry {data.get('bad_seq')}: {data.get('reason')}", err=True)
        sys.exit(9)


@audit.command("export")
@click.option("--jsonl", "jsonl", is_flag=True, required=True, help="Export as JSON lines (one entry a line).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-", help="File to write (default stdout).")
@click.pass_context
def audit_export(ctx: click.Context, jsonl: bool, output: str) -> None:
    """Export the chain with its latest signed checkpoint, verifiable offline."""
    with operator(ctx) as op, click.open_file(output, "w") as out:
        count = 0
        for line in op.audit_export():
            if line:
                out.write(line + "\n")
                count += 1
    if output != "-":
        click.echo(f"wrote {count} lines to {output}", err=True)


@audit.command("anchor")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-", help="File to write (default stdout).")
@click.pass_context
def audit_anchor(ctx: click.Context, output: str) -> None:
    """Export a signed checkpoint of the chain's newest entry.  Keep it where the server's data is not
    (another machine, a ticket): `m99 audit verify --anchor FILE` then detects the removal of any entry
    it covers, even with the database's own checkpoints and head file deleted."""
    with operator(ctx) as op:
        anchor = op.anchor()
    text = json.dumps(anchor, sort_keys=True) + "\n"
    with click.open_file(output, "w") as out:
        out.write(text)
    if output != "-":
        click.echo(f"anchor at entry #{anchor['seq']} written to {output}", err=True)


COMMANDS = [audit]
