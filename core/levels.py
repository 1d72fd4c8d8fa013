"""The six-level ladder, operator roles and scopes, as data.

Executing level N fires L1…LN in order.  L1–L3 are reversible by ``restore``; L4–L6 need an
authority to lift.  A scope names who is affected: one agent, a class (agent kind), a
framework, or every agent.
"""

from __future__ import annotations

from enum import IntEnum

from .protocol import Scope, valid_name


class Role(IntEnum):
    """Token roles, each including the ones below it.  ``agent`` is an enrolment credential: it may
    register agents (within its grant) and nothing else."""

    AGENT = -1
    VIEWER = 0
    OPERATOR = 1
    AUTHORITY = 2
    FLEET = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"unknown role {text!r}: expected one of {names}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class Level(IntEnum):
    CREDENTIAL_REVOCATION = 1
    SAAS_DISCONNECTION = 2
    TOOL_CALL_FREEZE = 3
    RESTRICTION = 4
    TARGETED_TERMINATION = 5
    FLEET_KILL = 6

    @property
    def title(self) -> str:
        return _TITLES[self]

    @property
    def reversible(self) -> bool:
        """Whether ``restore`` (operator role) may reverse it."""
        return self <= Level.TOOL_CALL_FREEZE

    @property
    def required_role(self) -> Role:
        """The least role that may arm, execute or lift this level."""
        if self <= Level.TOOL_CALL_FREEZE:
            return Role.OPERATOR
        if self <= Level.TARGETED_TERMINATION:
            return Role.AUTHORITY
        return Role.FLEET

    @property
    def effect(self) -> str:
        return _EFFECTS[self]

    @classmethod
    def parse(cls, value: int | str) -> Level:
        try:
            number = int(str(value).strip().upper().removeprefix("L"))
            return cls(number)
        except ValueError:
            raise ValueError(f"unknown level {value!r}: expected 1 to 6") from None


_TITLES = {
    Level.CREDENTIAL_REVOCATION: "credential revocation",
    Level.SAAS_DISCONNECTION: "SaaS disconnection",
    Level.TOOL_CALL_FREEZE: "tool-call freeze",
    Level.RESTRICTION: "restriction",
    Level.TARGETED_TERMINATION: "targeted termination",
    Level.FLEET_KILL: "fleet kill",
}

_EFFECTS = {
    Level.CREDENTIAL_REVOCATION: "registered secrets stripped, model clients' keys revoked, credentials marked revoked",
    Level.SAAS_DISCONNECTION: "outbound connections refused in-process, agent-to-agent messages withheld",
    Level.TOOL_CALL_FREEZE: "every tool call refused, check_status() raises; process stays alive",
    Level.RESTRICTION: "read-only lockdown: only tools declared read-only may run",
    Level.TARGETED_TERMINATION: "process terminated (SIGTERM, grace, SIGKILL), identity tombstoned",
    Level.FLEET_KILL: "targeted termination of every agent in scope",
}


def fleet_confirmation_phrase(scope: Scope) -> str:
    """The exact words an operator must type to execute L6 on ``scope``."""
    return f"KILL FLEET {scope}"


__all__ = ["Level", "Role", "Scope", "fleet_confirmation_phrase", "valid_name"]
