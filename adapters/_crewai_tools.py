"""The CrewAI adapter's per-object variants: ``wrap_tool`` puts one tool behind a Guard (``GuardedTool``),
``protect_llm`` registers where a CrewAI ``LLM`` keeps its API key so that L1 revokes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from crewai.tools import BaseTool
from pydantic import PrivateAttr

from m99.errors import ToolCallRefused
from m99.guard import Guard

from ._common import (
    GuardResolver,
    Guards,
    Resolve,
    as_resolver,
    check_tool,
    governing,
    record_tool,
    redact,
    redacting,
    scoped,
)
from ._credentials import protect_model_client
from ._crewai_hooks import adapter, refusal_text

__all__ = ["GuardedTool", "protect_llm", "wrap_tool"]


class GuardedTool(BaseTool):
    """A CrewAI tool that asks the Guard before the wrapped tool runs (see ``wrap_tool``)."""

    _inner: BaseTool = PrivateAttr()
    _resolve: Resolve = PrivateAttr()
    # Read on every call from the dict pydantic keeps them in: ``self._inner`` goes through
    # ``BaseModel.__getattr__``, measured at ~1.5 µs a read here.

    # The inner tool's ``_run``/``_arun``, not its ``run``: CrewAI calls this tool's ``run``, which already
    # validated the arguments and counted the use against this tool's limit.

    def _gate(self) -> Guards | str:
        try:
            guards = governing(self.__pydantic_private__["_resolve"], None, tool=self.name)  # type: ignore[index]
            check_tool(guards, self.name)
        except ToolCallRefused as exc:
            # Returned, not raised: CrewAI would turn an exception into "Error executing tool" text.
            return refusal_text(exc)
        return guards

    def _done(self, guards: Guards, result: Any) -> Any:
        if adapter.current is None:  # with install() the after-tool hook reports the call
            record_tool(guards, self.name, ok=True, result=result)
        # Asked again: the level may have risen while the tool ran.
        return redact(guards, result) if redacting(guards) else result

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        guards = self._gate()
        if isinstance(guards, str):
            return guards
        if redacting(guards):  # below L1 the arguments go on as they came, uncopied
            args, kwargs = redact(guards, args), redact(guards, kwargs)
        result = self.__pydantic_private__["_inner"]._run(*args, **kwargs)  # type: ignore[index]
        # An async tool body: CrewAI's run() awaits what this returns.  A text result is never one, and
        # asyncio.iscoroutine costs ~160 ns on it (an ABC check, uncached for negatives).
        if not isinstance(result, str) and asyncio.iscoroutine(result):

            async def finish() -> Any:
                return self._done(guards, await result)

            return finish()
        return self._done(guards, result)

    async def _arun(self, *args: Any, **kwargs: Any) -> Any:
        guards = self._gate()
        if isinstance(guards, str):
            return guards
        if redacting(guards):
            args, kwargs = redact(guards, args), redact(guards, kwargs)
        return self._done(guards, await self.__pydantic_private__["_inner"]._arun(*args, **kwargs))  # type: ignore[index]


def wrap_tool(tool: BaseTool, guard: Guard | GuardResolver | None = None) -> GuardedTool:
    """``tool`` behind ``guard``: refused calls return M99's reason and never run the tool.

    The per-object variant of ``install``; only ``install`` can also end a halted run, because a
    tool cannot stop CrewAI's agent loop.
    """
    guarded = GuardedTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        result_as_answer=tool.result_as_answer,
        max_usage_count=tool.max_usage_count,
        cache_function=tool.cache_function,
    )
    guarded._inner = tool
    guarded._resolve = scoped(guard)
    return guarded


def protect_llm(llm: Any, guard: Guard | None = None) -> Any:
    """Register where a CrewAI ``LLM`` keeps its API key, so L1 revokes it; returns ``llm``."""
    target = guard if guard is not None else as_resolver(None).default
    if target is None:
        raise ValueError("protect_llm needs a Guard (none given and no process default)")
    protect_model_client(target, llm, label=f"crewai:{getattr(llm, 'model', type(llm).__name__)}")
    return llm
