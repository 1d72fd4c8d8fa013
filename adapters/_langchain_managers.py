"""The LangChain adapter's ``install()``: M99 inside LangChain's callback managers, so every tool and model
call in the process is checked (one line, no ``config``) and, at L1, every tool's input and output is
redacted.

Why not a callback handler: every run of every runnable then dispatches its events to that handler,
which measured here cost a tool call 3-5 % before the handler did anything.  Instead ``install()`` wraps
the callback managers' ``on_tool_start`` / ``on_chat_model_start`` / ``on_llm_start`` (and their
``*_end`` / ``*_error`` for usage): the methods LangChain calls before every tool body and every model
call, with or without handlers.  A refusal raises there, at the point where a handler with
``raise_error`` would, so LangChain treats it the same way.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from langchain_core.callbacks import manager as _lc_manager
from langchain_core.language_models import BaseLanguageModel
from langchain_core.runnables import config as _lc_config
from langchain_core.tools import BaseTool
from langchain_core.tools import base as _lc_tools_base

from m99.guard import any_redacting, unwatch_redacting, watch_redacting

from ._common import GuardResolver, Guards, GuardSource, governing, redact, redacting
from ._langchain_runs import (
    M99CallbackHandler,
    Run,
    admit_model,
    admit_tool,
    agent_of,
    keys,
    note_run_start,
    record_end,
)
from ._patch import Adapter, Installation, Patches

__all__ = ["adapter", "install", "installed", "uninstall"]

logger = logging.getLogger("m99.adapters.langchain")

SUPPORTED = {"langchain-core": ">=1.0,<2"}

_RUN = "_m99_run"  # the attribute a started run's manager carries: (tool name or "", governing Guards)


class _LangChainInstall(Installation):
    def __init__(self, adapter: str, resolver: GuardResolver) -> None:
        super().__init__(adapter, resolver)
        # The L1 redaction seams: in LangChain only while some Guard of the process redacts
        # (``_sync_seams``), so that below L1 a tool call does not even pass through them.
        self.seams: list[tuple[Any, str, Callable[[Installation], Factory]]] = []
        self.seams_in = Patches(adapter)
        self.seams_lock = threading.Lock()


# A wrapper factory's factory: given the installation, what ``Patches.wrap`` takes.
Factory = Callable[[Callable[..., Any]], Callable[..., Any]]


def _explicit(handlers: list[Any]) -> bool:
    """Whether the run has an active ``M99CallbackHandler`` of its own (it wins: no double checks)."""
    for handler in handlers:
        if isinstance(handler, M99CallbackHandler) and handler.active:
            return True
    return False


def _tool_gate(
    install: Installation, manager: Any, serialized: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Run | None:
    if manager.handlers and _explicit(manager.handlers):
        return None
    inputs = kwargs.get("inputs") or (args[0] if args else kwargs.get("input_str"))
    return admit_tool(install.resolve, serialized, manager.metadata, kwargs.get("name"), inputs)


def _not_started(run: Run | None) -> None:
    """LangChain failed to start an admitted tool run (its own handlers raised): the ledger's entry
    ends there, unsuccessful (nothing ran; the usage does not count it).  Never raises."""
    try:
        if run is not None and run[1] and run[2] is not None:
            run[1][0].effects.finished(run[2], run[0], ok=False)
    except Exception:
        logger.exception("m99: could not end a tool call's ledger entry")


def _model_gate(install: Installation, manager: Any, kwargs: dict[str, Any]) -> Run | None:
    if manager.handlers and _explicit(manager.handlers):
        return None
    run = admit_model(install.resolve, manager.metadata, kwargs.get("invocation_params"))
    keys.protect(run[1], _calling_model())  # so that L1 can revoke this model's key
    return run


def _calling_model() -> Any:
    """The model whose run is starting: ``self`` of the LangChain model method that called the callback
    manager (``generate``, ``stream`` and their async twins).  The managers are given the model's
    serialized form only, and revoking its key at L1 needs the object.  None when not found."""
    try:
        frame = sys._getframe(3)  # _calling_model <- _model_gate <- the wrapper <- the model's method
        for _ in range(3):
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, BaseLanguageModel):
                return candidate
            if frame.f_back is None:
                break
            frame = frame.f_back
    except Exception:
        logger.debug("m99: could not find the calling model", exc_info=True)
    return None


def _note_top_level(install: Installation, manager: Any, inputs: Any) -> None:
    try:
        if not (manager.handlers and _explicit(manager.handlers)):
            note_run_start(install.resolve, manager.metadata, inputs)
    except Exception:  # observation never reaches the host
        logger.exception("m99: could not note the start of a LangChain run")


# The wrappers: each calls the method it replaced (``previous``) and is inert once ``install.live`` is
# False.  Tool and model starts are checked before LangChain's own handlers see the run start.


def _tool_start(install: Installation) -> Factory:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def on_tool_start(self: Any, serialized: Any, *args: Any, **kwargs: Any) -> Any:
            gate = _tool_gate(install, self, serialized, args, kwargs) if install.live else None
            try:
                run = previous(self, serialized, *args, **kwargs)
            except BaseException:
                _not_started(gate)
                raise
            if gate is not None:
                setattr(run, _RUN, gate)
            return run

        return on_tool_start

    return factory


def _atool_start(install: Installation) -> Factory:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        async def on_tool_start(self: Any, serialized: Any, *args: Any, **kwargs: Any) -> Any:
            gate = _tool_gate(install, self, serialized, args, kwargs) if install.live else None
            try:
                run = await previous(self, serialized, *args, **kwargs)
            except BaseException:
                _not_started(gate)
                raise
            if gate is not None:
                setattr(run, _RUN, gate)
            return run

        return on_tool_start

    return factory


def _model_start(install: Installation) -> Factory:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def on_model_start(self: Any, *args: Any, **kwargs: Any) -> Any:
            gate = _model_gate(install, self, kwargs) if install.live else None
            runs = previous(self, *args, **kwargs)
            if gate is not None:
                for run in runs:
                    setattr(run, _RUN, gate)
            return runs

        return on_model_start

    return factory


def _amodel_start(install: Installation) -> Factory:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        async def on_model_start(self: Any, *args: Any, **kwargs: Any) -> Any:
            gate = _model_gate(install, self, kwargs) if install.live else None
            runs = await previous(self, *args, **kwargs)
            if gate is not None:
                for run in runs:
                    setattr(run, _RUN, gate)
            return runs

        return on_model_start

    return factory


def _chain_start(install: Installation) -> Factory:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def on_chain_start(self: Any, serialized: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            if self.parent_run_id is None and install.live:  # every runnable of a graph starts here: test cheaply
                _note_top_level(install, self, inputs)
            return previous(self, serialized, inputs, *args, **kwargs)

        return on_chain_start

    return factory


def _achain_start(install: Installation) -> Factory:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        async def on_chain_start(self: Any, serialized: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            if self.parent_run_id is None and install.live:
                _note_top_level(install, self, inputs)
            return await previous(self, serialized, inputs, *args, **kwargs)

        return on_chain_start

    return factory


def _run_end(ok: bool, is_async: bool) -> Callable[[Installation], Factory]:
    def for_install(install: Installation) -> Factory:
        def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
            def on_end(self: Any, result: Any, **kwargs: Any) -> Any:
                previous(self, result, **kwargs)
                run = self.__dict__.get(_RUN) if install.live else None  # set at the start of an admitted run
                if run is not None:
                    record_end(run, ok, result if ok else None)

            async def aon_end(self: Any, result: Any, **kwargs: Any) -> Any:
                await previous(self, result, **kwargs)
                run = self.__dict__.get(_RUN) if install.live else None
                if run is not None:
                    record_end(run, ok, result if ok else None)

            return aon_end if is_async else on_end

        return factory

    return for_install


def _redacting_guards(install: Installation, tool: str) -> Guards:
    """The Guards of the tool run in progress that redact now (none: it goes on untouched), found by the
    running config's agent name.  A resolver that fails refuses the run, as the tool gate would."""
    config = _lc_config.var_child_runnable_config.get()
    guards = governing(install.resolve, agent_of(config.get("metadata")) if config else None, tool=tool)
    return guards if redacting(guards) else ()


