"""The control plane server: ``serve()`` for ``m99 serve``, ``EmbeddedControlPlane`` for notebooks,
tests and demos (the same server on a background thread and a temporary database).
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from ..config import DB_FILE, DEFAULT_PORT, TOKEN_FILE, resolve_data_dir
from ..control import ControlPlane, Settings
from ..crypto import VerifyKey
from ..errors import ConfigError
from ..store import Store, StoreError, open_store

__all__ = ["EmbeddedControlPlane", "build", "free_port", "listen", "serve"]


def _data_dir(data_dir: str | Path | None) -> Path:
    path = resolve_data_dir(data_dir)
    if not path.exists():
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create the data directory {path}: {exc.strerror}") from None
    elif not path.is_dir():
        raise ConfigError(f"the data directory {path} is not a directory")
    return path


def _store(path: Path, store_url: str | None) -> Store:
    try:
        return open_store(store_url or path / DB_FILE)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None


def build(
    data_dir: str | Path | None = None,
    settings: Settings | None = None,
    store_url: str | None = None,
    key_file: str | Path | None = None,
) -> ControlPlane:
    """A control plane over its store (SQLite in the data dir unless ``store_url`` names another)."""
    path = _data_dir(data_dir)
    store = _store(path, store_url)
    try:
        return ControlPlane(store, path, settings, key_file=Path(key_file) if key_file else None)
    except BaseException:
        store.close()
        raise


def listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket first: a busy port fails here, before anything is written or said."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = "is in use" if exc.errno in (98, 48) else f"cannot be used: {exc.strerror}"
        raise ConfigError(f"{host}:{port} {why} (is another `m99 serve` running? choose --port)") from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(cp: ControlPlane, log_level: str, **extra: Any) -> Any:
    import uvicorn

    from .app import create_app

    return uvicorn.Config(
        create_app(cp),
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="on",
        **extra,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    data_dir: str | Path | None = None,
    settings: Settings | None = None,
    store_url: str | None = None,
    log_level: str = "warning",
    key_file: str | Path | None = None,
    announce: Callable[[str, dict[str, Any]], None] | None = None,
) -> None:
    """Run the control plane until interrupted.  ``announce`` says where it listens and its key (default:
    printed); with it given, the caller has configured logging and uvicorn's loggers go through it."""
    import uvicorn

    say = announce or (lambda text, fields: print(text, flush=True))
    sock = listen(host, port)
    try:
        cp = build(data_dir, settings, store_url, key_file)
    except BaseException:
        sock.close()
        raise
    try:
        token = cp.ensure_admin_token()
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
        bound = sock.getsockname()[1]
        cp.self_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{bound}"
        url = f"http://{shown}:{bound}"
        say(f"M99 control plane on {url}  (REST /api, dashboard /, API docs /docs)", {"event": "serving", "url": url})
        say(f"store: {cp.store.location}", {"event": "store", "store": str(cp.store.location)})
        say(
            f"server key: {cp.key.public_b64}  (agents may pin it: M99_SERVER_KEY)",
            {"event": "server_key", "server_key": cp.key.public_b64},
        )
        if token:
            say(
                f"first start: admin token written owner-only to {cp.data_dir / TOKEN_FILE}; the m99 CLI on this "
                "machine reads it from there (elsewhere: set M99_TOKEN). Open the dashboard with it.",
                {"event": "admin_token_written", "path": str(cp.data_dir / TOKEN_FILE)},
            )
        extra = {} if announce is None else {"log_config": None}
        server = uvicorn.Server(_uvicorn_config(cp, log_level, **extra))
        server.run(sockets=[sock])
    finally:
        sock.close()
        cp.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedControlPlane:
    """A real control plane on a background thread, for notebooks, tests and demos.

    >>> with EmbeddedControlPlane() as cp:
    ...     cp.url, cp.token
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int = 0,
        settings: Settings | None = None,
        host: str = "127.0.0.1",
        store_url: str | None = None,
        key_file: str | Path | None = None,
    ) -> None:
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="m99-")
        self.data_dir = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.host = host
        self._sock = listen(host, port)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        try:
            self.control = build(self.data_dir, settings, store_url, key_file)
            self.control.self_url = self.url
        except BaseException:
            self._sock.close()
            raise
        self.control.ensure_admin_token()
        token_file = self.data_dir / TOKEN_FILE
        self.token = token_file.read_text().strip() if token_file.exists() else ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def server_key(self) -> str:
        return self.control.key.public_b64

    def start(self) -> EmbeddedControlPlane:
        """Serve on a thread (once: started already, it is returned as it is)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        import uvicorn

        self._server = uvicorn.Server(_uvicorn_config(self.control, "error"))
        self._server.install_signal_handlers = lambda: None  # not the main thread
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="m99-control-plane", daemon=True
        )
        self._thread.start()
        # A control plane started in this very process is trusted by construction: pin its key for its URL.
        from ..link import trust_server_key

        trust_server_key(self.url, VerifyKey(self.control.key.public_bytes))
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the embedded control plane did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
        self.control.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
