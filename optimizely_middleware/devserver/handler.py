"""The devserver's HTTP handler: event POSTs in, the inspector's page and API out.

Every path accepts POSTs, which are recorded by the server (a
:class:`HandledServer`, such as :class:`~optimizely_middleware.devserver.DevServer`)
unless a browser page on another origin sent them; GET and DELETE go to
:func:`optimizely_middleware.devserver.inspector.handle_inspector`.
Usage (what :meth:`DevServer.bind <optimizely_middleware.devserver.DevServer.bind>` does)::

    server = ThreadingHTTPServer((host, port), handler_for(devserver))
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from socket import socket
from typing import Any, Protocol

from optimizely_middleware.devserver.inspector import (
    InspectedServer,
    browser_post_refusal,
    handle_inspector,
)
from optimizely_middleware.devserver.received import ReceivedPost
from optimizely_middleware.wire.validation import payload_errors

__all__ = ["HandledServer", "handler_for"]

# A refused POST's body is read (and dropped) up to this size, so its
# connection stays usable; a larger one closes the connection.
MAX_REFUSED_BODY = 4 * 1024 * 1024


class HandledServer(InspectedServer, Protocol):
    """What the handler reads of the server and tells it (a ``DevServer`` is one):
    the inspector's needs, and where POSTs and connections go.

    Example::

        ThreadingHTTPServer(("127.0.0.1", 0), handler_for(devserver))
    """

    @property
    def port(self) -> int: ...
    @property
    def inspector_url(self) -> str: ...
    @property
    def posts(self) -> list[ReceivedPost]: ...
    def record_post(self, post: ReceivedPost) -> None: ...
    def refuse_post(self, path: str, reason: str) -> None: ...
    def connection_opened(self, connection: socket) -> None: ...
    def connection_closed(self, connection: socket) -> None: ...


def handler_for(devserver: HandledServer) -> type[BaseHTTPRequestHandler]:
    """The request handler class of ``devserver``'s HTTP server."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "optimizely-devserver"

        def setup(self) -> None:
            super().setup()
            devserver.connection_opened(self.connection)

        def finish(self) -> None:
            devserver.connection_closed(self.connection)
            super().finish()

        def do_POST(self) -> None:
            refusal = browser_post_refusal(
                self.headers.get("Origin"),
                self.headers.get("Sec-Fetch-Site"),
                devserver.host,
                devserver.port,
            )
            length_header = self.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            if refusal is not None:
                if length is not None and length <= MAX_REFUSED_BODY:
                    self.rfile.read(length)  # read and dropped: the connection stays usable
                else:
                    self.close_connection = True
                devserver.refuse_post(self.path, refusal)
                self._answer_json(HTTPStatus.FORBIDDEN, {"error": refusal})
                return
            if length is None:
                self._answer(HTTPStatus.LENGTH_REQUIRED)
                return
            body = self.rfile.read(length)
            received_at, wall_time = time.monotonic(), time.time()
            payload: Any = None
            try:
                payload = json.loads(body)
            except ValueError:
                status = int(HTTPStatus.BAD_REQUEST)
                problems = ["the body is not JSON"]
            else:
                status = devserver.status
                problems = payload_errors(payload)
            if devserver.delay:
                # Simulates a slow endpoint; the caller's sender waits on it.
                time.sleep(devserver.delay)
            devserver.record_post(
                ReceivedPost(
                    path=self.path,
                    headers=dict(self.headers),
                    body=body,
                    status=status,
                    received_at=received_at,
                    wall_time=wall_time,
                    payload=payload,
                    problems=problems,
                    answered_at=time.monotonic(),
                )
            )
            self._answer(status)

        def do_GET(self) -> None:
            if not self._inspector("GET"):
                self._explain()

        def do_DELETE(self) -> None:
            if not self._inspector("DELETE"):
                self._answer(HTTPStatus.METHOD_NOT_ALLOWED)

        def _inspector(self, method: str) -> bool:
            peer = str(self.client_address[0])
            response = handle_inspector(devserver, method, self.path, peer, self.headers["Host"])
            if response is None:
                return False
            try:
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(response.body)
            except (BrokenPipeError, ConnectionResetError):
                # The page gave up on a long poll (a filter changed, the tab closed).
                self.close_connection = True
            return True

        def _explain(self) -> None:
            text = (
                f"Optimizely event devserver: POST events to {devserver.url}\n"
                f"{len(devserver.posts)} POST(s) received so far.\n"
                f"See them at {devserver.inspector_url}\n"
            ).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def _answer_json(self, status: int, value: Any) -> None:
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            if status != HTTPStatus.NO_CONTENT and status >= 200:
                self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # each POST is printed by the DevServer itself

    return Handler
