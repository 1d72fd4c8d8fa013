"""The documentation site builds with warnings as errors (broken links and anchors included), offline, and
every ``m99`` command and option the pages and the README show exists as shown."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from m99.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]


def test_the_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install 'm99[docs]'")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install 'm99[docs]'")
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    api = (site / "api" / "index.html").read_text()
    # The reference is the schema of the app that runs: every operator and agent route is on it.
    for route in ("POST /api/arm", "POST /api/execute", "GET /api/audit/verify", "POST /api/agents/register"):
        assert route in api, route
    assert (site / "openapi.json").read_text().startswith("{")
    for page in ("quickstart", "levels", "scopes", "policy", "operations", "observability", "threat-model"):
        assert (site / page / "index.html").exists(), page
    for framework in ("langchain", "crewai", "autogen"):
        assert (site / "frameworks" / framework / "index.html").exists(), framework
    # Nothing the pages need comes from the network: no web fonts, no CDN scripts or styles.
    for html in site.rglob("*.html"):
        text = html.read_text()
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, html
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", text), html


def _commands(text: str) -> list[str]:
    """``m99 …`` command lines in code blocks and inline code."""
    found: list[str] = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        found += [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("m99 ")]
    found += [span for span in re.findall(r"`(m99 [^`]+)`", text)]
    return found


def _resolve(words: list[str]) -> tuple[click.Command, set[str], list[str]]:
    """The command ``words`` name, the options it and the group accept, and the words after it."""
    ctx = click.Context(cli)
    command: click.Command = cli
    options = {o for p in cli.params for o in p.opts}
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise AssertionError(f"no such command: m99 {' '.join(words)}")
        command, rest = sub, rest[1:]
    options |= {o for p in command.params for o in p.opts + p.secondary_opts} | {"--help", "-h"}
    return command, options, rest


def test_every_documented_command_and_option_exists() -> None:
    checked = 0
    for page in PAGES:
        for line in _commands(page.read_text()):
            try:
                words = shlex.split(line.replace("…", "X"))[1:]
            except ValueError:
                continue
            words = words[: words.index("--")] if "--" in words else words
            words = words[: next((i for i, w in enumerate(words) if w in ("|", "&&", ";")), len(words))]
            words = [w.strip("[]()\\") for w in words]
            words = [w for w in words if w]
            if not words:
                continue
            _, options, rest = _resolve(words)
            for word in (w.strip("[]()\\") for w in rest):
                if word.startswith("--"):
                    assert word.split("=")[0] in options, f"{page.name}: `{line}`: no option {word}"
            checked += 1
    assert checked > 40, checked  # the pages do show the CLI
