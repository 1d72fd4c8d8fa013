"""Canonical JSON, SHA-256 fingerprints and Ed25519 keys.

Everything that is hashed or signed goes through ``canonical_json`` so that the same value
always gives the same bytes.  Secrets are only ever represented by ``fingerprint``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@cache
def _ed25519() -> SimpleNamespace:
    """The cryptography library, imported on first use of a key: ``import m99`` (and the operator's CLI)
    need only JSON and hashes, and the library takes tens of milliseconds to load."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    return SimpleNamespace(
        InvalidSignature=InvalidSignature,
        serialization=serialization,
        Private=Ed25519PrivateKey,
        Public=Ed25519PublicKey,
    )


def _seed_of(key: Ed25519PrivateKey) -> bytes:
    s = _ed25519().serialization
    return key.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes that are hashed and signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def fingerprint(secret: str | bytes) -> str:
    """How an agent sends a secret's identity to its control plane: ``sha256:<hex>``.  The control plane
    keeps only ``keyed_fingerprint`` of it, so a reader of its records cannot confirm a guess."""
    return "sha256:" + sha256_hex(secret)


def keyed_fingerprint(key: bytes, value: str | bytes) -> str:
    """``hmac-sha256:<hex>`` of ``value`` under a per-deployment key: what is stored and audited."""
    if isinstance(value, str):
        value = value.encode()
    return "hmac-sha256:" + hmac.new(key, value, hashlib.sha256).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


class SigningKey:
    """An Ed25519 private key with its public half."""

    __slots__ = ("_key", "public_bytes")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        s = _ed25519().serialization
        self.public_bytes = key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(_ed25519().Private.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        return cls(_ed25519().Private.from_private_bytes(seed))

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """The key whose base64 seed is in ``path``; ValueError if the file does not hold one."""
        try:
            return cls.from_seed(unb64(path.read_text().strip()))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path} does not hold an M99 key (a base64 Ed25519 seed): {exc}") from None

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Read the key at ``path``, or create it owner-only.  Two processes creating the same file at
        once end up with the same key: the file is linked into place only if it does not exist yet."""
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        seed = _seed_of(key._key)
        tmp = _write_temp(path, b64(seed) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return cls.load(path)
        finally:
            os.unlink(tmp)
        return key

    def derive(self, label: str) -> bytes:
        """A 32-byte secret for ``label`` derived from this key (replicas sharing the key share it)."""
        seed = _seed_of(self._key)
        return hmac.new(seed, b"m99/" + label.encode(), hashlib.sha256).digest()

    def save(self, path: Path) -> None:
        seed = _seed_of(self._key)
        write_private(path, b64(seed) + "\n")

    @property
    def public_b64(self) -> str:
        return b64(self.public_bytes)

    @property
    def public_fingerprint(self) -> str:
        return fingerprint(self.public_bytes)

    def sign(self, message: bytes) -> str:
        return b64(self._key.sign(message))


class VerifyKey:
    """An Ed25519 public key that checks signatures made by ``SigningKey.sign``."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self.raw = raw
        self._key = _ed25519().Public.from_public_bytes(raw)

    @classmethod
    def from_b64(cls, text: str) -> VerifyKey:
        try:
            return cls(unb64(text))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad public key: {exc}") from None

    def verify(self, message: bytes, signature_b64: str) -> bool:
        try:
            self._key.verify(unb64(signature_b64), message)
        except (_ed25519().InvalidSignature, ValueError, TypeError):
            return False
        return True


def _write_temp(path: Path, text: str) -> str:
    """``text`` in a new owner-only file beside ``path``, flushed to disk; its name."""
    import tempfile  # only when a file is written: importing it costs every process ~5 ms

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    os.replace(_write_temp(path, text), path)
