"""The control plane server: ``serve()`` for ``m99 serve``, ``EmbeddedControlPlane`` for
notebooks, tests and demos (the same server on a background thread and a temporary database).
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ..config import DB_FILE, DEFAULT_PORT, TOKEN_FILE, resolve_data_dir
from ..control import ControlPlane, Settings
from ..errors import ConfigError
from ..store import SQLiteStore, Store, StoreError


def open_store(data_dir: Path, database_url: str | None = None) -> Store:
    if database_url:
        # The Store interface is what a PostgreSQL store implements; it is not shipped yet.
        raise ConfigError(
            f"--database-url {database_url.split('@')[-1]!r}: only the SQLite store (the default) is available "
            "in this version"
        )
    try:
        return SQLiteStore(data_dir / DB_FILE)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None


def build(
    data_dir: str | Path | None = None, settings: Settings | None = None, database_url: str | None = None
) -> ControlPlane:
    path = resolve_data_dir(data_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"cannot use the data directory {path}: {exc.strerror}") from None
    return ControlPlane(open_store(path, database_url), path, settings)


def _uvicorn_config(cp: ControlPlane, host: str, port: int, log_level: str) -> Any:
    import uvicorn

    from .app import create_app

    return uvicorn.Config(
        create_app(cp),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="on",
    )


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    data_dir: str | Path | None = None,
    settings: Settings | None = None,
    database_url: str | None = None,
    log_level: str = "warning",
) -> None:
    import uvicorn

    cp = build(data_dir, settings, database_url)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    print(f"M99 control plane on http://{shown}:{port}  (REST /api, dashboard /, OpenAPI /docs)", flush=True)
    print(f"data: {cp.store.location}", flush=True)
    if cp.admin_token:
        print(
            f"first start: admin token written owner-only to {cp.data_dir / TOKEN_FILE}; the m99 CLI on this "
            "machine reads it from there (elsewhere: set M99_TOKEN)",
            flush=True,
        )
        print(f"dashboard: http://{shown}:{port}/#token={cp.admin_token}", flush=True)
    try:
        uvicorn.Server(_uvicorn_config(cp, host, port, log_level)).run()
    finally:
        cp.store.close()


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
    ) -> None:
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="m99-")
        self.data_dir = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.port = port or free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.control = build(self.data_dir, settings)
        self.token = (self.data_dir / TOKEN_FILE).read_text().strip()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> EmbeddedControlPlane:
        import uvicorn

        self._server = uvicorn.Server(_uvicorn_config(self.control, self.host, self.port, "error"))
        self._server.install_signal_handlers = lambda: None  # not the main thread
        self._thread = threading.Thread(target=self._server.run, name="m99-control-plane", daemon=True)
        self._thread.start()
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
        self.control.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
