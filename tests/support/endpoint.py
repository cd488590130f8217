"""A real HTTP event endpoint on 127.0.0.1 for tests: records every POST,
can hold POSTs until released, answer with a chosen status, or be slow.

Each accepted POST records two times (``time.monotonic()``, which is one
clock for every process of the machine): ``arrived_at``, when the request
reached the endpoint (before any hold), and ``received_at``, when the
endpoint accepted it (after the hold and the delay)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ReceivedPost:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic() when accepted, after any hold
    arrived_at: float  # time.monotonic() when the request reached the endpoint

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def visitors(self) -> list[dict[str, Any]]:
        return list(self.json.get("visitors", []))


@dataclass
class EventEndpoint:
    """Start with ``start()``; ``url`` is where to POST."""

    status: int = 200
    delay: float = 0.0
    response_headers: dict[str, str] = field(default_factory=dict)
    posts: list[ReceivedPost] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._released = threading.Event()
        self._released.set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.arrived = 0  # POSTs that reached the handler, held or not

    # -- control -------------------------------------------------------------

    def start(self) -> EventEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                arrived_at = time.monotonic()
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with endpoint._cond:
                    endpoint.arrived += 1
                    endpoint._cond.notify_all()
                endpoint._released.wait()
                if endpoint.delay:
                    time.sleep(endpoint.delay)
                status = endpoint.status
                if 200 <= status < 300:
                    with endpoint._cond:
                        endpoint.posts.append(
                            ReceivedPost(
                                self.path, dict(self.headers), body, time.monotonic(), arrived_at
                            )
                        )
                        endpoint._cond.notify_all()
                else:
                    with endpoint._cond:
                        endpoint.rejected.append(body)
                        endpoint._cond.notify_all()
                self.send_response(status)
                for name, value in endpoint.response_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.rejected: list[bytes] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/events"

    def hold(self) -> None:
        """Hold every POST (before answering) until ``release()``."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    # -- waiting ---------------------------------------------------------------

    def wait_for_posts(self, n: int, timeout: float = 10.0) -> list[ReceivedPost]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.posts) >= n, timeout)
            assert ok, f"expected {n} POSTs, got {len(self.posts)}"
            return list(self.posts)

    def wait_for_visitors(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.all_visitors()) >= n, timeout)
            assert ok, f"expected {n} visitors, got {len(self.all_visitors())}"
            return self.all_visitors()

    def wait_for_arrivals(self, n: int, timeout: float = 10.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.arrived >= n, timeout)
            assert ok, f"expected {n} POSTs to arrive, got {self.arrived}"

    def all_visitors(self) -> list[dict[str, Any]]:
        return [v for post in self.posts for v in post.visitors]
