"""LangChain runs as the Guard sees them: what a started tool or model run is (its name and governing
Guards), how its end is recorded (usage, tokens, cost), and ``M99CallbackHandler``, which checks the
runs it is passed to.  ``install()`` (``_langchain_managers``) and the handler share these.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from m99.guard import Guard

from ._common import (
    GuardResolver,
    Guards,
    Resolve,
    as_resolver,
    check_model,
    check_tool,
    governing,
    model_limits,
    note_task,
    observing,
    record_model,
    record_tool,
    reset_streaks,
    scoped,
    started,
)
from ._credentials import ModelKeys, protect_model_client

__all__ = [
    "M99CallbackHandler",
    "Run",
    "admit_model",
    "admit_tool",
    "agent_of",
    "keys",
    "message_tokens",
    "note_run_start",
    "protect_model",
    "record_end",
]

logger = logging.getLogger("m99.adapters.langchain")

# The model clients whose keys are registered with the Guards (the middleware and install() alike).
keys = ModelKeys()


def agent_of(metadata: dict[str, Any] | None) -> str | None:
    """``create_agent(name=...)`` puts the agent's name in every run's metadata."""
    if not metadata:
        return None
    name = metadata.get("lc_agent_name")
    return name if isinstance(name, str) else None


def task_text(inputs: Any) -> Any:
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
            count += message_tokens(getattr(generation, "message", None))
    return count


def message_tokens(message: Any) -> int:
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


# What a started tool or model run is, for its end: the tool's name ("" for a model), its Guards and the
# side-effect ledger's handle of a tool call (carried on the run to its end: LangChain reports every
# admitted tool run's end, so no context variable has to find it again; a nested tool call keeps its own).
Run: TypeAlias = tuple[str, Guards, int | None]


def admit_tool(resolve: Resolve, serialized: Any, metadata: Any, name: Any, args: Any = None) -> Run:
    """Refuse the tool run about to start (raising), or say what it is."""
    named = serialized.get("name") if serialized else None
    tool = named if type(named) is str and named else str(named or name or "tool")
    guards = governing(resolve, agent_of(metadata) if metadata else None, tool=tool)
    check_tool(guards, tool, args, note=False)
    return tool, guards, started(guards, tool, args)


def admit_model(resolve: Resolve, metadata: Any, params: Any = None) -> Run:
    guards = governing(resolve, agent_of(metadata) if metadata else None)
    name, max_tokens = model_limits(params or {})
    if name is None and isinstance(params, dict) and isinstance(params.get("_type"), str):
        name = params["_type"]  # a model without a model name: LangChain's type of it, for a price table
    check_model(guards, name, max_tokens)
    return "", guards, None


def note_run_start(resolve: Resolve, metadata: Any, inputs: Any) -> None:
    """A new top-level run: a refusal streak from an earlier run must not stop this one."""
    guards = observing(resolve, agent_of(metadata) if metadata else None)
    reset_streaks(guards)
    note_task(guards, task_text(inputs))


def record_end(run: Run | None, ok: bool, response: Any = None) -> None:
    """Usage of a run admitted at its start; never raises."""
    if run is None:
        return
    tool, guards, handle = run
    if tool:
        record_tool(guards, tool, ok=ok, handle=handle)
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
            self._remember(
                run_id,
                admit_tool(self._resolve, serialized, metadata, kwargs.get("name"), kwargs.get("inputs") or input_str),
            )

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
            self._remember(run_id, admit_model(self._resolve, metadata, kwargs.get("invocation_params")))

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
            self._remember(run_id, admit_model(self._resolve, metadata, kwargs.get("invocation_params")))

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
            note_run_start(self._resolve, metadata, inputs)

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
            run = ("", observing(self._resolve, None), None)
        record_end(run, ok, response)


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
