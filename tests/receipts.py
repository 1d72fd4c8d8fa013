"""A receipt of checks as a halted Guard signs it, for tests that acknowledge with a bare ControlLink."""

from __future__ import annotations

import time
from typing import Any


def halted(level: int = 6) -> dict[str, Any]:
    """Every positive check a Guard at ``level`` reports (the receipt of ``m99.effects.receipt``)."""
    return {
        "level": level,
        "checked_at": time.time(),
        "tools_refused": True,
        "connections_refused": True,
        "connections_open": 0,
        "messages_withheld": True,
        "credentials_protected": 0,
        "credentials_revoked": 0,
        "process_exit": "terminating",
    }
