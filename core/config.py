"""Where things are: the control plane's URL, the data directory and the operator token.

Each setting is resolved as argument → environment variable → default, so the seed quick
start (`m99 serve` in one terminal, `m99 arm …` in another) works with no configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

DEFAULT_PORT = 8099
DEFAULT_URL = f"http://localhost:{DEFAULT_PORT}"
TOKEN_FILE = "admin.token"
DB_FILE = "m99.db"
SERVER_KEY_FILE = "server.key"
HEAD_FILE = "audit-head.json"


def resolve_url(url: str | None = None) -> str:
    """The control plane's URL; several replicas' URLs separated by commas (``http://a:8099,http://b:8099``)."""
    value = url or os.environ.get("M99_URL") or DEFAULT_URL
    parts = [p.strip().rstrip("/") for p in value.split(",") if p.strip()]
    for part in parts or [value]:
        if not part.startswith(("http://", "https://")):
            raise ConfigError(f"bad control-plane URL {part!r}: it must start with http:// or https://")
    return ",".join(parts)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    value = data_dir or os.environ.get("M99_DATA_DIR")
    return Path(value).expanduser() if value else Path.home() / ".m99"


def resolve_token(token: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The operator token: --token, then M99_TOKEN, then the admin token file ``m99 serve`` wrote."""
    if token:
        return token.strip()
    env = os.environ.get("M99_TOKEN")
    if env:
        return env.strip()
    path = resolve_data_dir(data_dir) / TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from None
