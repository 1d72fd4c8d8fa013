"""LangChain adapter: ``install()`` puts M99 in LangChain's callback managers, so every tool and model
call in the process is checked (one line, no ``config``) and, at L1, every tool's input and output is
redacted; ``M99CallbackHandler`` checks the runs it is passed to; ``M99Middleware`` for
``create_agent`` also redacts the messages sent to the model and ends a frozen run cleanly.

Why ``install()`` does not register a callback handler: every run of every runnable then dispatches
its events to that handler, which measured here cost a tool call 3-5 % before the handler did
anything.  Instead it wraps the callback managers' ``on_tool_start`` / ``on_chat_model_start`` /
``on_llm_start`` (and their ``*_end`` / ``*_error`` for usage): the methods LangChain calls before
every tool body and every model call, with or without handlers.  A refusal raises there, at the point
where a handler with ``raise_error`` would, so LangChain treats it the same way.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias
from uuid import UUID

from m99.errors import AdapterUnavailable, M99KillSwitchTriggered
from m99.guard import Guard, any_redacting, unwatch_redacting, watch_redacting

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
    offered,
    record_model,
    record_tool,
    redact,
    redacting,
    reset_streaks,
    scoped,
)
from ._credentials import ModelKeys, protect_model_client

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.callbacks import manager as _lc_manager
    from langchain_core.language_models import BaseLanguageModel
    from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
    from langchain_core.outputs import LLMResult
    from langchain_core.runnables import config as _lc_config
    from langchain_core.tools import BaseTool
    from langchain_core.tools import base as _lc_tools_base
    from langgraph.config import get_config as _graph_config
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.types import Command
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise AdapterUnavailable(
        f"the LangChain adapter needs LangChain ({exc.name} is missing): pip install 'm99[langchain]'"
    ) from exc

__all__ = ["M99CallbackHandler", "M99Middleware", "install", "installed", "protect_model", "uninstall"]

logger = logging.getLogger("m99.adapters.langchain")

# The model clients whose keys are registered with the Guards (the middleware and install() alike).
_keys = ModelKeys()

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


def _cost(response: LLMResult) -> float:
    """The cost in USD when the provider reports it (OpenAI-compatible gateways put ``cost`` in the
    usage they return, which LangChain passes on as ``token_usage``); 0 otherwise."""
    usages = [(response.llm_output or {}).get("token_usage")]
    for generations in response.generations:
        for generation in generations:
            metadata = getattr(getattr(generation, "message", None), "response_metadata", None) or {}
            usages.append(metadata.get("token_usage"))
    for usage in usages:
        if isinstance(usage, dict):
            cost = usage.get("cost", usage.get("total_cost"))
            if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0:
                return float(cost)
    return 0.0


# What a started tool or model run is, for its end: the tool's name ("" for a model) and its Guards.
Run: TypeAlias = tuple[str, Guards]


def _admit_tool(resolve: Resolve, serialized: Any, metadata: Any, name: Any) -> Run:
    """Refuse the tool run about to start (raising), or say what it is."""
    named = serialized.get("name") if serialized else None
    tool = named if type(named) is str and named else str(named or name or "tool")
    guards = governing(resolve, _agent_of(metadata) if metadata else None, tool=tool)
    check_tool(guards, tool)
    return tool, guards


def _admit_model(resolve: Resolve, metadata: Any) -> Run:
    guards = governing(resolve, _agent_of(metadata) if metadata else None)
    check_model(guards)
    return "", guards


def _note_run_start(resolve: Resolve, metadata: Any, inputs: Any) -> None:
    """A new top-level run: a refusal streak from an earlier run must not stop this one."""
    guards = observing(resolve, _agent_of(metadata) if metadata else None)
    reset_streaks(guards)
    note_task(guards, _task_text(inputs))


def _record_end(run: Run | None, ok: bool, response: Any = None) -> None:
    """Usage of a run admitted at its start; never raises."""
    if run is None:
        return
    tool, guards = run
    if tool:
        record_tool(guards, tool, ok=ok)
        return
    tokens, cost = 0, 0.0
    if response is not None:
        try:
            tokens, cost = _tokens(response), _cost(response)
        except Exception:
            logger.exception("m99: could not read token usage")
    record_model(guards, tokens=tokens, cost_usd=cost, ok=ok)


class M99CallbackHandler(BaseCallbackHandler):
    """Refuses tool and model calls by raising from ``on_tool_start`` / ``on_chat_model_start``, for the
    runs it is passed to (``config={"callbacks": [M99CallbackHandler(guard)]}``).

    Sync, ``raise_error`` and ``run_inline`` on purpose: LangChain swallows exceptions from handlers
    without ``raise_error`` and from async handlers on sync runs.  ``on_tool_start`` runs before
    the tool body, so a refused tool never runs.  Callbacks see copies of inputs and outputs, so
    they cannot redact: ``install()`` or ``M99Middleware`` do.
    """

    raise_error = True
    run_inline = True

    def __init__(self, guard: Guard | GuardResolver | None = None) -> None:
        super().__init__()
        self._resolve: Resolve = scoped(guard)
        self.active = True
        self._runs: dict[UUID, Run] = {}

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
        if self.active:
            self._remember(run_id, _admit_tool(self._resolve, serialized, metadata, kwargs.get("name")))

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.active:
            self._remember(run_id, _admit_model(self._resolve, metadata))

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.active:
            self._remember(run_id, _admit_model(self._resolve, metadata))

    def _remember(self, run_id: UUID, run: Run) -> None:
        # The Guards that allowed the call also record its end: no second resolution.
        runs = self._runs
        runs[run_id] = run
        if len(runs) > 4096:  # runs that never ended (interrupted): forget the oldest
            for stale in list(runs)[:1024]:
                runs.pop(stale, None)

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
            _note_run_start(self._resolve, metadata, inputs)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, ok=True)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, ok=False)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, ok=True, response=response, model=True)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, ok=False, model=True)

    def _end(self, run_id: UUID, *, ok: bool, response: Any = None, model: bool = False) -> None:
        run = self._runs.pop(run_id, None)
        if not self.active:
            return
        if run is None and model:  # a model run that started before this handler saw it
            run = ("", observing(self._resolve, None))
        _record_end(run, ok, response)


def _run_config() -> Any:
    """The running graph node's config (LangGraph's; not copied), or an empty one outside a graph."""
    try:
        return _graph_config()
    except Exception:  # outside a graph node
        return {}


def _usage_reported(config: Any) -> bool:
    """Whether ``install()`` or an M99 callback handler already reports usage for this graph node."""
    if _installed is not None:
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
        return self._agent or _agent_of(config.get("metadata"))

    def _tool_gate(self, request: ToolCallRequest, config: Any) -> tuple[ToolCallRequest, ToolMessage | None, Guards]:
        call = request.tool_call
        tool = str(call.get("name") or "tool")
        try:
            guards = governing(self._resolve, self._agent_of_run(config), tool=tool)
            check_tool(guards, tool)
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
            record_tool(guards, tool, ok=ok)
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
            check_model(guards)
        except M99KillSwitchTriggered as exc:
            return request, _stop_message(exc), ()
        if guards:
            _keys.protect(guards, request.model)
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
            record_model(guards, tokens=sum(_message_tokens(m) for m in messages), ok=True)
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


# -- one-line global install: M99 inside LangChain's callback managers ----------------------------------


class _Installed:
    def __init__(self, resolve: Resolve) -> None:
        self.resolve = resolve
        # Shared by this install's wrappers: False once uninstalled, for any wrapper that could not be
        # taken out (another library wrapped the same method after us); it then passes calls through.
        self.live = [True]
        self.wrapped: list[tuple[Any, str, Callable[..., Any], Any]] = []  # (class or module, name, ours, own before)
        # The L1 redaction seams: put in only while some Guard of the process redacts (``_sync_seams``),
        # so that below L1 a tool call does not even pass through them.
        self.seams: list[tuple[Any, str, Factory]] = []
        self.seams_in: list[tuple[Any, str, Callable[..., Any], Any]] = []
        self.seams_lock = threading.Lock()


_lock = threading.Lock()
_installed: _Installed | None = None
_RUN = "_m99_run"  # the attribute a started run's manager carries: (tool name or "", governing Guards)


def _explicit(handlers: list[Any]) -> bool:
    """Whether the run has an active ``M99CallbackHandler`` of its own (it wins: no double checks)."""
    for handler in handlers:
        if isinstance(handler, M99CallbackHandler) and handler.active:
            return True
    return False


def _tool_gate(manager: Any, serialized: Any, kwargs: dict[str, Any]) -> Run | None:
    state = _installed
    if state is None or (manager.handlers and _explicit(manager.handlers)):
        return None
    return _admit_tool(state.resolve, serialized, manager.metadata, kwargs.get("name"))


def _model_gate(manager: Any) -> Run | None:
    state = _installed
    if state is None or (manager.handlers and _explicit(manager.handlers)):
        return None
    run = _admit_model(state.resolve, manager.metadata)
    _keys.protect(run[1], _calling_model())  # so that L1 can revoke this model's key
    return run


def _calling_model() -> Any:
    """The model whose run is starting: ``self`` of the LangChain model method that called the callback
    manager (``generate``, ``stream`` and their async twins).  The managers are given the model's
    serialized form only, and revoking its key at L1 needs the object.  None when not found."""
    try:
        frame = sys._getframe(3)  # _calling_model <- _model_gate <- the wrapper <- the model's method
        for _ in range(3):
            if frame is None:
                break
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, BaseLanguageModel):
                return candidate
            frame = frame.f_back
    except Exception:
        logger.debug("m99: could not find the calling model", exc_info=True)
    return None


def _note_top_level(manager: Any, inputs: Any) -> None:
    state = _installed
    if manager.parent_run_id is not None or state is None:
        return
    try:
        if not (manager.handlers and _explicit(manager.handlers)):
            _note_run_start(state.resolve, manager.metadata, inputs)
    except Exception:  # observation never reaches the host
        logger.exception("m99: could not note the start of a LangChain run")


# Wrapper factories: each wrapper calls the method it replaced (``previous``) and is inert once ``live[0]``
# is False.  Tool and model starts are checked before LangChain's own handlers see the run start.

Factory = Callable[[Any, list[bool]], Callable[..., Any]]


def _tool_start(previous: Any, live: list[bool]) -> Callable[..., Any]:
    def on_tool_start(self: Any, serialized: Any, *args: Any, **kwargs: Any) -> Any:
        gate = _tool_gate(self, serialized, kwargs) if live[0] else None
        run = previous(self, serialized, *args, **kwargs)
        if gate is not None:
            setattr(run, _RUN, gate)
        return run

    return on_tool_start


def _atool_start(previous: Any, live: list[bool]) -> Callable[..., Any]:
    async def on_tool_start(self: Any, serialized: Any, *args: Any, **kwargs: Any) -> Any:
        gate = _tool_gate(self, serialized, kwargs) if live[0] else None
        run = await previous(self, serialized, *args, **kwargs)
        if gate is not None:
            setattr(run, _RUN, gate)
        return run

    return on_tool_start


def _model_start(previous: Any, live: list[bool]) -> Callable[..., Any]:
    def on_model_start(self: Any, *args: Any, **kwargs: Any) -> Any:
        gate = _model_gate(self) if live[0] else None
        runs = previous(self, *args, **kwargs)
        if gate is not None:
            for run in runs:
                setattr(run, _RUN, gate)
        return runs

    return on_model_start


def _amodel_start(previous: Any, live: list[bool]) -> Callable[..., Any]:
    async def on_model_start(self: Any, *args: Any, **kwargs: Any) -> Any:
        gate = _model_gate(self) if live[0] else None
        runs = await previous(self, *args, **kwargs)
        if gate is not None:
            for run in runs:
                setattr(run, _RUN, gate)
        return runs

    return on_model_start


def _chain_start(previous: Any, live: list[bool]) -> Callable[..., Any]:
    def on_chain_start(self: Any, serialized: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if self.parent_run_id is None and live[0]:  # every runnable of a graph starts here: test cheaply
            _note_top_level(self, inputs)
        return previous(self, serialized, inputs, *args, **kwargs)

    return on_chain_start


def _achain_start(previous: Any, live: list[bool]) -> Callable[..., Any]:
    async def on_chain_start(self: Any, serialized: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if self.parent_run_id is None and live[0]:
            _note_top_level(self, inputs)
        return await previous(self, serialized, inputs, *args, **kwargs)

    return on_chain_start


def _run_end(ok: bool, is_async: bool) -> Factory:
    def factory(previous: Any, live: list[bool]) -> Callable[..., Any]:
        def on_end(self: Any, result: Any, **kwargs: Any) -> Any:
            previous(self, result, **kwargs)
            run = self.__dict__.get(_RUN) if live[0] else None  # set at the start of an admitted run
            if run is not None:
                _record_end(run, ok, result if ok else None)

        async def aon_end(self: Any, result: Any, **kwargs: Any) -> Any:
            await previous(self, result, **kwargs)
            run = self.__dict__.get(_RUN) if live[0] else None
            if run is not None:
                _record_end(run, ok, result if ok else None)

        return aon_end if is_async else on_end

    return factory


def _redacting_guards(tool: str) -> Guards:
    """The Guards of the tool run in progress that redact now (none: it goes on untouched), found by the
    running config's agent name.  A resolver that fails refuses the run, as the tool gate would."""
    state = _installed
    if state is None:
        return ()
    config = _lc_config.var_child_runnable_config.get()
    guards = governing(state.resolve, _agent_of(config.get("metadata")) if config else None, tool=tool)
    return guards if redacting(guards) else ()


