"""The credentials a Guard strips at L1: environment variables, attributes, mapping items and raw secrets.

Originals stay in this process's memory and are put back exactly on restore; outside the process a
secret only ever appears as its SHA-256 fingerprint.  Known secret values are redacted from tool I/O.

Several Guards of one process may protect the same place (the process's Guard and a framework agent's
both protect ``OPENAI_API_KEY``, or the model client they share): it is stripped while any of them is at
L1+, and only the last of them to be restored puts the original back.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass
from typing import Any, NoReturn

from .crypto import fingerprint
from .errors import M99KillSwitchTriggered

__all__ = ["MIN_REDACT_LENGTH", "REDACTED", "CredentialSet", "RevokedCredential", "revoked_value"]

logger = logging.getLogger("m99.credentials")

REDACTED = "[REDACTED:m99]"
# Shorter values (flags such as "1" or "yes") would shred every output they appear in; they are still
# revoked and fingerprinted, only not redacted.
MIN_REDACT_LENGTH = 4
# Deeper structures are cut off (fail closed) rather than risking a RecursionError in the host.
_MAX_DEPTH = 64


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


class RevokedCredential(str):
    """What a revoked string credential is replaced with: an *empty* ``str`` that names itself.

    Empty on purpose: SDKs test ``if not api_key`` before building the Authorization header (the openai
    client raises locally and sends nothing), whereas a non-empty placeholder such as ``"m99-revoked"``
    would go over the wire as a bearer token and reach the vendor as a failed login.
    """

    label: str

    def __new__(cls, label: str = "") -> RevokedCredential:
        self = super().__new__(cls, "")
        self.label = label
        return self

    def __repr__(self) -> str:
        return f"<credential {self.label!r} revoked by m99>"


def _revoked_callable(label: str) -> Callable[..., NoReturn]:
    def revoked(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise M99KillSwitchTriggered(f"M99: credential {label!r} is revoked (L1)", level=1, reason="L1")

    revoked.__qualname__ = revoked.__name__ = f"m99_revoked_{label}"
    return revoked


def revoked_value(original: Any, label: str) -> Any:
    """The placeholder that fails locally for ``original``'s type (str, bytes, SecretStr-like, callable)."""
    if isinstance(original, str):
        return RevokedCredential(label)
    if isinstance(original, bytes | bytearray):
        return type(original)()
    if hasattr(original, "get_secret_value"):  # pydantic SecretStr / SecretBytes
        try:
            return type(original)("")
        except Exception:
            return RevokedCredential(label)
    if callable(original):  # key providers, e.g. openai's ``api_key=lambda: ...``
        return _revoked_callable(label)
    return RevokedCredential(label)


def _secret_text(value: Any) -> str | bytes | None:
    """The secret a credential object holds, for fingerprints and redaction."""
    if isinstance(value, RevokedCredential):
        return None
    if isinstance(value, str | bytes):
        return value or None
    if isinstance(value, bytearray):
        return bytes(value) or None
    getter = getattr(value, "get_secret_value", None)
    if callable(getter):
        try:
            inner = getter()
        except Exception:
            return None
        return inner if isinstance(inner, str | bytes) and inner else None
    return None


@dataclass(eq=False)
class _Entry:
    kind: str  # "env" | "secret" | "attribute" | "item"
    label: str
    value: str | bytes | None = None  # last secret value seen (redaction, fingerprint)
    target: Any = None  # the object (attribute) or mapping (item)
    key: Any = None  # env var name, attribute name or mapping key
    placeholder: Any = _MISSING  # explicit replacement, or _MISSING for ``revoked_value``
    revoked: bool = False
    failure: str = ""

    @property
    def place(self) -> tuple[Hashable, ...]:
        """Where the credential lives.  By ``id`` of the object: the entry keeps it alive meanwhile."""
        if self.kind == "env":
            return ("env", self.key)
        return (self.kind, id(self.target), self.key)


@dataclass(eq=False)
class _Revoked:
    """A place some Guards hold revoked: the original, the placeholder put there, and who holds it."""

    original: Any
    installed: Any
    holders: set[int]


# Every revoked place of the process, shared by all its Guards (each CredentialSet is one holder).
_revoked_lock = threading.Lock()
_revoked: dict[tuple[Hashable, ...], _Revoked] = {}


def _original_at(place: tuple[Hashable, ...]) -> Any:
    """What a place held before another Guard revoked it (_MISSING if no Guard holds it revoked)."""
    with _revoked_lock:
        held = _revoked.get(place)
    return _MISSING if held is None else held.original


