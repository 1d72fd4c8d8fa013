"""The operators' HTTP: JSON requests over the standard library's ``http.client``.

An operator's command is one or two requests from a process that lives a fraction of a second, and
``m99 execute`` is what someone types in an emergency: its start-up is on the clock.  httpx (what the
agent side uses, for its async streams and connection pools) costs some 25 ms to import; the standard
library's client is most of the way there already, so the operator's side speaks through it.
Answers map to M99's errors exactly as the agent side's do (``m99.errors.error_of_answer``).
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from .errors import ConfigError, ControlPlaneUnreachable, error_of_answer

__all__ = ["JsonClient"]

MAX_ANSWER = 64 * 1024 * 1024  # an answer larger than this is refused, not held in memory


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class JsonClient:
    """One control plane URL: ``call(method, path, json=..., params=...)`` returns the answer's JSON."""

    def __init__(self, url: str, headers: Mapping[str, str], timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"bad control plane URL {url!r}: expected http://HOST:PORT or https://HOST:PORT")
        self.url = url
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "m99-operator", **headers}
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._tls:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _send(
        self, method: str, path: str, json_body: Any = None, params: Mapping[str, Any] | None = None
    ) -> http.client.HTTPResponse:
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        headers = dict(self._headers)
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more, fresh
            conn = self._connection()
            try:
                conn.request(method, target, body=body, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 2:
                    raise self._unreachable(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._unreachable(exc) from None
        raise AssertionError("unreachable")

    def _unreachable(self, exc: BaseException) -> ControlPlaneUnreachable:
        timed_out = isinstance(exc, TimeoutError)
        what = "timed out" if timed_out else exc.__class__.__name__
        detail = f": {exc}" if str(exc) and not timed_out else ""
        return ControlPlaneUnreachable(
            f"cannot reach the control plane at {self.url}: {what}{detail}. Is `m99 serve` running?"
        )

    def call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """The JSON of a 2xx answer, or the matching ``ControlPlaneError``."""
        return _json(self._body(self._send(method, path, json, params), path))

    def raw(self, method: str, path: str) -> bytes:
        """The body of a 2xx answer as bytes (a file the server serves), or the matching error."""
        return self._body(self._send(method, path), path)

    def _body(self, response: http.client.HTTPResponse, path: str) -> bytes:
        """The whole body of a 2xx answer (bounded), or the server's error raised."""
        try:
            raw = response.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise self._unreachable(exc) from None
        if len(raw) > MAX_ANSWER:
            self.close()
            raise ControlPlaneUnreachable(f"the answer from {self.url}{path} is larger than {MAX_ANSWER} bytes")
        if not 200 <= response.status < 300:
            raise error_of_answer(response.status, _json(raw), self.url + path)
        return raw

    def lines(self, path: str) -> Iterator[str]:
        """The lines of a streamed 2xx answer (e.g. the audit export), or the matching error."""
        response = self._send("GET", path)
        if not 200 <= response.status < 300:
            self._body(response, path)  # raises the server's error
        try:
            for line in response:
                yield line.decode().rstrip("\r\n")
        finally:
            self.close()  # the connection is not reusable until the stream was read to its end

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