# Where a tool's input and output pass inside ``BaseTool.run``/``arun`` (callbacks see only copies of
# them, so these are the seams for L1 redaction): ``_to_args_and_kwargs`` turns the input into the
# tool body's arguments, the module's ``_format_output`` turns the body's result into what the caller
# gets.  They are in LangChain only while some Guard redacts (``_sync_seams``); the framework contract
# tests fail if LangChain renames or bypasses them.


def _tool_arguments(previous: Any, live: list[bool]) -> Callable[..., Any]:
    def _to_args_and_kwargs(self: Any, tool_input: Any, tool_call_id: Any) -> Any:
        args, kwargs = previous(self, tool_input, tool_call_id)
        if live[0] and any_redacting():
            guards = _redacting_guards(str(getattr(self, "name", "tool")))
            if guards:
                return redact(guards, args), redact(guards, kwargs)
        return args, kwargs

    return _to_args_and_kwargs


def _tool_output(previous: Any, live: list[bool]) -> Callable[..., Any]:
    def _format_output(content: Any, artifact: Any, tool_call_id: Any, name: Any, status: Any) -> Any:
        if live[0] and any_redacting():
            guards = _redacting_guards(str(name))
            if guards:
                content = redact(guards, content)
        return previous(content, artifact, tool_call_id, name, status)

    return _format_output


