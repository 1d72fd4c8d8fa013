"""The agent's end of the push stream: a lean reader of the control plane's Server-Sent Events.

Every Guard holds one push connection open, and a fleet-wide stop makes every connection in a
process deliver one event at the same moment, so the cost of reading one event bounds the
time-to-halt.  An HTTP client library's streaming stack cost ~200 µs of CPU per event here; this
asyncio protocol parses the stream with a few buffer operations per event.

It speaks what the stream needs and no more: one ``GET``, then a ``200`` whose body is chunked or
ends with the connection, made of ``event:`` / ``data:`` lines.  Anything else is an error and
the caller reconnects.  It connects directly; ``Session`` uses httpx instead when the environment
names an HTTP proxy for the control plane.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from . import __version__
from .errors import ControlPlaneError, ControlPlaneUnreachable, error_for_status

__all__ = ["EventHandler", "follow"]

EventHandler = Callable[[str, bytes], None]

MAX_HEAD = 64 * 1024  # status line and headers
MAX_EVENT = 1024 * 1024  # one event's lines; the control plane's are a few hundred bytes

_SIZE, _DATA, _CRLF, _RAW = range(4)


class _EventStream(asyncio.Protocol):
    """HTTP/1.1 response head, then chunked (or close-delimited) SSE, fed to ``on_event``."""

    def __init__(self, on_event: EventHandler, loop: asyncio.AbstractEventLoop) -> None:
        self.on_event = on_event
        self.loop = loop
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.last_data = loop.time()
        self.transport: asyncio.Transport | None = None
        self._head: bytearray | None = bytearray()  # None once the head is parsed
        self._status = 0
        self._error_body = bytearray()
        self._length = -1
        self._raw = bytearray()  # body bytes not yet de-chunked
        self._body_state = _SIZE
        self._chunk_left = 0
        self._lines = bytearray()  # de-chunked SSE text not yet split into lines
        self._kind = ""
        self._data: list[bytes] = []

    # -- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        try:
            self._feed(data)
        except Exception as exc:  # a protocol error or a failing handler: drop the stream, reconnect
            self._fail(exc if isinstance(exc, ControlPlaneError) else ControlPlaneError(f"push stream: {exc!r}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost settles the futures

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head is None and self._status == 200 and self._body_state == _RAW:
            self._flush_lines(final=True)
        if self._status and self._status != 200 and not self.opened.done():
            self._refuse()
        reason = f": {exc}" if exc else ""
        self._fail(ControlPlaneUnreachable(f"the push stream closed{reason}"))

    # -- parsing --------------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    raise ControlPlaneError("push stream: response head too large")
                return
            head, rest = bytes(self._head[:end]), bytes(self._head[end + 4 :])
            self._head = None
            self._parse_head(head)
            data = rest
            if self._status == 200 and not self.opened.done():
                self.opened.set_result(None)
        if self._status != 200:
            self._error_body += data
            if 0 <= self._length <= len(self._error_body):
                self._refuse()
            return
        if self._body_state == _RAW:
            self._lines += data
        else:
            self._raw += data
            self._dechunk()
        self._flush_lines()

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ControlPlaneError(f"push stream: not an HTTP/1.1 answer: {lines[0][:80]!r}")
        self._status = int(parts[1])
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"content-length" and value.isdigit():
                self._length = int(value)
        self._body_state = _SIZE if chunked else _RAW

    def _dechunk(self) -> None:
        raw = self._raw
        while raw:
            if self._body_state == _SIZE:
                end = raw.find(b"\r\n")
                if end < 0:
                    if len(raw) > 1024:
                        raise ControlPlaneError("push stream: bad chunk size line")
                    return
                size = int(bytes(raw[:end]).split(b";", 1)[0].strip() or b"x", 16)
                del raw[: end + 2]
                if size == 0:  # the last chunk: the server ended the stream
                    raise ControlPlaneUnreachable("the control plane ended the push stream")
                self._chunk_left, self._body_state = size, _DATA
            elif self._body_state == _DATA:
                take = min(self._chunk_left, len(raw))
                self._lines += raw[:take]
                del raw[:take]
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._body_state = _CRLF
            else:  # _CRLF after a chunk's data
                if len(raw) < 2:
                    return
                if raw[:2] != b"\r\n":
                    raise ControlPlaneError("push stream: bad chunk framing")
                del raw[:2]
                self._body_state = _SIZE

    def _flush_lines(self, *, final: bool = False) -> None:
        buf = self._lines
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # a blank line ends an event
                if self._data:
                    data, self._data = b"\n".join(self._data), []
                    kind, self._kind = self._kind or "message", ""
                    self.on_event(kind, data)
                else:
                    self._kind = ""
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                self._kind = line[6:].strip().decode("utf-8", "replace")
            # comments (":" keep-alives), "id:" and "retry:" need nothing
        if start:
            del buf[:start]
        if len(buf) > MAX_EVENT or sum(map(len, self._data)) > MAX_EVENT:
            raise ControlPlaneError("push stream: event too large")
        if final:
            buf.clear()

    def _refuse(self) -> None:
        """A non-200 answer: the matching ControlPlaneError, with the server's message if it sent one."""
        message = f"HTTP {self._status} from the push stream"
        code = ""
        try:
            err = json.loads(bytes(self._error_body)).get("error")
            if isinstance(err, dict):
                message, code = str(err.get("message") or message), str(err.get("code") or "")
        except (ValueError, AttributeError):
            pass
        self._fail(error_for_status(self._status, message, code))

    def _fail(self, exc: ControlPlaneError) -> None:
        for future in (self.opened, self.closed):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here: one of the two is often never awaited
        if self.transport is not None:
            self.transport.close()


