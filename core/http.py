"""HTTP for M99's clients (agents and operators): answers mapped to M99's errors, one TLS context.

httpx is imported here without its command-line client: httpx loads that (rich, pygments, click's
output helpers: some 40 ms) into every process that imports it when those packages are installed, as
the agent frameworks install them, and no agent or operator command ever runs it.
"""

from __future__ import annotations

import functools
import ssl
import sys
from typing import Any

if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
import httpx

from .errors import ControlPlaneUnreachable, error_of_answer

__all__ = ["httpx", "raise_for_answer", "request", "tls_context", "verify_for"]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one default TLS context of the process, shared by every client of the control plane.

    Building one loads the CA bundle (20-180 ms measured here): it is built on first use, and only for
    an ``https://`` URL.
    """
    return httpx.create_ssl_context()


@functools.cache
def _no_tls() -> ssl.SSLContext:
    # httpx builds a TLS context for every client, loading the CA bundle (~40 ms) even for http://.  A
    # plain URL gets one with no certificates at all: cheap, and any TLS it were asked for would fail.
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def verify_for(url: str) -> ssl.SSLContext:
    """The TLS context for a client of ``url``: the default one for https://, an empty one otherwise."""
    return tls_context() if url.startswith("https://") else _no_tls()


def raise_for_answer(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer, or the matching ``ControlPlaneError``."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success:
        return data
    raise error_of_answer(response.status_code, data, str(response.request.url))


def request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise ControlPlaneUnreachable(
            f"cannot reach the control plane at {client.base_url}: {exc.__class__.__name__}"
            f"{': ' + str(exc) if str(exc) else ''}. Is `m99 serve` running?"
        ) from None
    return raise_for_answer(response)