def _patches() -> list[tuple[Any, str, Factory]]:
    m = _lc_manager
    plain, aio = m.CallbackManager, m.AsyncCallbackManager
    starts: list[tuple[type, str, Factory]] = [
        (plain, "on_tool_start", _tool_start),
        (aio, "on_tool_start", _atool_start),
        (plain, "on_chat_model_start", _model_start),
        (aio, "on_chat_model_start", _amodel_start),
        (plain, "on_llm_start", _model_start),
        (aio, "on_llm_start", _amodel_start),
        (plain, "on_chain_start", _chain_start),
        (aio, "on_chain_start", _achain_start),
    ]
    ends: list[tuple[type, str, Factory]] = []
    for cls, is_async, kind in (
        (m.CallbackManagerForToolRun, False, "tool"),
        (m.AsyncCallbackManagerForToolRun, True, "tool"),
        (m.CallbackManagerForLLMRun, False, "llm"),
        (m.AsyncCallbackManagerForLLMRun, True, "llm"),
    ):
        ends += [
            (cls, f"on_{kind}_end", _run_end(True, is_async)),
            (cls, f"on_{kind}_error", _run_end(False, is_async)),
        ]
    return starts + ends


def _seams() -> list[tuple[Any, str, Factory]]:
    """L1 redaction of tool input and output: private seams, skipped (with a warning) if missing."""
    seams = [(BaseTool, "_to_args_and_kwargs", _tool_arguments), (_lc_tools_base, "_format_output", _tool_output)]
    return [(owner, name, factory) for owner, name, factory in seams if _seam(owner, name)]