# Where a tool's input and output pass inside ``BaseTool.run``/``arun`` (callbacks see only copies of
# them, so these are the seams for L1 redaction): ``_to_args_and_kwargs`` turns the input into the
# tool body's arguments, the module's ``_format_output`` turns the body's result into what the caller
# gets.  They are in LangChain only while some Guard redacts (``_sync_seams``); the framework contract
# tests fail if LangChain renames or bypasses them.


def _tool_arguments(install: Installation) -> Factory:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def _to_args_and_kwargs(self: Any, tool_input: Any, tool_call_id: Any) -> Any:
            args, kwargs = previous(self, tool_input, tool_call_id)
            if install.live and any_redacting():
                guards = _redacting_guards(install, str(getattr(self, "name", "tool")))
                if guards:
                    return redact(guards, args), redact(guards, kwargs)
            return args, kwargs

        return _to_args_and_kwargs

    return factory


def _tool_output(install: Installation) -> Factory:
    def factory(previous: Callable[..., Any]) -> Callable[..., Any]:
        def _format_output(content: Any, artifact: Any, tool_call_id: Any, name: Any, status: Any) -> Any:
            if install.live and any_redacting():
                guards = _redacting_guards(install, str(name))
                if guards:
                    content = redact(guards, content)
            return previous(content, artifact, tool_call_id, name, status)

        return _format_output

    return factory


