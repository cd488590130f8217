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

Or embed it (tests, demos)::

    with DevServer(port=0, output=None) as server:
        sender = EventSender(endpoint=server.url)
        ...
        server.wait_for_visitors(3)
        print(server.posts[0].visitors)

Event payloads carry user ids and attributes, and printing them is the point
of this tool, so it listens on 127.0.0.1 only unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, TextIO

from optimizely_middleware.validation import payload_errors

__all__ = [
    "DevServer",
    "ReceivedPost",
    "describe_conversion",
    "describe_decision",
    "format_post",
    "format_summary",
    "main",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
EVENTS_PATH = "/v1/events"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

# The SDK marks the impression half of a decision with this event key.
IMPRESSION_KEY = "campaign_activated"

OutputFormat = Literal["text", "json", "quiet"]


@dataclass
class ReceivedPost:
    """One POST the server received, with the status it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    received_at: float  # time.monotonic() when the body was read
    wall_time: float  # time.time() at the same moment, for display
    answered_at: float = 0.0  # time.monotonic() when the answer was sent (after any delay)
    payload: Any = None  # the decoded JSON body, None if it was not JSON
    problems: list[str] = field(default_factory=list)

    @property
    def visitors(self) -> list[dict[str, Any]]:
        """The visitors of the batch (one per SDK event)."""
        if isinstance(self.payload, dict) and isinstance(self.payload.get("visitors"), list):
            return list(self.payload["visitors"])
        return []

    @property
    def accepted(self) -> bool:
        """True when the server answered 2xx, so the sender counts it as delivered."""
        return 200 <= self.status < 300


class DevServer:
    """A local event endpoint that records and prints every POST.

    It is a :class:`~http.server.ThreadingHTTPServer` on its own daemon
    thread. Every path accepts POSTs; ``url`` is the conventional
    ``/v1/events`` one. ``status`` and ``delay`` simulate a failing or slow
    endpoint and may be changed while it runs. ``output`` receives the
    readable log (``None`` for silence); ``output_format`` is ``"text"``,
    ``"json"`` (one JSON line per POST) or ``"quiet"`` (one summary line per
    POST, no user data).

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
        self._posts: list[ReceivedPost] = []
        self._cond = threading.Condition()
        self._output_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def bind(self) -> DevServer:
        """Bind the listening socket (``port=0`` picks a free port). Returns ``self``.

        Raises :class:`OSError` when the address is in use.
        """
        if self._server is None:
            server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
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
        if thread is not None:
            server.shutdown()
            thread.join(timeout=5)
        server.server_close()

    def serve_forever(self) -> None:
        """Serve on the calling thread until interrupted (the command line)."""
        server = self.bind()._server
        assert server is not None
        try:
            server.serve_forever()
        finally:
            self._server = None
            server.server_close()

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Where to send events: ``http://host:port/v1/events``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{EVENTS_PATH}"

    # -- what was received ---------------------------------------------------

    @property
    def posts(self) -> list[ReceivedPost]:
        """Every POST received so far, oldest first (a copy)."""
        with self._cond:
            return list(self._posts)

    def visitors(self) -> list[dict[str, Any]]:
        """The visitors of every accepted POST so far."""
        return [v for post in self.posts if post.accepted for v in post.visitors]

    def wait_for_visitors(
        self, n: int, timeout: float | None = None, *, include_rejected: bool = False
    ) -> bool:
        """Wait until accepted POSTs carry at least ``n`` visitors in all.

        With ``include_rejected`` POSTs answered with an error count too (a
        retried POST then counts each time it arrives).
        """

        def enough() -> bool:
            posts = self._posts if include_rejected else [p for p in self._posts if p.accepted]
            return sum(len(p.visitors) for p in posts) >= n

        with self._cond:
            return self._cond.wait_for(enough, timeout)

    def wait_for_posts(self, n: int, timeout: float | None = None) -> bool:
        """Wait until at least ``n`` POSTs (accepted or not) have been answered."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._posts) >= n, timeout)

    def clear(self) -> None:
        """Forget the POSTs received so far."""
        with self._cond:
            self._posts.clear()

    # -- called by the handler -----------------------------------------------

    def _record(self, post: ReceivedPost) -> None:
        with self._cond:
            self._posts.append(post)
            self._cond.notify_all()
        self._print(post)

    def _print(self, post: ReceivedPost) -> None:
        if self.output is None:
            return
        if self.output_format == "json":
            text = json.dumps(
                {
                    "received_at": _iso(post.wall_time),
                    "path": post.path,
                    "status": post.status,
                    "problems": post.problems,
                    "payload": post.payload,
                },
                separators=(",", ":"),
            )
        elif self.output_format == "quiet":
            text = format_summary(post)
        else:
            text = format_post(post)
        with self._output_lock:
            self.output.write(text + "\n")
            self.output.flush()


def _handler_for(devserver: DevServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "optimizely-devserver"

        def do_POST(self) -> None:
            length_header = self.headers.get("Content-Length")
            if length_header is None or not length_header.isdigit():
                self._answer(HTTPStatus.LENGTH_REQUIRED)
                return
            body = self.rfile.read(int(length_header))
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
            devserver._record(
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
            text = (
                f"Optimizely event devserver: POST events to {devserver.url}\n"
                f"{len(devserver.posts)} POST(s) received so far.\n"
            ).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            if status != HTTPStatus.NO_CONTENT and status >= 200:
                self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # each POST is printed by the DevServer itself

    return Handler


# -- formatting ------------------------------------------------------------------


def _clock(wall_time: float) -> str:
    return datetime.fromtimestamp(wall_time).strftime("%H:%M:%S.%f")[:-3]


def _iso(wall_time: float) -> str:
    return datetime.fromtimestamp(wall_time).astimezone().isoformat(timespec="milliseconds")


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def format_summary(post: ReceivedPost) -> str:
    """One line for a POST: arrival time, path, batch size and the answer."""
    visitors = post.visitors
    n_events = sum(len(s.get("events", [])) for v in visitors for s in v.get("snapshots", []))
    return (
        f"{_clock(post.wall_time)}  POST {post.path}  {len(visitors)} visitor(s), "
        f"{n_events} event(s), {len(post.body)} bytes -> {_status_text(post.status)}"
    )


def format_post(post: ReceivedPost) -> str:
    """A readable, multi-line description of one POST.

    Example output::

        14:03:07.412  POST /v1/events  2 visitor(s), 3 event(s), 1187 bytes -> 204 No Content
          visitor 'user-1'  plan='pro'
            decision    new_checkout: new_checkout_test (feature-test) -> on
            conversion  purchase  revenue=4200 value=42.5 tags={'category': 'shoes'}
    """
    lines = [format_summary(post)]
    payload = post.payload
    if isinstance(payload, dict):
        lines.append(
            f"  account {payload.get('account_id')}, project {payload.get('project_id')}, "
            f"revision {payload.get('revision')}, "
            f"{payload.get('client_name')} {payload.get('client_version')}"
        )
    for visitor in post.visitors:
        lines.extend(_visitor_lines(visitor))
    for problem in post.problems:
        lines.append(f"  ! {problem}")
    return "\n".join(lines)


def _visitor_lines(visitor: dict[str, Any]) -> Iterator[str]:
    attributes = " ".join(
        f"{a.get('key')}={a.get('value')!r}"
        for a in visitor.get("attributes", [])
        if isinstance(a, dict) and not str(a.get("key", "")).startswith("$opt_")
    )
    yield f"  visitor {visitor.get('visitor_id')!r}" + (f"  {attributes}" if attributes else "")
    for snapshot in visitor.get("snapshots", []):
        if not isinstance(snapshot, dict):
            continue
        for decision in snapshot.get("decisions", []) or []:
            yield f"    decision    {describe_decision(decision)}"
        for event in snapshot.get("events", []) or []:
            if isinstance(event, dict) and event.get("key") != IMPRESSION_KEY:
                yield f"    conversion  {describe_conversion(event)}"


def describe_decision(decision: dict[str, Any]) -> str:
    """``flag: rule (rule type) -> variation`` from a decision's metadata.

    A decision made by ``activate()`` has no flag, so it reads
    ``rule (experiment) -> variation``; without metadata the ids are shown.
    """
    metadata = decision.get("metadata") or {}
    rule = metadata.get("rule_key") or f"experiment {decision.get('experiment_id')}"
    variation = metadata.get("variation_key") or f"variation {decision.get('variation_id')}"
    flag = metadata.get("flag_key")
    text = f"{flag}: {rule}" if flag else str(rule)
    if metadata.get("rule_type"):
        text += f" ({metadata['rule_type']})"
    text += f" -> {variation}"
    if metadata.get("enabled") is False and flag:
        text += "  [flag off]"
    return text


def describe_conversion(event: dict[str, Any]) -> str:
    """``key revenue=.. value=.. tags={..}`` for one conversion event."""
    parts = [str(event.get("key") or f"event {event.get('entity_id')}")]
    for name in ("revenue", "value"):
        if name in event:
            parts.append(f"{name}={event[name]}")
    tags = {k: v for k, v in (event.get("tags") or {}).items() if k not in ("revenue", "value")}
    if tags:
        parts.append(f"tags={tags}")
    return "  ".join([parts[0], " ".join(parts[1:])]).rstrip()


# -- command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimizely-devserver",
        description=(
            "A local Optimizely event endpoint: accepts the SDK's event POSTs, answers "
            "204 and prints each one readably."
        ),
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default %(default)s; payloads carry user ids, "
        "so think twice before listening on other interfaces)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0 picks one)"
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds to wait before answering each POST, to simulate a slow endpoint",
    )
    parser.add_argument(
        "--status",
        type=int,
        default=int(HTTPStatus.NO_CONTENT),
        help="status to answer with (default %(default)s; e.g. 503 or 429 to simulate failures)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--quiet", action="store_true", help="one summary line per POST, no user data"
    )
    output.add_argument("--json", action="store_true", help="one JSON line per POST")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the devserver until Ctrl+C (the ``optimizely-devserver`` command)."""
    args = _parser().parse_args(argv)
    output_format: OutputFormat = "json" if args.json else "quiet" if args.quiet else "text"
    try:
        server = DevServer(
            args.host,
            args.port,
            status=args.status,
            delay=args.delay,
            output=sys.stdout,
            output_format=output_format,
        )
    except ValueError as exc:
        print(f"optimizely-devserver: {exc}", file=sys.stderr)
        return 2
    notes = sys.stderr
    # Before anything is printed: whoever reads "Send events to" may stop us at once.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            server.bind()
        except OSError as exc:
            print(
                f"optimizely-devserver: cannot listen on {args.host}:{args.port}: {exc}",
                file=notes,
            )
            return 1
        if server.host in LOCAL_HOSTS:
            print(f"Listening on {server.host} only (event payloads carry user ids).", file=notes)
        else:
            print(
                f"WARNING: listening on {server.host}: event payloads carry user ids and "
                "attributes, and anyone who can reach this address can send or read them.",
                file=notes,
            )
        delay = f" after {server.delay:g}s" if server.delay else ""
        print(
            f"Send events to {server.url} (answering {_status_text(server.status)}{delay}). "
            "Ctrl+C to stop.",
            file=notes,
            flush=True,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
        posts = server.posts
        visitors = sum(len(p.visitors) for p in posts)
        print(f"\nStopped after {len(posts)} POST(s) with {visitors} visitor(s).", file=notes)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    # Stop on SIGTERM the way Ctrl+C does, so the summary line is printed.
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