async def follow(
    url: str,
    path: str,
    on_event: EventHandler,
    *,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
    idle_timeout: float = 45.0,
    on_open: Callable[[], None] | None = None,
) -> None:
    """Read the SSE stream at ``url`` + ``path``, calling ``on_event(kind, data)`` for each event, until
    the stream fails; then raise a ``ControlPlaneError`` (``ControlPlaneUnreachable`` for a lost or
    silent connection).  ``on_open`` runs once the server has answered 200.  Cancellation closes it.

    Timeouts use ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 the latter can swallow a
    cancellation that arrives as its operation completes, and a closing session then waited on a
    stream that was never told to stop."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ControlPlaneError(f"push stream: unsupported control plane URL {url!r}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path.rstrip("/") + path) or "/"
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header += f":{parts.port}"
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items() if "\n" not in value + name)
    loop = asyncio.get_running_loop()
    protocol = _EventStream(on_event, loop)
    try:
        async with asyncio.timeout(connect_timeout):
            transport, _ = await loop.create_connection(
                lambda: protocol,
                host,
                port,
                ssl=(tls or ssl.create_default_context()) if parts.scheme == "https" else None,
                server_hostname=host if parts.scheme == "https" else None,
            )
    except (OSError, TimeoutError) as exc:
        raise ControlPlaneUnreachable(f"cannot open the push stream at {url}: {exc!r}") from None
    try:
        transport.write(
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\nUser-Agent: m99/{__version__}\r\n{extra}\r\n".encode()
        )
        try:
            async with asyncio.timeout(connect_timeout):
                await asyncio.shield(protocol.opened)
        except TimeoutError:
            raise ControlPlaneUnreachable(f"the push stream at {url} did not answer in {connect_timeout:g} s") from None
        if on_open is not None:
            on_open()
        while True:
            done, _ = await asyncio.wait((protocol.closed,), timeout=idle_timeout / 3)
            if done:
                protocol.closed.result()  # raises why it closed
            if loop.time() - protocol.last_data > idle_timeout:
                raise ControlPlaneUnreachable(f"the push stream was silent for {idle_timeout:g} s")
    finally:
        transport.close()
