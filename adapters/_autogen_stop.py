"""How an AutoGen team halted by M99 ends: ``team.run`` raises M99's error, without AutoGen's noise.

A halted participant's model call raises an M99 error inside the team's runtime.  AutoGen then logs it as
"Error processing publish message for <agent>" with its traceback, publishes it to the group as a
``GroupChatError`` that every *other* participant's container fails on too ("Unhandled message in agent
container", one more traceback each), and ends ``team.run`` with a ``RuntimeError`` carrying only the text.

- A filter on AutoGen's runtime logger (``autogen_core``) drops exactly those records: the one whose
  exception is an M99 refusal, and the "unhandled" ones about a ``GroupChatError`` carrying an M99 error
  this adapter raised.  Every other record passes.
- The team's ``run_stream`` (``run`` uses it) gives the caller the M99 error it was instead of AutoGen's
  ``RuntimeError``, with the traceback cut at the team (the full one is logged at DEBUG on
  ``m99.adapters.autogen``).  ``M99Termination`` avoids all of this: the team ends cleanly at a turn.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any

from autogen_agentchat.teams import BaseGroupChat
from autogen_agentchat.teams._group_chat._events import GroupChatError

from m99.errors import M99KillSwitchTriggered

from ._patch import Installation

__all__ = ["RaisedInTeams", "put_in", "raised"]

logger = logging.getLogger("m99.adapters.autogen")

# The logger AutoGen's agent runtimes report a failed message handler on.
RUNTIME_LOGGER = "autogen_core"


class RaisedInTeams:
    """The M99 errors raised in agents lately, by their text: a team turns a participant's exception into
    ``RuntimeError("<type>: <message>")``, and the team's ``run_stream`` gives the caller the original."""

    def __init__(self, size: int = 64) -> None:
        self._recent: OrderedDict[str, M99KillSwitchTriggered] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def note(self, exc: M99KillSwitchTriggered) -> None:
        key = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._recent[key] = exc
            self._recent.move_to_end(key)
            while len(self._recent) > self._size:
                self._recent.popitem(last=False)

    def recall(self, text: str) -> M99KillSwitchTriggered | None:
        # AutoGen's text: "<type>: <message>", then "\nTraceback:\n…" when it kept one.
        with self._lock:
            return self._recent.get(text.split("\nTraceback:", 1)[0])


raised = RaisedInTeams()


class _HaltNoise(logging.Filter):
    """Drops the runtime's records about a participant halted by M99 (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            exc = record.exc_info[1] if record.exc_info else None
            return exc is None or not _about_an_m99_halt(exc)
        except Exception:  # a filter that fails must not lose the record
            return True


def _about_an_m99_halt(exc: BaseException) -> bool:
    if isinstance(exc, M99KillSwitchTriggered):
        return True
    # Another participant's container failing on the GroupChatError that carries the M99 error.
    if not isinstance(exc, ValueError):
        return False
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_code.co_name != "on_unhandled_message":
        return False
    message = tb.tb_frame.f_locals.get("message")
    if not isinstance(message, GroupChatError):
        return False
    error = message.error
    return raised.recall(f"{error.error_type}: {error.error_message}") is not None


def _team_seam(state: Installation) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        async def run_stream(self: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
            """``BaseGroupChat.run_stream`` (``run`` too): a halt that ended the team as a participant's
            error reaches the caller as the M99 error it was, not as AutoGen's ``RuntimeError``."""
            stream = previous(self, *args, **kwargs)
            try:
                async for item in stream:
                    yield item
            except RuntimeError as exc:
                original = raised.recall(str(exc)) if state.live else None
                if original is None:
                    raise
                logger.debug("m99: %s; where AutoGen was when it stopped:", original, exc_info=original)
                raise original.with_traceback(None) from None
            finally:
                await stream.aclose()

        return run_stream

    return factory


def put_in(state: Installation) -> None:
    state.wrap(BaseGroupChat, "run_stream", _team_seam(state))
    noise = _HaltNoise()
    runtime_logger = logging.getLogger(RUNTIME_LOGGER)
    runtime_logger.addFilter(noise)
    state.add(lambda: runtime_logger.removeFilter(noise))
