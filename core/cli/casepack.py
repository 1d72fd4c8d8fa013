"""``m99 casepack``: fetch an execution's case pack, and verify one offline with nothing but the file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import operator, print_json

__all__ = ["casepack"]


@click.group()
def casepack() -> None:
    """Case packs: one signed zip per halt (authorisation, snapshots, receipts, audit slice, keys)."""


@casepack.command("get")
@click.argument("execution_id")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default=None, help="File to write (default: ID.casepack.zip)."
)
@click.pass_context
def casepack_get(ctx: click.Context, execution_id: str, output: str | None) -> None:
    """Write the case pack of EXECUTION_ID (m99 executions lists them) to a file."""
    with operator(ctx) as op:
        data = op.casepack(execution_id)
    path = Path(output or f"{execution_id}.casepack.zip")
    path.write_bytes(data)
    click.echo(f"wrote {path} ({len(data)} bytes); check it anywhere with: m99 casepack verify {path}")


@casepack.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--public-key", default=None, help="Pin the server's public key (base64): the pack must be signed by it.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def casepack_verify(file: str, public_key: str | None, as_json: bool) -> None:
    """Check every signature, hash and chain link of a case pack offline (no server needed).  Exits 0
    when it verifies, 9 naming the first member and check that does not."""
    from ..evidence.casepack import CasePackInvalid, verify

    try:
        report = verify(Path(file).read_bytes(), public_key=public_key)
    except CasePackInvalid as exc:
        if as_json:
            print_json({"valid": False, "member": exc.member, "check": exc.check, "detail": exc.detail})
        click.echo(f"m99: error: case pack INVALID: {exc.member}: {exc.check} failed: {exc.detail}", err=True)
        sys.exit(9)
    if as_json:
        print_json(report.to_dict())
        return
    slowest = report.slowest_ms
    click.echo(
        f"case pack valid: execution {report.execution_id}, L{report.level} on {report.scope} ({report.origin}), "
        f"server key {report.server_key[:16]}…"
    )
    click.echo(
        f"  {len(report.confirmed)} of {report.in_scope} agents confirmed halted"
        + (f", slowest {slowest:.1f} ms" if slowest is not None else "")
        + f" (SLO {report.slo_ms / 1000:g} s): "
        + ("within the SLO" if report.within_slo else "NOT within the SLO")
    )
    for name, ms in sorted(report.confirmed.items(), key=lambda item: -item[1])[:10]:
        click.echo(f"  confirmed      {name:<32} {ms:9.1f} ms")
    for name, why in sorted(report.not_confirmed.items()):
        click.echo(f"  NOT confirmed  {name:<32} {why}")
    click.echo(
        f"  {report.audit_entries} audit entries linked to a signed checkpoint; "
        f"evidence from {len(report.evidence)} agent(s); every member's hash and signature checked"
    )
