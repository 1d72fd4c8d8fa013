"""Canonical JSON, SHA-256 fingerprints and Ed25519 keys.

Everything that is hashed or signed goes through ``canonical_json`` so that the same value
always gives the same bytes.  Secrets are only ever represented by ``fingerprint``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes that are hashed and signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def fingerprint(secret: str | bytes) -> str:
    """The only form in which a secret ever leaves the process: ``sha256:<hex>``."""
    return "sha256:" + sha256_hex(secret)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


class SigningKey:
    """An Ed25519 private key with its public half."""

    __slots__ = ("_key", "public_bytes")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_bytes = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Read the 32-byte seed at ``path``, or create it owner-only."""
        if path.exists():
            return cls.from_seed(unb64(path.read_text().strip()))
        key = cls.generate()
        seed = key._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        write_private(path, b64(seed) + "\n")
        return key

    def save(self, path: Path) -> None:
        seed = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
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
        self._key = Ed25519PublicKey.from_public_bytes(raw)

    @classmethod
    def from_b64(cls, text: str) -> VerifyKey:
        try:
            return cls(unb64(text))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad public key: {exc}") from None

    def verify(self, message: bytes, signature_b64: str) -> bool:
        try:
            self._key.verify(unb64(signature_b64), message)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
