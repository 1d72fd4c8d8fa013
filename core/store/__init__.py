"""Persistence for the control plane.

``Store`` is the interface the control plane uses; ``SQLiteStore`` is the default
implementation.  Rows come back as plain dicts so that another backend can implement the
same interface without sharing any driver types.
"""

from .base import Store, StoreError
from .sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "StoreError"]
