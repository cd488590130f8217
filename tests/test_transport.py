"""RequestsTransport against a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from optimizely_middleware.transport import RequestsTransport, TransportResponse, serialize
from tests.event_endpoint import EventEndpoint


def test_serialize_is_compact_json() -> None:
    assert serialize({"a": [1, {"b": "é"}], "c": None}) == b'{"a":[1,{"b":"\\u00e9"}],"c":null}'


def test_post_sends_body_and_headers_exactly(event_endpoint: EventEndpoint) -> None:
    transport = RequestsTransport()
    body = serialize({"visitors": [{"visitor_id": "u1"}]})
    response = transport.post(
        event_endpoint.url, body, {"Content-Type": "application/json", "X-Trace": "t-1"}
    )
    transport.close()
    assert response == TransportResponse(200, response.headers)
    (post,) = event_endpoint.wait_for_posts(1)
    assert post.body == body
    assert post.path == "/v1/events"
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["X-Trace"] == "t-1"
    assert post.headers["Content-Length"] == str(len(body))


def test_error_statuses_are_returned_not_raised(event_endpoint: EventEndpoint) -> None:
    event_endpoint.status = 503
    event_endpoint.response_headers = {"Retry-After": "7"}
    response = RequestsTransport().post(event_endpoint.url, b"{}", {})
    assert response.status == 503
    assert response.headers["Retry-After"] == "7"


def test_redirects_are_not_followed(event_endpoint: EventEndpoint) -> None:
    event_endpoint.status = 307
    event_endpoint.response_headers = {"Location": event_endpoint.url + "/elsewhere"}
    response = RequestsTransport().post(event_endpoint.url, b"{}", {})
    assert response.status == 307
    assert event_endpoint.arrived == 1


def test_read_timeout_raises(event_endpoint: EventEndpoint) -> None:
    event_endpoint.hold()
    transport = RequestsTransport(timeout=(2.0, 0.2))
    try:
        with pytest.raises(requests.Timeout):
            transport.post(event_endpoint.url, b"{}", {})
    finally:
        event_endpoint.release()
        transport.close()


def test_connection_refused_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(requests.ConnectionError):
        RequestsTransport().post(f"http://127.0.0.1:{port}/v1/events", b"{}", {})


def test_connections_are_pooled_and_reused() -> None:
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
    transport = RequestsTransport(pool_size=1)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/events"
        for _ in range(3):
            assert transport.post(url, b"{}", {}).status == 200
    finally:
        transport.close()
        server.shutdown()
        server.server_close()
    assert len(client_ports) == 3
    assert len(set(client_ports)) == 1  # one TCP connection for all three POSTs


@pytest.mark.parametrize("timeout", [(0.0, 1.0), (1.0, -1.0)])
def test_timeouts_must_be_positive(timeout: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        RequestsTransport(timeout=timeout)
