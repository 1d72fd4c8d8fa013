"""Persistence for the control plane: the ``Store`` contract (``base``), its typed records, and two
implementations — SQLite (the embedded default) and PostgreSQL (several replicas).

``open_store(url)`` picks one: ``postgresql://…`` (or ``postgres://…``), else ``sqlite:///PATH`` or a
plain path to an SQLite file.
"""

from __future__ import annotations

from pathlib import Path

from .base import ChangeBus, Store, StoreError, Tx
from .sqlite import SQLiteStore

__all__ = ["ChangeBus", "SQLiteStore", "Store", "StoreError", "Tx", "is_postgres", "open_store"]


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_store(url: str | Path) -> Store:
    """The store ``url`` names; ``StoreError`` if it cannot be opened."""
    text = str(url)
    if is_postgres(text):
        from .postgres import PostgresStore

        return PostgresStore(text)
    if text.startswith("sqlite://"):
        text = text.removeprefix("sqlite://")
        if not text.startswith("/"):
            raise StoreError(f"bad SQLite URL {url!r}: use sqlite:///absolute/path.db")
    elif "://" in text:
        raise StoreError(f"unknown store {text.split('://')[0]!r}: use postgresql://… or a path to an SQLite file")
    return SQLiteStore(Path(text))
