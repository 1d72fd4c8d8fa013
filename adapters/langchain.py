"""LangChain adapter: a callback handler that refuses tool and model calls from inside LangChain,
an ``AgentMiddleware`` for ``create_agent`` that also redacts secrets and ends a frozen run cleanly,
and ``install()``, which puts the handler on every run in the process (one line, no ``config``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from m99.errors import AdapterUnavailable, M99KillSwitchTriggered
from m99.guard import Guard

from ._common import (
    GuardResolver,
    Guards,
    GuardSource,
    Resolve,
    as_resolver,
    check_model,
    check_tool,
    governing,
    note_task,
    observing,
    record_model,
    record_tool,
    redact,
    reset_streaks,
    scoped,
)
from ._credentials import protect_model_client

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
    from langchain_core.outputs import LLMResult
    from langchain_core.tracers import context as _lc_context
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.types import Command
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise AdapterUnavailable(
        f"the LangChain adapter needs LangChain ({exc.name} is missing): pip install 'm99[langchain]'"
    ) from exc

__all__ = ["M99CallbackHandler", "M99Middleware", "install", "installed", "protect_model", "uninstall"]

logger = logging.getLogger("m99.adapters.langchain")

SUPPORTED = {"langchain-core": ">=1.0", "langchain": ">=1.0", "langgraph": ">=1.0"}


def _agent_of(metadata: dict[str, Any] | None) -> str | None:
    """``create_agent(name=...)`` puts the agent's name in every run's metadata."""
    if not metadata:
        return None
    name = metadata.get("lc_agent_name")
    return name if isinstance(name, str) else None


def _task_text(inputs: Any) -> Any:
    """The latest user message of a run's input, for the Guard's evidence."""
    messages = inputs.get("messages") if isinstance(inputs, dict) else None
    if not isinstance(messages, list) or not messages:
        return inputs.get("input") if isinstance(inputs, dict) else None
    last = messages[-1]
    if isinstance(last, tuple | list) and len(last) == 2:
        return last[1]
    if isinstance(last, dict):
        return last.get("content")
    return getattr(last, "content", None)


def _tokens(response: LLMResult) -> int:
    usage = (response.llm_output or {}).get("token_usage") or {}
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    if isinstance(total, int):
        return total
    count = 0
    for generations in response.generations:
        for generation in generations:
            count += _message_tokens(getattr(generation, "message", None))
    return count


def _message_tokens(message: Any) -> int:
    usage = getattr(message, "usage_metadata", None)
    if isinstance(usage, dict):
        return int(usage.get("total_tokens") or 0)
    return 0


class M99CallbackHandler(BaseCallbackHandler):
    """Refuses tool and model calls by raising from ``on_tool_start`` / ``on_chat_model_start``.

    Sync, ``raise_error`` and ``run_inline`` on purpose: LangChain swallows exceptions from handlers
    without ``raise_error`` and from async handlers on sync runs.  ``on_tool_start`` runs before
    the tool body, so a refused tool never runs.  Callbacks see copies of inputs and outputs, so
    they cannot redact: use ``M99Middleware`` for that.
    """

    raise_error = True
    run_inline = True

    def __init__(self, guard: Guard | GuardResolver | None = None) -> None:
        super().__init__()
        self._resolve: Resolve = scoped(guard)
        self.active = True
        self._runs: dict[UUID, tuple[str, Guards]] = {}

    # -- enforcement ----------------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self.active:
            return
        name = serialized.get("name") if serialized else None
        tool = name if type(name) is str and name else str(name or kwargs.get("name") or "tool")
        agent = _agent_of(metadata) if metadata else None
        guards = governing(self._resolve, agent, tool=tool)
        check_tool(guards, tool)
        self._remember(run_id, tool, guards)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._model_start(run_id, metadata)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._model_start(run_id, metadata)

    def _model_start(self, run_id: UUID, metadata: dict[str, Any] | None) -> None:
        if not self.active:
            return
        guards = governing(self._resolve, _agent_of(metadata) if metadata else None)
        check_model(guards)
        self._remember(run_id, "", guards)

    def _remember(self, run_id: UUID, tool: str, guards: Guards) -> None:
        # The Guards that allowed the call also record its end: no second resolution.
        runs = self._runs
        runs[run_id] = (tool, guards)
        if len(runs) > 4096:  # runs that never ended (interrupted): forget the oldest
            for stale in list(runs)[:1024]:
                runs.pop(stale, None)

    def _ended(self, run_id: UUID) -> tuple[str, Guards]:
        """Forget a run; what it was and the Guards that governed it (resolved now if never seen)."""
        entry = self._runs.pop(run_id, None)
        if entry is not None:
            return entry
        return "", observing(self._resolve, None)

    # -- observation: never raises (raise_error would carry a bug here into the host) ------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.active and parent_run_id is None:
            # A new top-level run: a refusal streak from an earlier run must not stop this one.
            guards = observing(self._resolve, _agent_of(metadata))
            reset_streaks(guards)
            note_task(guards, _task_text(inputs))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._tool_done(run_id, ok=True)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._tool_done(run_id, ok=False)

    def _tool_done(self, run_id: UUID, *, ok: bool) -> None:
        entry = self._runs.pop(run_id, None)
        if entry is not None and entry[0] and self.active:
            record_tool(entry[1], entry[0], ok=ok)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        if not self.active:
            self._runs.pop(run_id, None)
            return
        _, guards = self._ended(run_id)
        try:
            tokens = _tokens(response)
        except Exception:
            logger.exception("m99: could not read token usage")
            tokens = 0
        record_model(guards, tokens=tokens, ok=True)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if not self.active:
            self._runs.pop(run_id, None)
            return
        record_model(self._ended(run_id)[1], ok=False)


def _run_config() -> dict[str, Any]:
    try:
        from langgraph.config import get_config

        return dict(get_config())
    except Exception:  # outside a graph node
        return {}


def _run_agent() -> str | None:
    return _agent_of(_run_config().get("metadata"))


def _run_has_handler() -> bool:
    """Whether an M99 callback handler already reports usage for the running graph node."""
    callbacks = _run_config().get("callbacks")
    handlers: Any = getattr(callbacks, "handlers", callbacks) or []
    return any(isinstance(h, M99CallbackHandler) and h.active for h in handlers)


class M99Middleware(AgentMiddleware):
    """``create_agent(..., middleware=[M99Middleware(guard)])``: refuse, redact, stop cleanly.

    - A refused tool call never reaches the tool: the model gets an error ``ToolMessage`` that says
      why (at L4 it may go on with read-only tools; after a few refusals in a row it is stopped).
    - At L1+ protected secrets are redacted from tool arguments, tool results and the messages sent
      to the model, and the model client's API key is revoked (``protect_model``).
    - When the Guard halts model calls (L3, L5+, lost lease) the model is not called: the run ends
      with an ``AIMessage`` explaining the stop, so ``invoke`` returns instead of raising.
    """

    def __init__(self, guard: Guard | GuardResolver | None = None, *, agent: str | None = None) -> None:
        super().__init__()
        self._resolve: Resolve = scoped(guard)
        self._agent = agent
        # (guard, model) pairs already registered; ids, because chat models are unhashable.
        self._protected: set[tuple[int, int]] = set()

    # -- tools ----------------------------------------------------------------------------------------

    def _tool_gate(self, request: ToolCallRequest) -> tuple[ToolCallRequest, ToolMessage | None, Guards]:
        call = request.tool_call
        tool = str(call.get("name") or "tool")
        try:
            guards = governing(self._resolve, self._agent or _run_agent(), tool=tool)
            check_tool(guards, tool)
        except M99KillSwitchTriggered as exc:
            return request, _refusal_message(call, exc), ()
        args = call.get("args")
        clean = redact(guards, args)
        if clean is not args:
            request = request.override(tool_call={**call, "args": clean})
        return request, None, guards

    def _tool_after(self, result: ToolMessage | Command[Any], tool: str, guards: Guards) -> ToolMessage | Command[Any]:
        if not _run_has_handler():
            ok = not (isinstance(result, ToolMessage) and result.status == "error")
            record_tool(guards, tool, ok=ok)
        if isinstance(result, ToolMessage):
            content = redact(guards, result.content)
            if content is not result.content:
                return result.model_copy(update={"content": content})
        return result

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        request, refusal, guards = self._tool_gate(request)
        if refusal is not None:
            return refusal
        return self._tool_after(handler(request), str(request.tool_call.get("name")), guards)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        request, refusal, guards = self._tool_gate(request)
        if refusal is not None:
            return refusal
        return self._tool_after(await handler(request), str(request.tool_call.get("name")), guards)

    # -- model ----------------------------------------------------------------------------------------

    def _model_gate(self, request: ModelRequest) -> tuple[ModelRequest, AIMessage | None, Guards]:
        try:
            guards = governing(self._resolve, self._agent or _run_agent())
            check_model(guards)
        except M99KillSwitchTriggered as exc:
            return request, _stop_message(exc), ()
        if guards:
            self._protect(request.model, guards[0])
            messages = [_redact_message(guards, m) for m in request.messages]
            if any(new is not old for new, old in zip(messages, request.messages, strict=True)):
                request = request.override(messages=messages)
        return request, None, guards

    def _protect(self, model: Any, guard: Guard) -> None:
        # Only the most specific Guard registers a client's key: when two Guards revoke the same
        # attribute and are restored in the wrong order, the key would stay revoked.
        key = (id(guard), id(model))
        if key in self._protected:
            return
        self._protected.add(key)
        try:
            protect_model(model, guard)
        except Exception:
            logger.exception("m99: could not register %s's API key", type(model).__name__)

    def _model_after(self, response: Any, guards: Guards) -> Any:
        if not _run_has_handler():
            messages = getattr(response, "result", None) or [response]
            record_model(guards, tokens=sum(_message_tokens(m) for m in messages), ok=True)
        return response

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage:
        request, stop, guards = self._model_gate(request)
        if stop is not None:
            return stop
        return self._model_after(handler(request), guards)  # type: ignore[no-any-return]

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage:
        request, stop, guards = self._model_gate(request)
        if stop is not None:
            return stop
        return self._model_after(await handler(request), guards)  # type: ignore[no-any-return]


def _m99_meta(exc: M99KillSwitchTriggered) -> dict[str, Any]:
    return {"m99": {"refused": True, "level": exc.level, "reason": exc.reason, "agent": exc.agent}}


def _refusal_message(call: Any, exc: M99KillSwitchTriggered) -> ToolMessage:
    return ToolMessage(
        content=f"{exc} The tool did not run; do not call it again.",
        name=call.get("name"),
        tool_call_id=call.get("id") or "",
        status="error",
        artifact=_m99_meta(exc),
    )


def _stop_message(exc: M99KillSwitchTriggered) -> AIMessage:
    return AIMessage(content=f"Run stopped by the M99 kill switch. {exc}", response_metadata=_m99_meta(exc))


def _redact_message(guards: Guards, message: Any) -> Any:
    content = redact(guards, message.content)
    update: dict[str, Any] = {}
    if content is not message.content:
        update["content"] = content
    calls = getattr(message, "tool_calls", None)
    if calls:
        clean = redact(guards, calls)
        if clean is not calls:
            update["tool_calls"] = clean
    return message.model_copy(update=update) if update else message


def protect_model(model: Any, guard: Guard | None = None) -> Any:
    """Register where ``model`` keeps its API key, so L1 revokes it and restore gives it back.

    Works for ``ChatOpenAI`` (and other chat models built on the openai SDK) and models with
    ``api_key``-style fields; returns ``model``.  Without ``guard``, the process default's.
    """
    target = guard if guard is not None else as_resolver(None).default
    if target is None:
        raise ValueError("protect_model needs a Guard (none given and no process default)")
    protect_model_client(target, model, label=type(model).__name__)
    return model


# -- one-line global install ------------------------------------------------------------------------------


class _Installed:
    def __init__(self, handler: M99CallbackHandler, var: ContextVar[Any]) -> None:
        self.handler = handler
        self.var = var


_lock = threading.Lock()
_installed: _Installed | None = None


def install(guard_resolver: GuardSource = None) -> M99CallbackHandler:
    """Put an ``M99CallbackHandler`` on every LangChain run in the process; idempotent.

    Uses LangChain's ``register_configure_hook`` with a ContextVar whose *default* is the handler, so
    every thread and task gets it without ``config``; LangChain skips it for a run that already has
    an ``M99CallbackHandler`` (an explicit one wins).  Calling again only updates the resolver.
    """
    global _installed
    resolver = as_resolver(guard_resolver)
    with _lock:
        if _installed is not None:
            _installed.handler._resolve = resolver.resolve
            return _installed.handler
        handler = M99CallbackHandler(resolver)
        var: ContextVar[Any] = ContextVar("m99_langchain_handler", default=handler)
        _lc_context.register_configure_hook(var, True, M99CallbackHandler)
        _installed = _Installed(handler, var)
        return handler


def uninstall() -> None:
    """Remove exactly the hook ``install`` added; idempotent."""
    global _installed
    with _lock:
        state, _installed = _installed, None
        if state is None:
            return
        state.handler.active = False  # runs already configured with it stop consulting the Guard
        # LangChain has no unregister: remove our own entry (matched by identity) from its list.
        hooks = getattr(_lc_context, "_configure_hooks", None)
        if isinstance(hooks, list):
            hooks[:] = [entry for entry in hooks if entry[0] is not state.var]
        else:
            logger.warning("m99: langchain_core changed; the inactive M99 hook stays registered")


def installed() -> bool:
    return _installed is not None