def _set_attribute(obj: Any, name: str, value: Any) -> None:
    try:
        setattr(obj, name, value)
    except (AttributeError, TypeError, ValueError):
        # Frozen dataclasses / pydantic models refuse setattr; revocation must still happen.
        object.__setattr__(obj, name, value)


class CredentialSet:
    """The registered credentials of one Guard; the Guard serialises every call under its lock."""

    __slots__ = ("_entries", "_pattern_bytes", "_pattern_str", "revoked")

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._pattern_str: re.Pattern[str] | None = None
        self._pattern_bytes: re.Pattern[bytes] | None = None
        self.revoked = False

    # -- registration -------------------------------------------------------------------------------

    def add_env(self, name: str, label: str = "") -> None:
        if not name or "=" in name:
            raise ValueError(f"not an environment variable name: {name!r}")
        if any(e.kind == "env" and e.key == name for e in self._entries):
            return
        value: str | bytes | None = os.environ.get(name)
        if value is None:  # stripped by another Guard's L1: its fingerprint is the original's
            value = _secret_text(_original_at(("env", name)))
        self._add(_Entry("env", label or name, value=value or None, key=name))

    def add_secret(self, value: str | bytes, label: str = "secret") -> None:
        if not isinstance(value, str | bytes) or not value:
            raise ValueError("protect_secret needs a non-empty str or bytes")
        if any(e.kind == "secret" and e.value == value for e in self._entries):
            return
        if len(value) < MIN_REDACT_LENGTH:
            logger.warning(
                "secret %r is shorter than %d characters: fingerprinted, not redacted",
                label,
                MIN_REDACT_LENGTH,
            )
        self._add(_Entry("secret", label, value=value))

    def add_attribute(self, obj: Any, name: str, label: str = "", placeholder: Any = _MISSING) -> None:
        current = getattr(obj, name)  # AttributeError now, at setup, rather than silently at L1
        if any(e.kind == "attribute" and e.target is obj and e.key == name for e in self._entries):
            return
        before = _original_at(("attribute", id(obj), name))  # revoked by another Guard right now
        value = _secret_text(current if before is _MISSING else before)
        entry = _Entry("attribute", label or name, value=value, target=obj, key=name)
        entry.placeholder = placeholder
        self._add(entry)

    def add_item(
        self, mapping: MutableMapping[Any, Any], key: Any, label: str = "", placeholder: Any = _MISSING
    ) -> None:
        if any(e.kind == "item" and e.target is mapping and e.key == key for e in self._entries):
            return
        before = _original_at(("item", id(mapping), key))
        value = _secret_text(mapping.get(key) if before is _MISSING else before)
        entry = _Entry("item", label or str(key), value=value, target=mapping, key=key)
        entry.placeholder = placeholder
        self._add(entry)

    def _add(self, entry: _Entry) -> None:
        self._entries.append(entry)
        if self.revoked:
            self._revoke(entry)
        self._compile()

    # -- L1 -----------------------------------------------------------------------------------------

    def revoke_all(self) -> None:
        self.revoked = True
        for entry in self._entries:
            self._revoke(entry)
        self._compile()

    def restore_all(self) -> None:
        self.revoked = False
        for entry in reversed(self._entries):
            self._restore(entry)

    def _revoke(self, entry: _Entry) -> None:
        if entry.revoked or entry.kind == "secret":
            return  # raw secrets have nothing to strip: L1 only turns their redaction on
        try:
            with _revoked_lock:
                held = _revoked.get(entry.place)
                if held is None:  # the first Guard to revoke this place strips it
                    held = self._strip(entry)
                    if held is None:
                        return  # nothing there to revoke; restore leaves it alone
                    _revoked[entry.place] = held
                held.holders.add(id(self))
            entry.value = _secret_text(held.original) or entry.value
            entry.revoked = True
            entry.failure = ""
        except Exception as exc:  # one stubborn object must not stop the other revocations
            entry.failure = f"{type(exc).__name__}: {exc}"
            logger.error("m99: could not revoke credential %r (%s): %s", entry.label, entry.kind, entry.failure)

    def _strip(self, entry: _Entry) -> _Revoked | None:
        if entry.kind == "env":
            value = os.environ.pop(entry.key, None)
            return None if value is None else _Revoked(value, _MISSING, set())
        current = self._read(entry)
        if current is _MISSING or current is None:
            return None
        installed = revoked_value(current, entry.label) if entry.placeholder is _MISSING else entry.placeholder
        self._write(entry, installed)
        return _Revoked(current, installed, set())

    def _restore(self, entry: _Entry) -> None:
        if not entry.revoked or entry.kind == "secret":
            return
        entry.revoked = False
        with _revoked_lock:
            held = _revoked.get(entry.place)
            if held is None:
                return
            held.holders.discard(id(self))
            if held.holders:
                return  # another Guard still holds it revoked: the last one puts it back
            del _revoked[entry.place]
        try:
            if entry.kind == "env":
                os.environ[entry.key] = held.original
            else:
                if self._read(entry) is not held.installed:
                    logger.warning("m99: credential %r was changed while revoked; restoring the original", entry.label)
                self._write(entry, held.original)
        except Exception as exc:
            entry.failure = f"restore: {type(exc).__name__}: {exc}"
            logger.error("m99: could not restore credential %r: %s", entry.label, entry.failure)

    @staticmethod
    def _read(entry: _Entry) -> Any:
        if entry.kind == "attribute":
            return getattr(entry.target, entry.key, _MISSING)
        return entry.target.get(entry.key, _MISSING)

    @staticmethod
    def _write(entry: _Entry, value: Any) -> None:
        if entry.kind == "attribute":
            _set_attribute(entry.target, entry.key, value)
        else:
            entry.target[entry.key] = value

    # -- reporting ----------------------------------------------------------------------------------

    def fingerprints(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in self._entries:
            if entry.value is None:
                continue
            item: dict[str, Any] = {
                "label": entry.label,
                "fingerprint": fingerprint(entry.value),
                "kind": "attribute" if entry.kind == "item" else entry.kind,
                "revoked": self.revoked if entry.kind == "secret" else entry.revoked,
            }
            if entry.failure:
                item["failure"] = entry.failure
            out.append(item)
        return out

    def failures(self) -> list[str]:
        return [f"{e.label}: {e.failure}" for e in self._entries if e.failure]

    # -- redaction ----------------------------------------------------------------------------------

    def _compile(self) -> None:
        texts: set[str] = set()
        raws: set[bytes] = set()
        for entry in self._entries:
            value = entry.value
            if value is None or len(value) < MIN_REDACT_LENGTH:
                continue
            if isinstance(value, str):
                texts.add(value)
                raws.add(value.encode())
            else:
                raws.add(value)
                try:
                    texts.add(value.decode())
                except UnicodeDecodeError:
                    pass
        # Longest first so that a secret containing another is replaced whole.
        self._pattern_str = (
            re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True))) if texts else None
        )
        self._pattern_bytes = (
            re.compile(b"|".join(re.escape(r) for r in sorted(raws, key=len, reverse=True))) if raws else None
        )

    def redact(self, value: Any) -> Any:
        """``value`` with every known secret replaced by ``REDACTED``; the same object when none occurs."""
        if self._pattern_str is None and self._pattern_bytes is None:
            return value
        return self._redact(value, 0, set())

    def _redact(self, value: Any, depth: int, active: set[int]) -> Any:
        if isinstance(value, str):
            pattern = self._pattern_str
            if pattern is None or pattern.search(value) is None:
                return value
            return pattern.sub(REDACTED, value)
        if isinstance(value, bytes | bytearray):
            raw = self._pattern_bytes
            if raw is None or raw.search(value) is None:
                return value
            return type(value)(raw.sub(REDACTED.encode(), bytes(value)))
        if not isinstance(value, dict | list | tuple | set | frozenset):
            return value
        if depth >= _MAX_DEPTH or id(value) in active:
            return REDACTED  # too deep, or a cycle: fail closed instead of recursing forever
        active.add(id(value))
        try:
            return self._redact_container(value, depth + 1, active)
        finally:
            active.discard(id(value))

    def _redact_container(self, value: Any, depth: int, active: set[int]) -> Any:
        if isinstance(value, dict):
            pairs = [(self._redact(k, depth, active), self._redact(v, depth, active)) for k, v in value.items()]
            if all(nk is k and nv is v for (nk, nv), (k, v) in zip(pairs, value.items(), strict=True)):
                return value
            return _rebuild(value, pairs, dict)
        items = [self._redact(item, depth, active) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
            try:
                return type(value)(*items)
            except Exception:
                return tuple(items)
        base: type[Any] = list if isinstance(value, list) else tuple if isinstance(value, tuple) else set
        if isinstance(value, frozenset):
            base = frozenset
        return _rebuild(value, items, base)


def _rebuild(original: Any, items: Any, base: type[Any]) -> Any:
    if type(original) is base:
        return base(items)
    try:  # keep subclasses (OrderedDict, UserList-likes) when their constructor allows it
        return type(original)(items)
    except Exception:
        return base(items)
