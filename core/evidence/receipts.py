"""What makes an acknowledgement a confirmed halt: its receipt's positive checks for the level fired.

Pure, so the control plane's views and the offline case-pack verifier decide the same way.
"""

from __future__ import annotations

from typing import Any

__all__ = ["receipt_problems"]


def receipt_problems(receipt: Any, level: int) -> list[str]:
    """Why ``receipt`` does not confirm a halt at ``level`` (empty: it does)."""
    if not isinstance(receipt, dict) or not receipt:
        return ["the acknowledgement carries no receipt of checks"]
    problems: list[str] = []
    held = receipt.get("level")
    if not isinstance(held, int) or held < level:
        problems.append(f"the receipt shows L{held}, not L{level} or above")
    if level >= 3 and receipt.get("tools_refused") is not True:
        problems.append("a tool asked of the gate was not refused")
    if level >= 2 and receipt.get("connections_refused") is not True:
        problems.append("an outbound connection asked of the network gate was not refused")
    if level >= 2 and receipt.get("connections_open") not in (0, None):
        problems.append(f"{receipt.get('connections_open')} outbound connection(s) still open")
    if level >= 1:
        protected, revoked = receipt.get("credentials_protected"), receipt.get("credentials_revoked")
        if not isinstance(protected, int) or not isinstance(revoked, int):
            problems.append("no count of revoked credentials")
        elif revoked < protected:
            problems.append(f"{revoked} of {protected} protected credentials revoked")
    if level >= 5 and receipt.get("process_exit") != "terminating":
        problems.append("the process is not terminating")
    if receipt.get("failures"):
        problems.append(f"enforcement failures: {receipt['failures'][0]}")
    return problems
