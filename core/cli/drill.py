"""``m99 drill``: a real, audited kill marked as a drill (L1-L3), measured, restored, with its case pack."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError
from ._common import operator, safe

__all__ = ["drill"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_every(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s`` or ``0`` (no schedule) in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not match:
        raise ConfigError(f"bad --every {text!r}: expected a number and a unit, such as 7d, 12h or 30m")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@click.command()
@click.option("--scope", default=None, help="Who the drill stops: global, agent:NAME, class:KIND or framework:NAME.")
@click.option("--level", default=3, show_default=True, type=int, help="L1-L3 (drills never go past L3).")
@click.option("--by", "by", required=True, help="The named human running the drill (recorded).")
@click.option("--reason", default="scheduled drill", show_default=True, help="Recorded with the drill.")
@click.option(
    "--every", default=None, help="Record a drill schedule (7d, 12h, 0 for none); m99 status warns when one is overdue."
)
@click.option(
    "--wait",
    "wait",
    default=None,
    type=float,
    help="Seconds to wait for confirmations (default: 2 x the SLO, at least 10).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Case pack file (default: drill-ID.casepack.zip).",
)
@click.pass_context
def drill(
    ctx: click.Context,
    scope: str | None,
    level: int,
    by: str,
    reason: str,
    every: str | None,
    wait: float | None,
    output: str | None,
) -> None:
    """Run a drill: arm and execute on --scope (audited, origin drill), measure every agent's confirmed
    time-to-halt, restore, write the case pack and report.  Exits 0 only if every agent in scope was
    confirmed halted within the SLO and came back."""
    with operator(ctx) as op:
        if every is not None:
            sched = op.drill_schedule(parse_every(every), by=by)
            click.echo(f"drill schedule: every {sched['every_seconds']:g} s; next due {sched.get('due', 'never')}")
            if scope is None:
                return
        if scope is None:
            raise ConfigError("--scope is required to run a drill (or give --every alone to record a schedule)")
        started = op.drill(scope, level, by=by, reason=reason)
        execution_id, agents = started["execution_id"], started["agents"]
        slo = float(op.status()["settings"]["halt_slo"])
        deadline = time.monotonic() + (wait if wait is not None else max(10.0, 2 * slo))
        view: dict[str, Any] = op.execution(execution_id)
        while view["time_to_halt"]["confirmed"] < len(agents) and time.monotonic() < deadline:
            time.sleep(0.1)
            view = op.execution(execution_id)
        op.restore(scope, by=by, reason=f"end of drill {execution_id}")
        back_by = time.monotonic() + 10.0
        levels: dict[str, int] = {}
        while time.monotonic() < back_by:
            levels = {a["name"]: a["level"] for a in op.agents() if a["name"] in agents}
            if all(levels.get(name, 1) == 0 for name in agents):
                break
            time.sleep(0.1)
        pack = op.casepack(execution_id)
    path = Path(output or f"drill-{execution_id}.casepack.zip")
    path.write_bytes(pack)
    halt = view["time_to_halt"]
    slo_ms = halt["slo_ms"]
    click.echo(f"drill {execution_id}: L{level} on {scope}, {len(agents)} agent(s), SLO {slo:g} s")
    failed = False
    for name in agents:
        ms = halt["per_agent"].get(name)
        came_back = levels.get(name) == 0
        if ms is None:
            why = halt.get("not_confirmed_why", {}).get(name, "not acknowledged")
            line, failed = f"NOT confirmed ({why})", True
        else:
            line = f"confirmed in {ms:.1f} ms" + (" (OVER the SLO)" if ms > slo_ms else "")
            failed = failed or ms > slo_ms
        failed = failed or not came_back
        click.echo(f"  {safe(name):<32} {line}; {'restored' if came_back else 'did NOT come back'}")
    slowest = halt["max_ms"]
    click.echo(
        f"overall: {halt['confirmed']} of {len(agents)} confirmed"
        + (f", slowest {slowest:.1f} ms" if slowest is not None else "")
        + f"; case pack {path} (m99 casepack verify {path})"
    )
    if failed:
        click.echo("m99: error: drill FAILED: not every agent was confirmed within the SLO and came back", err=True)
        sys.exit(1)
    click.echo("drill passed")
