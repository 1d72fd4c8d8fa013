"""The unit of work: one store transaction, the audit entries it appends, and the signed checkpoint of
the chain head they end at, all committed together.

Entries are appended at the end of the transaction, after the audit head is locked, so every writer —
every thread, every replica on one PostgreSQL — extends one chain with no gaps or forks.  After the
commit the head file beside the data is rewritten (a copy of the newest checkpoint outside the
database) and the unit's ``after`` callbacks run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import audit
from ..crypto import SigningKey
from ..store import Store, Tx
from ..store.records import AuditRow

__all__ = ["CHECKPOINT_EVERY", "SYSTEM_ACTOR", "Ledger", "Unit"]

log = logging.getLogger("m99.control")

SYSTEM_ACTOR: dict[str, Any] = {"by": "m99", "role": "system"}
# Keep the newest checkpoint and one per CHECKPOINT_EVERY entries: each kept one costs a signature check
# when verifying, and the hash links already cover everything before the newest.
CHECKPOINT_EVERY = 1000


class Unit:
    """What a unit of work collects: its transaction, its audit entries and what runs after commit."""

    __slots__ = ("_after", "entries", "tx")

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self.entries: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self._after: list[Callable[[], object]] = []

    def audit(self, kind: str, actor: dict[str, Any], data: dict[str, Any]) -> None:
        self.entries.append((kind, actor, data))

    def after(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` once the unit has committed (never if it rolls back)."""
        self._after.append(callback)


class Ledger:
    """Units of work over ``store``, with the audit chain signed by ``key``."""

    def __init__(self, store: Store, key: SigningKey, head_file: Path | None) -> None:
        self.store = store
        self.key = key
        self.head_file = head_file
        self._local = threading.local()
        self._head_lock = threading.Lock()
        with store.snapshot() as tx:
            head = tx.audit_head()
        self._head: tuple[int, str] = head if head else (-1, audit.GENESIS_PREV)
        if head_file is not None:
            # What a process killed while writing the head file leaves behind.
            for stale in head_file.parent.glob(f".{head_file.name}.*.tmp"):
                stale.unlink(missing_ok=True)

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest entry this process knows of."""
        return self._head

    @contextmanager
    def unit(self) -> Iterator[Unit]:
        """One unit of work; nested calls on a thread join the outer one."""
        outer: Unit | None = getattr(self._local, "unit", None)
        if outer is not None:
            yield outer
            return
        checkpoint: audit.Checkpoint | None = None
        try:
            with self.store.transaction() as tx:
                unit = Unit(tx)
                self._local.unit = unit
                yield unit
                checkpoint = self._append(unit)
        finally:
            self._local.unit = None
        if checkpoint is not None:
            self._committed(checkpoint)
        for callback in unit._after:
            try:
                callback()
            except Exception:  # what follows a commit must not undo it
                log.exception("m99: after-commit step %r failed", callback)

    def record(self, kind: str, actor: dict[str, Any], data: dict[str, Any]) -> None:
        """One audit entry in a unit of its own."""
        with self.unit() as unit:
            unit.audit(kind, actor, data)

    def _append(self, unit: Unit) -> audit.Checkpoint | None:
        if not unit.entries:
            return None
        tx = unit.tx
        head = tx.audit_head(lock=True)
        previous, prev = head if head else (-1, audit.GENESIS_PREV)
        seq = previous
        rows = []
        for kind, actor, data in unit.entries:
            seq += 1
            ts = audit.utc_now_iso()
            body, digest = audit.make_entry(prev, seq, ts, kind, actor, data)
            rows.append(AuditRow(seq, ts, kind, body, digest))
            prev = digest
        tx.append_audit(rows)
        checkpoint = audit.sign_checkpoint(self.key, seq, prev, audit.utc_now_iso())
        tx.insert_checkpoint(checkpoint)
        if previous > 0 and previous // CHECKPOINT_EVERY == seq // CHECKPOINT_EVERY:
            tx.delete_checkpoint(previous)
        return checkpoint

    def _committed(self, checkpoint: audit.Checkpoint) -> None:
        with self._head_lock:
            if checkpoint.seq <= self._head[0]:
                return  # a later commit of another thread got here first
            self._head = (checkpoint.seq, checkpoint.hash)
            if self.head_file is None:
                return
            try:
                audit.write_head_file(self.head_file, checkpoint, self.key.public_b64)
            except OSError as exc:  # the chain itself is committed; the head file is a second copy
                log.error("m99: could not write %s: %s", self.head_file, exc)

    def note_head(self, seq: int, hash_: str) -> None:
        """Another process extended the chain (a replica): remember its head."""
        with self._head_lock:
            if seq > self._head[0]:
                self._head = (seq, hash_)
