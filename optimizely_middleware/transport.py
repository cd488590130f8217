"""Sending one JSON POST: the :class:`Transport` interface and its ``requests`` implementation.

A transport sends one already-serialised body and reports the status code; it
does not retry, batch or log (the :class:`~optimizely_middleware.EventSender`
does). Plug your own by passing ``transport=`` to the sender::

    class MyTransport:
        def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
            status = my_http_client.post(url, body, headers)
            return TransportResponse(status, {})

        def close(self) -> None:
            pass

    sender = EventSender(transport=MyTransport())
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import requests
import requests.adapters

__all__ = ["RequestsTransport", "Transport", "TransportResponse", "serialize"]


@dataclass(frozen=True)
class TransportResponse:
    """What came back for one POST: the status code and the response headers."""

    status: int
    headers: dict[str, str]


class Transport(Protocol):
    """Sends one already-serialised body to ``url``.

    ``post`` returns the response (any status) or raises on a network failure
    (refused connection, timeout, ...); the sender retries both kinds of
    failure as appropriate. It is called from several worker threads at once,
    so it must be thread-safe. ``close`` releases connections.
    """

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse: ...

    def close(self) -> None: ...


class RequestsTransport:
    """JSON POSTs over a pooled :class:`requests.Session`.

    Connect and read timeouts are always set, redirects are not followed (a
    3xx is reported as is), TLS certificates are verified, and urllib3's own
    retries are off (the sender retries with backoff instead). After
    ``os.fork()`` the child gets a fresh connection pool, so parent and child
    never share a socket.

    Example::

        sender = EventSender(transport=RequestsTransport(timeout=(2.0, 5.0), pool_size=8))
    """

    def __init__(self, *, timeout: tuple[float, float] = (3.05, 10.0), pool_size: int = 10) -> None:
        if len(timeout) != 2 or min(timeout) <= 0:
            raise ValueError("timeout must be a (connect, read) pair of positive seconds")
        self.timeout = timeout
        self.pool_size = pool_size
        self._session = self._new_session()
        _live_transports.add(self)

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=self.pool_size, pool_maxsize=self.pool_size, max_retries=0
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
        response = self._session.post(
            url,
            data=body,
            headers=headers,
            timeout=self.timeout,
            allow_redirects=False,
            verify=True,
        )
        try:
            return TransportResponse(response.status_code, dict(response.headers))
        finally:
            response.close()

    def close(self) -> None:
        self._session.close()

    def _after_fork_in_child(self) -> None:
        # The old pool's sockets are shared with the parent: abandon them
        # without closing (closing could disturb the parent's TLS sessions).
        self._session = self._new_session()


_live_transports: weakref.WeakSet[RequestsTransport] = weakref.WeakSet()


def _reset_transports_in_child() -> None:
    for transport in list(_live_transports):
        transport._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_transports_in_child)


def serialize(params: Any) -> bytes:
    """The compact JSON body the event API expects (``separators=(",", ":")``)."""
    return json.dumps(params, separators=(",", ":")).encode()
