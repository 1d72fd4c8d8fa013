"""Where model clients keep their API keys, so a Guard can revoke them at L1 and put them back.

Covers the openai SDK clients that LangChain ``ChatOpenAI``, CrewAI's native ``LLM`` and AutoGen's
``OpenAIChatCompletionClient`` hold, plus ``*_api_key`` fields of the wrapper objects themselves.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from m99.credentials import RevokedCredential
from m99.guard import Guard

__all__ = ["ModelKeys", "protect_model_client"]

logger = logging.getLogger("m99.adapters")

# Fields that hold a key on the framework objects and on the SDK clients (openai reads
# ``client.api_key`` on every request, so revoking it there makes the next call fail locally).
_KEY_FIELDS = (
    "api_key",
    "openai_api_key",
    "anthropic_api_key",
    "google_api_key",
    "groq_api_key",
    "mistral_api_key",
    "admin_api_key",
)
# openai's ``api_key=callable`` refreshes ``api_key`` before each request from this provider.
_PROVIDER_FIELDS = ("_api_key_provider",)
# Where the framework objects keep their SDK clients.
_CLIENT_FIELDS = ("root_client", "root_async_client", "_client", "_async_client", "client", "async_client")


def _holds_secret(value: Any) -> bool:
    if isinstance(value, RevokedCredential):
        return False
    if isinstance(value, str | bytes):
        return bool(value)
    getter = getattr(value, "get_secret_value", None)
    if callable(getter):
        try:
            return bool(getter())
        except Exception:
            return False
    return False


def _peek(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that fails to compute is not a key we can hold
        return None


def protect_model_client(guard: Guard, obj: Any, *, label: str = "", _depth: int = 0) -> int:
    """Register every key ``obj`` (and the SDK clients it holds) keeps; returns how many."""
    label = label or type(obj).__name__
    count = 0
    for name in _KEY_FIELDS:
        if _holds_secret(_peek(obj, name)):
            guard.protect_attribute(obj, name, label=f"{label}.{name}")
            count += 1
    for name in _PROVIDER_FIELDS:
        if callable(_peek(obj, name)):
            guard.protect_attribute(obj, name, label=f"{label}.{name}")
            count += 1
    # AutoGen keeps the constructor arguments, key included, in plaintext for dump_component().
    raw = _peek(obj, "_raw_config")
    if isinstance(raw, dict) and _holds_secret(raw.get("api_key")):
        guard.protect_item(raw, "api_key", label=f"{label}._raw_config.api_key")
        count += 1
    if _depth == 0:
        seen: set[int] = {id(obj)}
        for name in _CLIENT_FIELDS:
            inner = _peek(obj, name)
            if inner is None or id(inner) in seen or isinstance(inner, str | bytes | int | float | bool):
                continue
            seen.add(id(inner))
            count += protect_model_client(guard, inner, label=f"{label}.{name}", _depth=1)
    if _depth == 0 and count == 0:
        logger.info("m99: found no API key on %s to revoke at L1", label)
    return count


class ModelKeys:
    """The model clients whose keys an adapter registered, and with which Guards: each pair once.

    Every Guard governing a call gets the client's keys, so a kill of the process revokes them as
    surely as a kill scoped to the agent (the credential layer restores a shared key only when the
    last Guard holding it is restored).
    """

    def __init__(self) -> None:
        # By id of the Guard: a weak reference to it (a Guard must be free to go away) and the clients
        # registered with it by id, held so that their ids stay theirs.  Read without the lock: asked
        # on every model call, it is written only the first time a pair is seen.
        self._seen: dict[int, tuple[weakref.ref[Guard], dict[int, Any]]] = {}
        self._lock = threading.Lock()

    def protect(self, guards: Iterable[Guard], client: Any, *, label: str = "") -> None:
        """Register ``client``'s keys with each of ``guards`` not yet holding them; never raises."""
        if client is None or isinstance(client, str | bytes):
            return
        for guard in guards:
            seen = self._seen.get(id(guard))
            if seen is None or seen[0]() is not guard or id(client) not in seen[1]:
                self._register(guard, client, label or type(client).__name__)

    def _register(self, guard: Guard, client: Any, label: str) -> None:
        with self._lock:
            seen = self._seen.get(id(guard))
            if seen is None or seen[0]() is not guard:
                self._seen = {k: v for k, v in self._seen.items() if v[0]() is not None}  # forget gone Guards
                seen = self._seen[id(guard)] = (weakref.ref(guard), {})
            if id(client) in seen[1]:
                return
            seen[1][id(client)] = client
        try:
            protect_model_client(guard, client, label=label)
        except Exception:
            logger.exception("m99: could not register the API key of %s", label)
