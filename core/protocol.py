"""What the control plane and its agents must agree on, written once for both sides.

- names and free text: the strict patterns every name, kind and framework must match end to end, and
  the check that keeps control characters out of ``by`` / ``reason``;
- scopes: ``global``, ``agent:NAME``, ``class:KIND``, ``framework:NAME`` and how they match an agent;
- signed messages: the bytes an agent signs for each request, the server's signed state documents and
  pushed events;
- Server-Sent Events framing of the push stream.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .crypto import SigningKey, VerifyKey, canonical_json

__all__ = [
    "DEFAULT_FRAMEWORK",
    "MAX_INT",
    "Scope",
    "agent_keys",
    "bad_text",
    "clean_frameworks",
    "document_signature_ok",
    "event_frame",
    "request_message",
    "sign_document",
    "sign_event",
    "sign_request",
    "valid_name",
    "verify_event",
]

# The framework an agent reports when it runs under none M99 knows (the SDK alone, a custom loop).
DEFAULT_FRAMEWORK = "custom"
# Every integer on the wire fits a signed 64-bit column, on every store.
MAX_INT = 2**63 - 1
MAX_FRAMEWORKS = 16

# ``\Z``, not ``$``: ``$`` also matches before a trailing newline, and a name ending in one would
# escape every scope that names it.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}\Z")
NAME_RULE = "1-128 letters, digits or ._:@/+- (starting with a letter or digit)"


def valid_name(text: object) -> bool:
    """Whether ``text`` is a valid agent name, kind, framework or token name."""
    return isinstance(text, str) and _NAME.match(text) is not None


def bad_text(text: str) -> str | None:
    """Why ``text`` may not be recorded as a ``by`` or ``reason`` (a control, format or surrogate
    character: NUL, escape sequences, RTL overrides), or None when it may."""
    for index, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            return f"character {index + 1} is a control character (U+{ord(char):04X})"
    return None


def clean_frameworks(names: Iterable[str] | None) -> tuple[str, ...]:
    """The sorted, distinct framework names an agent runs under; ``(DEFAULT_FRAMEWORK,)`` for none.

    Raises ValueError for a name that is not a valid name, or too many of them."""
    found = sorted({str(n) for n in names or ()})
    if len(found) > MAX_FRAMEWORKS:
        raise ValueError(f"at most {MAX_FRAMEWORKS} frameworks")
    for name in found:
        if not valid_name(name):
            raise ValueError(f"bad framework {name!r}: {NAME_RULE}")
    return tuple(found) or (DEFAULT_FRAMEWORK,)


@dataclass(frozen=True, slots=True)
class Scope:
    """Who a directive applies to: ``global``, ``agent:NAME``, ``class:KIND`` or ``framework:NAME``."""

    kind: str  # "global" | "agent" | "class" | "framework"
    value: str = ""

    KINDS = ("agent", "class", "framework")

    @classmethod
    def parse(cls, text: object) -> Scope:
        """The scope ``text`` names.  Nothing is stripped or guessed: an empty or padded scope is an
        error, never the global one."""
        if not isinstance(text, str) or not text:
            raise ValueError("a scope is required: global, agent:NAME, class:KIND or framework:NAME")
        if text == "global":
            return cls("global")
        kind, sep, value = text.partition(":")
        if not sep or kind not in cls.KINDS:
            raise ValueError(f"bad scope {text!r}: expected global, agent:NAME, class:KIND or framework:NAME")
        if not valid_name(value):
            raise ValueError(f"bad scope {text!r}: the name after {kind}: must be {NAME_RULE}")
        return cls(kind, value)

    def __str__(self) -> str:
        return "global" if self.kind == "global" else f"{self.kind}:{self.value}"

    def matches(self, name: str, kind: str, frameworks: Collection[str]) -> bool:
        """Whether an agent with this name, kind and frameworks is inside the scope."""
        if self.kind == "global":
            return True
        if self.kind == "agent":
            return self.value == name
        if self.kind == "class":
            return self.value == kind
        return self.value in frameworks

    def covers(self, other: Scope, agents: Mapping[str, tuple[str, Collection[str]]] | None = None) -> bool:
        """Whether lifting ``self`` may lift a directive scoped to ``other``.

        ``agents`` maps agent names to (kind, frameworks) so that ``class:K`` covers ``agent:X`` when
        X is of kind K (and ``framework:F`` when X runs under F).
        """
        if self.kind == "global" or self == other:
            return True
        if other.kind == "agent" and self.kind in ("class", "framework") and agents:
            kind, frameworks = agents.get(other.value, ("", ()))
            return self.value == kind if self.kind == "class" else self.value in frameworks
        return False


def agent_keys(name: str, kind: str, frameworks: Iterable[str]) -> tuple[str, ...]:
    """Every scope key that covers this agent: a directive index looks up these and nothing else."""
    return ("global", f"agent:{name}", f"class:{kind}", *(f"framework:{f}" for f in frameworks))


# -- signed messages ------------------------------------------------------------------------------------


def request_message(kind: str, agent_id: str, body: Mapping[str, Any]) -> bytes:
    """The bytes an agent signs for a request of ``kind`` (register, heartbeat, ack, deregister,
    events): every field of the body but the signature, with the kind and the agent id."""
    fields = {k: v for k, v in body.items() if k != "signature"}
    return canonical_json({**fields, "type": kind, "agent_id": agent_id})


def sign_request(key: SigningKey, kind: str, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its signature added."""
    body["signature"] = key.sign(request_message(kind, agent_id, body))
    return body


def sign_document(key: SigningKey, document: dict[str, Any]) -> dict[str, Any]:
    """A server-signed document (an agent's state, a snapshot): ``{"document", "signature"}``."""
    return {"document": document, "signature": key.sign(canonical_json(document))}


def document_signature_ok(key: VerifyKey, signed: object) -> dict[str, Any] | None:
    """The document inside ``signed`` if ``key`` signed it, else None."""
    if not isinstance(signed, dict):
        return None
    doc = signed.get("document")
    if not isinstance(doc, dict) or not key.verify(canonical_json(doc), str(signed.get("signature", ""))):
        return None
    return doc


def sign_event(key: SigningKey, event: dict[str, Any]) -> bytes:
    """A pushed event as the control plane sends it: the event and its signature, canonical JSON."""
    return canonical_json({"event": event, "signature": key.sign(canonical_json(event))})


def verify_event(key: VerifyKey, payload: object) -> dict[str, Any] | None:
    """The event inside a pushed payload if ``key`` signed it, else None."""
    if not isinstance(payload, dict):
        return None
    event = payload.get("event")
    if not isinstance(event, dict) or not key.verify(canonical_json(event), str(payload.get("signature", ""))):
        return None
    return event


# -- Server-Sent Events ---------------------------------------------------------------------------------

KEEPALIVE_FRAME = b": keep-alive\n\n"


def event_frame(kind: str, data: bytes) -> bytes:
    """One SSE event: ``event: KIND`` and one ``data:`` line (the payloads are single-line JSON)."""
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