def _patches() -> list[tuple[Any, str, Callable[[Installation], Factory]]]:
    m = _lc_manager
    plain, aio = m.CallbackManager, m.AsyncCallbackManager
    starts: list[tuple[Any, str, Callable[[Installation], Factory]]] = [
        (plain, "on_tool_start", _tool_start),
        (aio, "on_tool_start", _atool_start),
        (plain, "on_chat_model_start", _model_start),
        (aio, "on_chat_model_start", _amodel_start),
        (plain, "on_llm_start", _model_start),
        (aio, "on_llm_start", _amodel_start),
        (plain, "on_chain_start", _chain_start),
        (aio, "on_chain_start", _achain_start),
    ]
    ends: list[tuple[Any, str, Callable[[Installation], Factory]]] = []
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


def _seams() -> list[tuple[Any, str, Callable[[Installation], Factory]]]:
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


def _put_in(install: _LangChainInstall) -> None:
    for owner, name, factory in _patches():
        install.wrap(owner, name, factory(install))
    install.seams = _seams()

    def sync() -> None:
        _sync_seams(install)

    watch_redacting(sync)
    install.add(lambda: unwatch_redacting(sync))
    install.add(lambda: _take_seams_out(install))  # undone first: before the managers' wrappers
    sync()  # a Guard may be redacting already


def _sync_seams(install: _LangChainInstall) -> None:
    """Put the redaction seams in while some Guard redacts, take them out when none does (called by the
    Guards on either change, in any order: it reads the state itself)."""
    with install.seams_lock:
        wanted = install.live and any_redacting()
        if wanted and not install.seams_in:
            for owner, name, factory in install.seams:
                install.seams_in.wrap(owner, name, factory(install))
        elif not wanted and install.seams_in:
            install.seams_in.undo()


def _take_seams_out(install: _LangChainInstall) -> None:
    with install.seams_lock:
        install.seams_in.undo()


adapter = Adapter("langchain", _LangChainInstall, _put_in, supported=SUPPORTED)


def install(guard_resolver: GuardSource = None) -> None:
    """Check every LangChain tool and model call in the process against the Guard, and at L1 redact every
    tool's input and output; idempotent (calling again only updates the resolver).  A run that has an
    ``M99CallbackHandler`` of its own is left to it for the checks."""
    adapter.install(guard_resolver)


def uninstall() -> None:
    """Undo exactly what ``install`` did; idempotent.  A method someone else wrapped after ``install``
    keeps their wrapper (ours under it then passes calls through)."""
    adapter.uninstall()


def installed() -> bool:
    return adapter.installed()
