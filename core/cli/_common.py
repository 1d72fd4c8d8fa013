"""What the commands share: the operator client, output helpers (JSON, tables that fit, human times)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["ago", "human_time", "operator", "plural", "print_json", "safe", "scope_option", "table", "when"]


def operator(ctx: click.Context) -> Any:
    from ..operator import OperatorClient

    obj = ctx.find_root().obj
    return OperatorClient(obj["url"], obj["token"], data_dir=obj["data_dir"])


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def safe(text: Any, width: int | None = None) -> str:
    """``text`` fit for a terminal: control characters shown as ``?``, cut to ``width`` with ``…``."""
    out = "".join(c if c.isprintable() else "?" for c in str(text))
    if width is not None and len(out) > width:
        out = out[: max(1, width - 1)] + "…"
    return out


def human_time(iso: str | None) -> str:
    """``2026-12-02T05:39:34.123456Z`` as ``2026-12-02 05:39:34 UTC``."""
    if not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return safe(iso)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(seconds: float) -> str:
    if seconds < 0:
        return "just now"
    if seconds < 60:
        return f"{seconds:.1f} s ago" if seconds < 10 else f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def when(iso: str | None) -> str:
    """A time as it reads best to a person: absolute, with how long ago (or how soon)."""
    if not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return safe(iso)
    delta = time.time() - moment
    rel = ago(delta) if delta >= 0 else f"in {ago(-delta).removesuffix(' ago')}"
    return f"{human_time(iso)} ({rel})"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], widths: Sequence[int]) -> None:
    """Columns as wide as their widest cell, up to ``widths`` (longer cells are cut with ``…``)."""
    cells = [[safe(c) for c in row] for row in rows]
    sizes = [
        min(cap, max([len(h)] + [len(r[i]) for r in cells])) if cap else max([len(h)] + [len(r[i]) for r in cells])
        for i, (h, cap) in enumerate(zip(headers, widths, strict=True))
    ]
    click.echo("  ".join(h.ljust(s) for h, s in zip(headers, sizes, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(safe(c, s).ljust(s) for c, s in zip(row, sizes, strict=True)).rstrip())


def _scope(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from ..protocol import Scope

    try:
        return str(Scope.parse(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def scope_option(**kwargs: Any) -> Callable[[F], F]:
    option: Callable[[F], F] = click.option(
        "--scope", callback=_scope, help="global | agent:NAME | class:KIND | framework:NAME", **kwargs
    )
    return option