def _seam(owner: Any, name: str) -> bool:
    if callable(getattr(owner, name, None)):
        return True
    logger.warning(
        "m99: langchain_core has no %s.%s: install() cannot redact tool input and output at L1 "
        "(M99Middleware still does)",
        getattr(owner, "__name__", owner),
        name,
    )
    return False


def install(guard_resolver: GuardSource = None) -> None:
    """Check every LangChain tool and model call in the process against the Guard, and at L1 redact every
    tool's input and output; idempotent (calling again only updates the resolver).  A run that has an
    ``M99CallbackHandler`` of its own is left to it for the checks."""
    global _installed
    resolver = as_resolver(guard_resolver)
    with _lock:
        if _installed is not None:
            _installed.resolve = resolver.resolve
            return
        state = _Installed(resolver.resolve)
        for cls, method, factory in _patches():
            own = cls.__dict__.get(method)  # None: inherited, so uninstall deletes ours instead
            wrapper = factory(getattr(cls, method), state.live)
            setattr(cls, method, wrapper)
            state.wrapped.append((cls, method, wrapper, own))
        state.seams = _seams()
        _installed = state
        watch_redacting(_sync_seams)
        _sync_seams()  # a Guard may be redacting already


def _sync_seams() -> None:
    """Put the redaction seams in while some Guard redacts, take them out when none does (called by the
    Guards on either change, in any order: it reads the state itself)."""
    state = _installed
    if state is None:
        return
    with state.seams_lock:
        wanted = state.live[0] and any_redacting()
        if wanted and not state.seams_in:
            for owner, name, factory in state.seams:
                before = owner.__dict__.get(name)
                wrapper = factory(getattr(owner, name), state.live)
                setattr(owner, name, wrapper)
                state.seams_in.append((owner, name, wrapper, before))
        elif not wanted and state.seams_in:
            _take_out(state.seams_in)


def _take_out(wrapped: list[tuple[Any, str, Callable[..., Any], Any]]) -> None:
    """Put back what our wrappers replaced, newest first; a wrapper someone else wrapped after us stays
    (it passes calls through once ``live`` is False)."""
    for owner, name, wrapper, own in reversed(wrapped):
        if owner.__dict__.get(name) is wrapper:
            if own is None:
                delattr(owner, name)
            else:
                setattr(owner, name, own)
        else:
            logger.warning("m99: langchain_core %s.%s was wrapped after install(); left in place", owner.__name__, name)
    wrapped.clear()


def uninstall() -> None:
    """Undo exactly what ``install`` did; idempotent.  A method someone else wrapped after ``install``
    keeps their wrapper (ours under it then passes calls through)."""
    global _installed
    with _lock:
        state, _installed = _installed, None
        if state is None:
            return
        unwatch_redacting(_sync_seams)
        state.live[0] = False
        with state.seams_lock:
            _take_out(state.seams_in)
        _take_out(state.wrapped)


def installed() -> bool:
    return _installed is not None
