"""KILLSWITCH.md, the policy file of an agent's repository: parsed (``load_policy``), explained
(``explain``), and enforced by a pure decision engine (``PolicyEngine``) that the Guard consults.

``m99 policy check`` and ``m99 policy init`` are in ``m99.policy.cli``.
"""

from __future__ import annotations

from .audit_log import AuditLog
from .budget import AllowanceSource, Budget, DailyLedger, FixedAllowance, Reservation
from .decision import Decision, ModelTicket, PolicyEvent
from .engine import PolicyEngine
from .explain import Entry, explain, trigger_paths
from .forbidden import DEFAULT_ACTION_TOOLS, ActionMap, PathGuard, PathHit
from .model import Network, Policy, Problem, Stage
from .parse import MAX_BYTES, ParseResult, PolicyError, load_policy, parse_file, parse_text
from .prices import Price, PriceTable, resolve_prices

__all__ = [
    "DEFAULT_ACTION_TOOLS",
    "MAX_BYTES",
    "ActionMap",
    "AllowanceSource",
    "AuditLog",
    "Budget",
    "DailyLedger",
    "Decision",
    "Entry",
    "FixedAllowance",
    "ModelTicket",
    "Network",
    "ParseResult",
    "PathGuard",
    "PathHit",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "PolicyEvent",
    "Price",
    "PriceTable",
    "Problem",
    "Reservation",
    "Stage",
    "explain",
    "load_policy",
    "parse_file",
    "parse_text",
    "resolve_prices",
    "trigger_paths",
]
