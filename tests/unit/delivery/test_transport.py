"""The transports against a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from optimizely_middleware.delivery.retry import PermanentError, is_transient_error
from optimizely_middleware.delivery.transport import (
    PooledTransport,
    RequestsTransport,
    Transport,
)
from optimizely_middleware.process import hooks
from tests.support.endpoint import EventEndpoint
from tests.support.events import free_port

TRANSPORTS: list[Callable[..., Any]] = [PooledTransport, RequestsTransport]


@pytest.fixture(params=TRANSPORTS, ids=lambda t: t.__name__)
def make(request: pytest.FixtureRequest) -> Callable[..., Any]:
    made: list[Transport] = []

    def factory(**kwargs: Any) -> Any:
        transport = request.param(**kwargs)
        made.append(transport)
        return transport

    yield factory
    for transport in made:
        transport.close()


def test_post_sends_body_and_headers_exactly(event_endpoint: EventEndpoint, make: Any) -> None:
    event_endpoint.response_headers = {"X-Answer": "received"}
    body = b'{"visitors":[{"visitor_id":"u1"}]}'
    response = make().post(
        event_endpoint.url, body, {"Content-Type": "application/json", "X-Trace": "t-1"}
    )
    assert response.status == 200
    assert response.headers["X-Answer"] == "received"  # what the server really sent
    assert response.headers["Content-Length"] == "0"
    (post,) = event_endpoint.wait_for_posts(1)
    assert post.body == body
    assert post.path == "/v1/events"
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["X-Trace"] == "t-1"
    assert post.headers["Content-Length"] == str(len(body))


def test_error_statuses_are_returned_not_raised(event_endpoint: EventEndpoint, make: Any) -> None:
    event_endpoint.status = 503
    event_endpoint.response_headers = {"Retry-After": "7"}
    response = make().post(event_endpoint.url, b"{}", {})
    assert response.status == 503
    assert response.headers["Retry-After"] == "7"


def test_redirects_are_not_followed(event_endpoint: EventEndpoint, make: Any) -> None:
    event_endpoint.status = 307
    event_endpoint.response_headers = {"Location": event_endpoint.url + "/elsewhere"}
    response = make().post(event_endpoint.url, b"{}", {})
    assert response.status == 307
    assert event_endpoint.arrived == 1


def test_read_timeout_raises_a_transient_error(event_endpoint: EventEndpoint, make: Any) -> None:
    event_endpoint.hold()
    transport = make(timeout=(2.0, 0.2))
    try:
        with pytest.raises(Exception) as info:
            transport.post(event_endpoint.url, b"{}", {})
    finally:
        event_endpoint.release()
    assert is_transient_error(info.value)
    assert "timed out" in str(info.value).lower()


def test_connection_refused_raises_a_transient_error(make: Any) -> None:
    with pytest.raises(Exception) as info:
        make().post(f"http://127.0.0.1:{free_port()}/v1/events", b"{}", {})
    assert is_transient_error(info.value)


@pytest.mark.parametrize(
    "url", ["http://", "ftp://127.0.0.1/v1/events", "http://127.0.0.1:99999/v1/events"]
)
def test_an_invalid_url_is_a_permanent_error(url: str) -> None:
    with pytest.raises(PermanentError) as info:
        PooledTransport().post(url, b"{}", {})
    assert not is_transient_error(info.value)


def test_an_invalid_header_is_a_permanent_error(event_endpoint: EventEndpoint, make: Any) -> None:
    with pytest.raises(Exception) as info:
        make().post(event_endpoint.url, b"{}", {"X-Bad": "a\nb"})
    assert not is_transient_error(info.value)
    assert event_endpoint.arrived == 0


def test_connections_are_pooled_and_reused(make: Any) -> None:
    client_ports: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            client_ports.append(self.client_address[1])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    transport = make(pool_size=1)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/events"
        for _ in range(3):
            assert transport.post(url, b"{}", {}).status == 200
    finally:
        server.shutdown()
        server.server_close()
    assert len(client_ports) == 3
    assert len(set(client_ports)) == 1  # one TCP connection for all three POSTs


def test_proxy_settings_are_read_once_at_construction(
    event_endpoint: EventEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("no_proxy", raising=False)
    through_proxy = PooledTransport()
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.delenv("http_proxy", raising=False)
    direct = PooledTransport()
    assert direct.post(event_endpoint.url, b"{}", {}).status == 200
    with pytest.raises(Exception) as info:  # the proxy read at construction is still used
        through_proxy.post(event_endpoint.url, b"{}", {})
    assert is_transient_error(info.value)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert PooledTransport().post(event_endpoint.url, b"{}", {}).status == 200  # bypassed


def _pools_of(transport: Any) -> object:
    return transport._direct if isinstance(transport, PooledTransport) else transport._session


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("cls", TRANSPORTS, ids=lambda t: t.__name__)
def test_a_forked_child_gets_fresh_pools_by_pid_without_fork_hooks(
    cls: Any, event_endpoint: EventEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = cls()
    assert transport.post(event_endpoint.url, b"{}", {}).status == 200
    parent_pools = _pools_of(transport)
    monkeypatch.setattr(hooks, "_after_fork_in_child", lambda: None)  # as uWSGI's C fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        inherited = _pools_of(transport) is parent_pools
        ok = transport.post(event_endpoint.url, b"{}", {}).status == 200
        os._exit(0 if inherited and ok and _pools_of(transport) is not parent_pools else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _pools_of(transport) is parent_pools


@pytest.mark.parametrize("timeout", [(0.0, 1.0), (1.0, -1.0)])
@pytest.mark.parametrize("cls", TRANSPORTS, ids=lambda t: t.__name__)
def test_timeouts_must_be_positive(cls: Any, timeout: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        cls(timeout=timeout)


@pytest.fixture
def https_endpoint(tmp_path: Path) -> Iterator[str]:
    """An HTTPS endpoint on 127.0.0.1 with a self-signed certificate nobody trusts."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    endpoint = EventEndpoint().start()
    assert endpoint._server is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    endpoint._server.socket = context.wrap_socket(endpoint._server.socket, server_side=True)
    try:
        yield f"https://127.0.0.1:{endpoint.port}/v1/events"
    finally:
        endpoint.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_a_certificate_that_fails_verification_is_a_permanent_error(
    https_endpoint: str, make: Any
) -> None:
    with pytest.raises(Exception) as info:
        make().post(https_endpoint, b"{}", {})
    assert not is_transient_error(info.value)
    assert "certificate verify failed" in str(info.value).lower()
