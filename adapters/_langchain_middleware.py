"""``M99Middleware`` for LangChain 1.x ``create_agent``: refuses tool calls with an error ``ToolMessage``,
redacts tool arguments, results and the messages sent to the model at L1, offers the model only the
tools it may call, and ends a halted run with a final ``AIMessage`` instead of an exception.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.config import get_config as _graph_config
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command

from m99.errors import M99KillSwitchTriggered
from m99.guard import Guard

from ._common import (
    GuardResolver,
    Guards,
    Resolve,
    check_model,
    check_tool,
    governing,
    model_limits,
    offered,
    record_model,
    record_tool,
    redact,
    redacting,
    scoped,
)
from ._langchain_managers import adapter
from ._langchain_runs import M99CallbackHandler, agent_of, keys, message_tokens

__all__ = ["M99Middleware"]


def _run_config() -> Any:
    """The running graph node's config (LangGraph's; not copied), or an empty one outside a graph."""
    try:
        return _graph_config()
    except Exception:  # outside a graph node
        return {}


def _usage_reported(config: Any) -> bool:
    """Whether ``install()`` or an M99 callback handler already reports usage for this graph node."""
    if adapter.current is not None:
        return True
    callbacks = config.get("callbacks")
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

    # -- tools ----------------------------------------------------------------------------------------

    def _agent_of_run(self, config: Any) -> str | None:
        return self._agent or agent_of(config.get("metadata"))

    def _tool_gate(self, request: ToolCallRequest, config: Any) -> tuple[ToolCallRequest, ToolMessage | None, Guards]:
        call = request.tool_call
        tool = str(call.get("name") or "tool")
        try:
            guards = governing(self._resolve, self._agent_of_run(config), tool=tool)
            check_tool(guards, tool, call.get("args"))
        except M99KillSwitchTriggered as exc:
            return request, _refusal_message(call, exc), ()
        if redacting(guards):
            args = call.get("args")
            clean = redact(guards, args)
            if clean is not args:
                request = request.override(tool_call={**call, "args": clean})
        return request, None, guards

    def _tool_after(
        self, result: ToolMessage | Command[Any], tool: str, guards: Guards, config: Any
    ) -> ToolMessage | Command[Any]:
        if not _usage_reported(config):
            ok = not (isinstance(result, ToolMessage) and result.status == "error")
            record_tool(guards, tool, ok=ok, result=getattr(result, "content", None))
        # Asked again after the tool ran: the level may have risen meanwhile.
        if isinstance(result, ToolMessage) and redacting(guards):
            content = redact(guards, result.content)
            if content is not result.content:
                return result.model_copy(update={"content": content})
        return result

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        config = _run_config()
        request, refusal, guards = self._tool_gate(request, config)
        if refusal is not None:
            return refusal
        return self._tool_after(handler(request), str(request.tool_call.get("name")), guards, config)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        config = _run_config()
        request, refusal, guards = self._tool_gate(request, config)
        if refusal is not None:
            return refusal
        return self._tool_after(await handler(request), str(request.tool_call.get("name")), guards, config)

    # -- model ----------------------------------------------------------------------------------------

    def _model_gate(self, request: ModelRequest, config: Any) -> tuple[ModelRequest, AIMessage | None, Guards]:
        try:
            guards = governing(self._resolve, self._agent_of_run(config))
            check_model(guards, *model_limits(request.model))
        except M99KillSwitchTriggered as exc:
            return request, _stop_message(exc), ()
        if guards:
            keys.protect(guards, request.model)
            if not all(guard.quiet for guard in guards):
                request = _offer_only_allowed(request, guards)
            if redacting(guards):
                messages = [_redact_message(guards, m) for m in request.messages]
                if any(new is not old for new, old in zip(messages, request.messages, strict=True)):
                    request = request.override(messages=messages)
        return request, None, guards

    def _model_after(self, response: Any, guards: Guards, config: Any) -> Any:
        if not _usage_reported(config):
            messages = getattr(response, "result", None) or [response]
            record_model(guards, tokens=sum(message_tokens(m) for m in messages), ok=True)
        return response

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage:
        config = _run_config()
        request, stop, guards = self._model_gate(request, config)
        if stop is not None:
            return stop
        return self._model_after(handler(request), guards, config)  # type: ignore[no-any-return]

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage:
        config = _run_config()
        request, stop, guards = self._model_gate(request, config)
        if stop is not None:
            return stop
        return self._model_after(await handler(request), guards, config)  # type: ignore[no-any-return]


def _offer_only_allowed(request: ModelRequest, guards: Guards) -> ModelRequest:
    """The request with the tools the Guards do not offer now taken out (read-only ones at L4)."""
    tools = request.tools or []
    names = [_tool_name(t) for t in tools]
    keep = offered(guards, [str(n) for n in names if n])
    kept = [t for t, n in zip(tools, names, strict=True) if n and str(n) in keep]
    return request if len(kept) == len(tools) else request.override(tools=kept)


def _tool_name(tool: Any) -> Any:
    """A BaseTool's name, or a provider-format dict's (``{"name"}`` or ``{"function": {"name"}}``)."""
    if isinstance(tool, dict):
        function = tool.get("function")
        return tool.get("name") or (function.get("name") if isinstance(function, dict) else None)
    return getattr(tool, "name", None)


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
