"""`python -m tests.checks`: lint and type-check before the suite runs.

The README's test command and .ci/run both run this, then pytest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    code = subprocess.call([sys.executable, "-m", *cmd], cwd=ROOT)
    if code != 0:
        sys.exit(code)


def main() -> None:
    run("ruff", "check", ".")
    run("ruff", "format", "--check", ".")
    run("mypy", "--strict", "core", "adapters")


if __name__ == "__main__":
    main()
