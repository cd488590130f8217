"""A local Optimizely event endpoint for development.

It accepts the event POSTs the Optimizely SDK makes, answers ``204 No Content``
as Optimizely's event API does, and prints each one readably: when it
arrived, how many visitors it carries and, per visitor, each decision
(``flag: rule (type) -> variation``) and each conversion with its revenue,
value and tags. No Optimizely account is needed.

Run it::

    python -m optimizely_middleware.devserver            # or: optimizely-devserver
    python -m optimizely_middleware.devserver --delay 0.5 --status 503

and point the sender at it::

    sender = EventSender(endpoint="http://127.0.0.1:8765/v1/events")
    dispatcher = RequestScopedEventDispatcher(sender)

Open ``http://127.0.0.1:8765/`` in a browser for the inspector: a live list
of what arrived, with filters and counts (see
:mod:`optimizely_middleware.devserver.inspector`).

Or embed it (tests, demos)::

    with DevServer(port=0, output=None) as server:
        sender = EventSender(endpoint=server.url)
        ...
        server.wait_for_visitors(3)
        print(server.posts[0].visitors)

It keeps the newest POSTs, up to ``max_posts`` (1000) and ``max_bytes`` of
bodies (32 MiB), and says how many older ones it let go.

Event payloads carry user ids and attributes, and showing them is the point
of this tool, so it listens on 127.0.0.1 only unless told otherwise, the
inspector answers requests from this machine only, and a browser's
cross-origin POST (a page elsewhere sending made-up events) is refused.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any, TextIO

from optimizely_middleware.devserver.handler import handler_for
from optimizely_middleware.devserver.inspector import EventCounts
from optimizely_middleware.devserver.received import (
    OutputFormat,
    ReceivedPost,
    format_bytes,
    render_post,
    time_of_day,
)
from optimizely_middleware.devserver.recent_posts import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_POSTS,
    RecentPosts,
)

__all__ = ["DevServer"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
EVENTS_PATH = "/v1/events"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class DevServer:
    """A local event endpoint that records and prints every POST.

    It is a :class:`~http.server.ThreadingHTTPServer` on its own daemon
    thread. Every path accepts POSTs; ``url`` is the conventional
    ``/v1/events`` one. ``status`` and ``delay`` simulate a failing or slow
    endpoint and may be changed while it runs. ``output`` receives the
    readable log (``None`` for silence); ``output_format`` is ``"text"``,
    ``"json"`` (one JSON line per POST) or ``"quiet"`` (one summary line per
    POST, no user data). It keeps the newest ``max_posts`` POSTs within
    ``max_bytes`` of bodies; older ones are let go (the newest is always
    kept), and :meth:`counts` says how many.

    Example::

        server = DevServer(port=0, delay=0.2).start()
        try:
            dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=server.url))
            ...
            server.wait_for_visitors(5, timeout=10)
        finally:
            server.stop()
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        status: int = HTTPStatus.NO_CONTENT,
        delay: float = 0.0,
        output: TextIO | None = None,
        output_format: OutputFormat = "text",
        max_posts: int = DEFAULT_MAX_POSTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, not {status!r}")
        if delay < 0:
            raise ValueError("delay must not be negative")
        if output_format not in ("text", "json", "quiet"):
            raise ValueError(
                f"output_format must be 'text', 'json' or 'quiet', not {output_format!r}"
            )
        self.host = host
        self.port = port
        self.status = int(status)
        self.delay = delay
        self.output = output
        self.output_format: OutputFormat = output_format
        self._posts = RecentPosts(max_posts, max_bytes)
        self._refused = 0
        self._cond = threading.Condition()
        self._last_id = 0
        self._generation = 0  # changes when the list is cleared
        self._stopping = False
        self._connections: set[socket.socket] = set()
        self.started_at = time.time()
        self._counts = EventCounts(self.started_at)
        self._output_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def bind(self) -> DevServer:
        """Bind the listening socket (``port=0`` picks a free port). Returns ``self``.

        Raises :class:`OSError` when the address is in use.
        """
        if self._server is None:
            server = ThreadingHTTPServer((self.host, self.port), handler_for(self))
            server.daemon_threads = True
            self._server = server
            self.port = int(server.server_address[1])
        return self

    def start(self) -> DevServer:
        """Bind and serve on a daemon thread. Returns ``self``."""
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        server = self.bind()._server
        assert server is not None
        self._set_stopping(False)
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="optimizely-devserver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port. Stopping twice is harmless."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        self._set_stopping(True)
        if thread is not None:
            server.shutdown()
            thread.join(timeout=5)
        self._close_connections()
        server.server_close()

    def serve_forever(self) -> None:
        """Serve on the calling thread until interrupted (the command line)."""
        server = self.bind()._server
        assert server is not None
        try:
            server.serve_forever()
        finally:
            self._set_stopping(True)
            self._close_connections()
            self._server = None
            server.server_close()

    def _set_stopping(self, stopping: bool) -> None:
        # Releases the inspector's long polls, so they do not outlive the server.
        with self._cond:
            self._stopping = stopping
            self._cond.notify_all()

    def _close_connections(self) -> None:
        # A browser keeps its connections open; their handler threads would
        # go on answering after the server stopped.
        with self._cond:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):  # already gone
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Where to send events: ``http://host:port/v1/events``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{EVENTS_PATH}"

    @property
    def inspector_url(self) -> str:
        """The inspector page for a browser on this machine: ``http://host:port/``."""
        host = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    # -- what was received ---------------------------------------------------

    @property
    def posts(self) -> list[ReceivedPost]:
        """The POSTs kept (the newest ones since the last clear), oldest first (a copy)."""
        with self._cond:
            return list(self._posts)

    def visitors(self) -> list[dict[str, Any]]:
        """The visitors of every accepted POST kept."""
        return [v for post in self.posts if post.accepted for v in post.visitors]

    def wait_for_visitors(
        self, n: int, timeout: float | None = None, *, include_rejected: bool = False
    ) -> bool:
        """Wait until accepted POSTs since the last clear carry at least ``n`` visitors in all.

        With ``include_rejected`` POSTs answered with an error count too (a
        retried POST then counts each time it arrives). POSTs let go count.
        """

        def enough() -> bool:
            posts = self._posts
            return (posts.visitors_all if include_rejected else posts.visitors_accepted) >= n

        with self._cond:
            return self._cond.wait_for(enough, timeout)

    def wait_for_posts(self, n: int, timeout: float | None = None) -> bool:
        """Wait until at least ``n`` POSTs (accepted or not) were answered since the last clear."""
        with self._cond:
            return self._cond.wait_for(lambda: self._posts.received >= n, timeout)

    def clear(self) -> None:
        """Forget the POSTs received so far (the inspector's counts stay)."""
        with self._cond:
            self._posts.clear()
            self._generation += 1
            self._cond.notify_all()

    @property
    def generation(self) -> int:
        """How many times the list was cleared: the inspector starts over when it changes."""
        with self._cond:
            return self._generation

    def counts(self) -> dict[str, Any]:
        """Visitors, impressions per variation and conversions per event since the start.

        Only accepted POSTs count; :meth:`clear` leaves the counts as they are.
        ``listed`` (``listed_bytes``) is what the list holds now, ``let_go``
        (``let_go_bytes``) what left it to stay within the limits and
        ``refused_posts`` the browsers' cross-origin POSTs.
        """
        with self._cond:
            counts = self._counts.as_json()
            counts["listed"] = len(self._posts)
            counts["listed_bytes"] = self._posts.bytes
            counts["let_go"] = self._posts.let_go
            counts["let_go_bytes"] = self._posts.let_go_bytes
            counts["max_posts"] = self._posts.max_posts
            counts["max_bytes"] = self._posts.max_bytes
            counts["refused_posts"] = self._refused
            return counts

    def post_by_id(self, post_id: int) -> ReceivedPost | None:
        """The post with this :attr:`ReceivedPost.id`, unless it was cleared or let go."""
        with self._cond:
            return self._posts.by_id(post_id)

    def posts_after(
        self, since: int, generation: int | None = None, timeout: float = 0.0
    ) -> tuple[list[ReceivedPost], int, int]:
        """The posts newer than id ``since``, oldest first, with the generation and last id.

        Waits up to ``timeout`` seconds for one to arrive, or for the list to
        be cleared when ``generation`` is no longer the current one; a
        ``since`` beyond the last id does not wait.
        """

        def news() -> bool:
            changed = generation is not None and generation != self._generation
            # A since beyond the last id comes from a page that knew an earlier
            # run of the server: it must hear about this one at once.
            return self._stopping or changed or self._last_id != since

        with self._cond:
            if timeout > 0:
                self._cond.wait_for(news, timeout)
            return self._posts.after(since), self._generation, self._last_id

    # -- called by the handler -----------------------------------------------

    def connection_opened(self, connection: socket.socket) -> None:
        """Track an open connection, so that :meth:`stop` can close it."""
        with self._cond:
            self._connections.add(connection)

    def connection_closed(self, connection: socket.socket) -> None:
        """Forget a connection the handler is done with."""
        with self._cond:
            self._connections.discard(connection)

    def record_post(self, post: ReceivedPost) -> None:
        """Keep, count and print a POST that was answered."""
        post.visitor_events  # noqa: B018  (parse once, outside the lock)
        with self._cond:
            self._last_id += 1
            post.id = self._last_id
            let_go_now = self._posts.add(post)
            first_let_go = let_go_now > 0 and self._posts.let_go == let_go_now
            self._counts.add(post)
            self._cond.notify_all()
        self._print(post)
        if first_let_go:
            self._note(
                f"(Memory: keeping the newest {self._posts.max_posts} POSTs within "
                f"{format_bytes(self._posts.max_bytes)}; older ones are let go from the list "
                "and the inspector, and counted. --max-posts and --max-bytes change this.)"
            )

    def refuse_post(self, path: str, reason: str) -> None:
        """Count a browser's cross-origin POST, which is not recorded, and say so."""
        with self._cond:
            self._refused += 1
        self._note(f"{time_of_day(time.time())}  POST {path} refused: {reason}")

    def _note(self, text: str) -> None:
        """A line for whoever reads the text or quiet output (not the JSON lines)."""
        if self.output_format != "json":
            self._write(text)

    def _print(self, post: ReceivedPost) -> None:
        if self.output is not None:
            self._write(render_post(post, self.output_format))

    def _write(self, text: str) -> None:
        if self.output is None:
            return
        with self._output_lock:
            self.output.write(text + "\n")
            self.output.flush()
