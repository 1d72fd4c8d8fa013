"""`python -m tests`: lint, type-check the core, then run the test suite — the one test
command of the README and of CI.  Extra arguments go to pytest."""

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
    run("mypy", "--strict", "core")
    run("pytest", *sys.argv[1:])


if __name__ == "__main__":
    main()
