"""Sending one JSON POST: the :class:`Transport` interface and its implementations.

A transport sends one already-serialised body and reports the status code; it
does not retry, batch or log (the :class:`~optimizely_middleware.EventSender`
does). The default is :class:`PooledTransport` (``urllib3``, which comes with
``requests``). Plug your own by passing ``transport=`` to the sender, or swap
it later by assigning ``sender.transport = t``::

    class MyTransport:
        def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
            status = my_http_client.post(url, body, headers)
            return TransportResponse(status, {})

        def close(self) -> None:
            pass

    sender = EventSender(transport=MyTransport())

Raise :class:`~optimizely_middleware.delivery.retry.PermanentError` from ``post`` for a
failure that a retry cannot fix; any exception that is not a network error
(:class:`OSError`) is treated the same way.
"""

from __future__ import annotations

import os
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.exceptions

from optimizely_middleware.delivery.retry import PermanentError
from optimizely_middleware.process import hooks

__all__ = ["PooledTransport", "RequestsTransport", "Transport", "TransportResponse"]


@dataclass(frozen=True)
class TransportResponse:
    """What came back for one POST: the status code and the response headers."""

    status: int
    headers: dict[str, str]


class Transport(Protocol):
    """Sends one already-serialised body to ``url``.

    ``post`` returns the response (any status) or raises on a network failure
    (refused connection, timeout, ...); the sender retries both kinds of
    failure as appropriate. It is called from the sender's I/O threads (one, more
    while POSTs are slow), so it must be thread-safe. ``close`` releases connections.
    """

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse: ...

    def close(self) -> None: ...


class RequestsTransport:
    """JSON POSTs over a pooled :class:`requests.Session` (the default before 0.2).

    About twice the CPU of :class:`PooledTransport` per POST: ``requests``
    reads the proxy and CA settings from the environment on every request.

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
        hooks.on_fork(self)

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=self.pool_size, pool_maxsize=self.pool_size, max_retries=0
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
        hooks.check_fork()
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

    def after_fork_in_child(self) -> None:
        # The old pool's sockets are shared with the parent: abandon them
        # without closing (closing could disturb the parent's TLS sessions).
        self._session = self._new_session()


class PooledTransport:
    """JSON POSTs over ``urllib3`` connection pools: the default transport.

    What ``requests.Session.post`` does per request, this does once, at
    construction: it reads the proxy settings (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY``, ``NO_PROXY``) and the CA bundle (``REQUESTS_CA_BUNDLE``,
    ``CURL_CA_BUNDLE``, else certifi's) from the environment. That halves the
    CPU of a POST. As with the old ``requests`` transport: connect and read
    timeouts are always set, redirects are not followed (a 3xx is reported as
    is), TLS certificates are verified, urllib3's own retries are off, and a
    forked child gets fresh pools (through the package's one fork check, which
    also notices uWSGI's C fork by pid).

    Example::

        sender = EventSender(transport=PooledTransport(timeout=(2.0, 5.0), pool_size=8))
    """

    def __init__(self, *, timeout: tuple[float, float] = (3.05, 10.0), pool_size: int = 10) -> None:
        if len(timeout) != 2 or min(timeout) <= 0:
            raise ValueError("timeout must be a (connect, read) pair of positive seconds")
        self.timeout = timeout
        self.pool_size = pool_size
        self._proxies = {k: v for k, v in urllib.request.getproxies().items() if v}
        ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        ca = ca or requests.utils.DEFAULT_CA_BUNDLE_PATH
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
        tls["ca_cert_dir" if os.path.isdir(ca) else "ca_certs"] = ca
        self._pool_kw: dict[str, Any] = {
            "maxsize": pool_size,
            "block": False,
            "retries": False,
            "timeout": urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            **tls,
        }
        self.after_fork_in_child()
        hooks.on_fork(self)

    def after_fork_in_child(self) -> None:
        """New pools (also at construction): a forked child abandons the parent's
        without closing them (closing could disturb the parent's TLS sessions)."""
        self._lock = threading.Lock()
        self._direct = urllib3.PoolManager(num_pools=self.pool_size, **self._pool_kw)
        self._via_proxy: dict[str, urllib3.PoolManager] = {}
        self._route: dict[tuple[str, str], urllib3.PoolManager] = {}

    def _manager_for(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        manager = self._route.get(key)
        if manager is not None:
            return manager
        with self._lock:
            proxy = self._proxy_for(parts.scheme, parts.hostname or "")
            if proxy is None:
                manager = self._direct
            else:
                manager = self._via_proxy.get(proxy)
                if manager is None:
                    manager = self._via_proxy[proxy] = _proxy_manager(
                        proxy, self.pool_size, self._pool_kw
                    )
            if len(self._route) < 1024:
                self._route[key] = manager
        return manager

    def _proxy_for(self, scheme: str, host: str) -> str | None:
        proxy = self._proxies.get(scheme) or self._proxies.get("all")
        if proxy is None or not host:
            return None
        if urllib.request.proxy_bypass_environment(host, self._proxies):  # type: ignore[attr-defined]
            return None
        return proxy

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
        hooks.check_fork()
        try:
            response = self._manager_for(url).request(
                "POST", url, body=body, headers=headers, redirect=False, retries=False
            )
        except urllib3.exceptions.LocationValueError as exc:
            raise PermanentError(f"invalid URL ({exc})") from exc
        except ValueError as exc:  # e.g. http.client: a header value with a newline
            raise PermanentError(str(exc)) from exc
        except urllib3.exceptions.SSLError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
                raise PermanentError(f"TLS certificate verification failed ({exc})") from exc
            raise
        return TransportResponse(response.status, dict(response.headers))

    def close(self) -> None:
        with self._lock:
            self._direct.clear()
            for manager in self._via_proxy.values():
                manager.clear()


def _proxy_manager(proxy: str, pool_size: int, pool_kw: dict[str, Any]) -> urllib3.ProxyManager:
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    proxy_headers = None
    if parts.username is not None:
        auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        proxy_headers = urllib3.make_headers(proxy_basic_auth=auth)
    bare = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
    return urllib3.ProxyManager(bare, num_pools=pool_size, proxy_headers=proxy_headers, **pool_kw)
