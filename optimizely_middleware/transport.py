"""Sending one JSON POST: the interface and its ``requests`` implementation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import requests

__all__ = ["RequestsTransport", "Transport", "TransportResponse"]


@dataclass(frozen=True)
class TransportResponse:
    """What came back for one POST."""

    status: int
    headers: dict[str, str]


class Transport(Protocol):
    """Sends one already-serialised body. Raises ``OSError`` or
    ``requests.RequestException`` subclasses on network failure."""

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse: ...

    def close(self) -> None: ...


class RequestsTransport:
    """JSON POSTs over a pooled :class:`requests.Session`.

    Example::

        sender = EventSender(transport=RequestsTransport(timeout=(2.0, 5.0)))
    """

    def __init__(self, *, timeout: tuple[float, float] = (3.05, 10.0), pool_size: int = 8) -> None:
        self.timeout = timeout
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
        response = self._session.post(
            url,
            data=body,
            headers=headers,
            timeout=self.timeout,
            allow_redirects=False,
            verify=True,
        )
        response.close()
        return TransportResponse(response.status_code, dict(response.headers))

    def close(self) -> None:
        self._session.close()


def serialize(params: Any) -> bytes:
    """The compact JSON body the event API expects."""
    return json.dumps(params, separators=(",", ":")).encode()
