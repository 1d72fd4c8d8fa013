"""Proof of every halt: case packs built and verified as pure functions over bytes (``casepack``),
and the agents' evidence upload (``upload``, imported by the session only)."""
