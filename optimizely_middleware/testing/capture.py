"""An in-memory stand-in for the event endpoint, for tests of apps that run experiments.

Usage::

    from optimizely_middleware.testing import EventCapture

    with EventCapture() as events:
        client.get("/checkout")                 # Flask or Starlette test client
        events.assert_impression(flag_key="new_checkout", variation_key="on")
        events.assert_conversion(event_key="purchase", revenue=1299)

With pytest, the ``optimizely_events`` fixture (registered by the package's
pytest plugin) gives a capture that is installed for the duration of a test.

While a capture is installed, every :class:`~optimizely_middleware.EventSender`
in the process POSTs to it instead of the network, so it records the real
wire payload (after batching and serialisation); a request-end listener groups
what each request produced. Every read flushes the senders first, so a test
never races the worker thread, and every POST is checked against the event
API's shape (see :mod:`optimizely_middleware.wire.validation`).

A test that never reads a response body still sees that request's events:
a read first hands over the requests of the test's own test client calls
whose body is still unread (see :mod:`optimizely_middleware.testing.unread_responses`),
and so does the end of the capture, so no request of one test is handed
over during another.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from optimizely_middleware.delivery.transport import Transport, TransportResponse
from optimizely_middleware.request_listeners import (
    add_request_end_listener,
    remove_request_end_listener,
)
from optimizely_middleware.testing.assertions import EventAssertions
from optimizely_middleware.testing.captured import CapturedPost, CapturedRequest
from optimizely_middleware.testing.unread_responses import UnreadResponses
from optimizely_middleware.wire.payloads import (
    Conversion,
    Impression,
    conversions_in,
    impressions_in,
)
from optimizely_middleware.wire.validation import InvalidEventPayload

if TYPE_CHECKING:
    from optimizely_middleware.delivery.sender import EventSender
    from optimizely_middleware.delivery.sink import EventSink
    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher

__all__ = ["EventCapture"]

logger = logging.getLogger("optimizely_middleware.testing")


class CaptureTransport:
    """The transport a capture installs: records each POST and answers 200."""

    def __init__(self, capture: EventCapture) -> None:
        self._capture = capture

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> TransportResponse:
        self._capture._record_post(CapturedPost.from_wire(url, body, headers))
        return TransportResponse(200, {})

    def close(self) -> None:
        pass


# A capture reroutes every sender of the process, so the stack of installed ones is
# the process's too. Installed captures, innermost last: the innermost gets the POSTs.
_installed: list[EventCapture] = []
_installed_lock = threading.Lock()
# Each captured sender's own transport, restored when the last capture goes.
_originals: weakref.WeakKeyDictionary[EventSender, Transport] = weakref.WeakKeyDictionary()
_unsubscribe: list[Callable[[], None]] = []


def _route_sender(sender: EventSender) -> None:
    """Point ``sender`` at the innermost installed capture, or back at its own transport."""
    if _installed:
        _originals.setdefault(sender, sender.transport)
        sender.transport = _installed[-1].transport
    else:
        original = _originals.pop(sender, None)
        if original is not None:
            sender.transport = original


class EventCapture(EventAssertions):
    """Records every Optimizely event the process sends, instead of sending it.

    Install it with ``with EventCapture() as events:`` (or ``install()`` /
    ``uninstall()``). Reads flush every sender first. With ``validate=True``
    (the default) a POST whose payload does not have the event API's shape
    makes the next read raise :class:`InvalidEventPayload`, and so does
    leaving the ``with`` block, so malformed events fail the test.

    Example::

        with EventCapture() as events:
            client.get("/checkout")
        assert [i.variation_key for i in events.impressions] == ["on"]
        assert events.last_request.conversions[0].revenue == 1299
    """

    def __init__(self, *, validate: bool = True, flush_timeout: float = 10.0) -> None:
        self.validate = validate
        self.flush_timeout = flush_timeout
        self.transport = CaptureTransport(self)
        self._lock = threading.Condition()
        self._posts: list[CapturedPost] = []
        self._requests: list[CapturedRequest] = []
        self._dispatchers: dict[int, RequestScopedEventDispatcher] = {}
        self._reported_invalid = 0
        self._installed = False
        self._unread: UnreadResponses | None = None

    # -- installing ----------------------------------------------------------

    def install(self) -> EventCapture:
        """Route every sender's POSTs here and start grouping events per request."""
        from optimizely_middleware.delivery.sender import iter_senders, on_new_sender

        with _installed_lock:
            if self._installed:
                raise RuntimeError("this EventCapture is already installed")
            _installed.append(self)
            self._installed = True
            if not _unsubscribe:  # senders created from now on are captured too
                _unsubscribe.append(on_new_sender(_route_sender))
            for sender in iter_senders():
                _route_sender(sender)
        add_request_end_listener(self._on_request_end)
        # Test clients run the app on the thread that installs the capture.
        self._unread = UnreadResponses().install()
        return self

    def uninstall(self) -> None:
        """Deliver what is queued (to this capture), then restore the previous transport.

        Idempotent; never raises for invalid payloads (see :meth:`check`).
        """
        from optimizely_middleware.delivery.sender import iter_senders

        if not self._installed:
            return
        try:
            # flush() hands over the test's unread responses, so that none is
            # handed over (garbage collected) during a later test.
            if not self.flush():
                logger.warning(
                    "Optimizely events were still queued %.1fs after the test; "
                    "they may be sent with the regular transport.",
                    self.flush_timeout,
                )
        finally:
            if self._unread is not None:
                self._unread.uninstall()
                self._unread = None
            remove_request_end_listener(self._on_request_end)
            with _installed_lock:
                _installed.remove(self)
                self._installed = False
                for sender in iter_senders():
                    _route_sender(sender)
                if not _installed:
                    _unsubscribe.pop()()

    def __enter__(self) -> EventCapture:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()
        if exc_type is None:
            self.check()

    # -- recording (called by senders and dispatchers) ------------------------

    def _record_post(self, post: CapturedPost) -> None:
        with self._lock:
            self._posts.append(post)

    def _on_request_end(
        self, dispatcher: RequestScopedEventDispatcher, events: list[object], failed: bool
    ) -> None:
        payloads = tuple(_copy_params(event) for event in events)
        request = CapturedRequest(
            dispatcher=dispatcher,
            failed=failed,
            payloads=payloads,
            impressions=tuple(i for p in payloads for i in impressions_in(p)),
            conversions=tuple(c for p in payloads for c in conversions_in(p)),
        )
        with self._lock:
            self._requests.append(request)
            self._dispatchers.setdefault(id(dispatcher), dispatcher)
            self._lock.notify_all()

    # -- reading -------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every sender has POSTed what it was handed; True if all did in time.

        The requests of the test's responses whose body is still unread are
        handed over first.
        """
        from optimizely_middleware.delivery.sender import iter_senders

        self._hand_over_unread()
        timeout = self.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        sinks: dict[int, EventSink] = {id(s): s for s in iter_senders()}
        with self._lock:
            dispatchers = list(self._dispatchers.values())
        for dispatcher in dispatchers:
            sinks.setdefault(id(dispatcher.sender), dispatcher.sender)
        done = True
        for sink in sinks.values():
            done = sink.flush(max(0.0, deadline - time.monotonic())) and done
        return done

    def _hand_over_unread(self) -> None:
        unread = self._unread
        if unread is not None:
            unread.hand_over()

    def check(self) -> None:
        """Raise :class:`InvalidEventPayload` for POSTs not yet reported as invalid."""
        if not self.validate:
            return
        __tracebackhide__ = True
        with self._lock:
            invalid = [(n, post) for n, post in enumerate(self._posts, 1) if post.errors]
            new = invalid[self._reported_invalid :]
            self._reported_invalid = len(invalid)
        if new:
            errors = [f"POST #{n} {error}" for n, post in new for error in post.errors]
            raise InvalidEventPayload(errors, where="event POST(s)")

    def _read(self) -> None:
        __tracebackhide__ = True
        if not self.flush():
            raise AssertionError(
                f"Optimizely events were still queued after {self.flush_timeout}s; "
                "a sender is stuck or its worker thread is not running."
            )
        self.check()

    @property
    def posts(self) -> list[CapturedPost]:
        """Every POST, in the order the senders made them."""
        self._read()
        with self._lock:
            return list(self._posts)

    @property
    def payloads(self) -> list[Any]:
        """The decoded JSON body of every POST."""
        return [post.payload for post in self.posts]

    @property
    def impressions(self) -> list[Impression]:
        """Every impression that was POSTed, in order."""
        return [i for post in self.posts for i in post.impressions]

    @property
    def conversions(self) -> list[Conversion]:
        """Every conversion that was POSTed, in order."""
        return [c for post in self.posts for c in post.conversions]

    @property
    def invalid_posts(self) -> list[CapturedPost]:
        """The POSTs whose payload failed validation (reading this never raises)."""
        self.flush()
        with self._lock:
            return [post for post in self._posts if post.errors]

    @property
    def requests(self) -> list[CapturedRequest]:
        """One entry per request scope that closed, in the order they closed."""
        self._read()
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float | None = None) -> list[CapturedRequest]:
        """Wait until ``count`` requests have ended; return :attr:`requests`.

        Test clients (Flask's, Starlette's) return once the request is over,
        so they never need this. A real server answers the client first and
        ends the request just after, so a test that talks to a server running
        in a thread waits here before reading.

        Example::

            requests.get(server_url)
            events.wait_for_requests(1)
            events.assert_impression(flag_key="new_checkout")
        """
        __tracebackhide__ = True
        timeout = self.flush_timeout if timeout is None else timeout
        self._hand_over_unread()
        with self._lock:
            ended = self._lock.wait_for(lambda: len(self._requests) >= count, timeout)
            seen = len(self._requests)
        if not ended:
            raise AssertionError(
                f"Expected {count} request(s) to end within {timeout}s; {seen} did."
            )
        return self.requests

    @property
    def last_request(self) -> CapturedRequest:
        """The request that closed last (AssertionError if none did)."""
        requests = self.requests
        if not requests:
            raise AssertionError(
                "No request has ended since the capture was installed: is the app "
                "wrapped in the Optimizely middleware?"
            )
        return requests[-1]

    def clear(self) -> None:
        """Forget everything captured so far (after delivering what is queued).

        Raises :class:`InvalidEventPayload` instead if an invalid POST has not
        been reported yet.
        """
        __tracebackhide__ = True
        self._read()
        with self._lock:
            self._posts.clear()
            self._requests.clear()
            self._reported_invalid = 0

    def _impression_list(self) -> list[Impression]:
        return self.impressions

    def _conversion_list(self) -> list[Conversion]:
        return self.conversions

    def __repr__(self) -> str:
        with self._lock:
            posts, requests = len(self._posts), len(self._requests)
        return f"<EventCapture posts={posts} requests={requests}>"


def _copy_params(item: object) -> Any:
    """The payload of a handed-over item: a ``LogEvent``'s params, or what the SDK
    builds from a ``PendingUserEvent`` (no ``LOG_EVENT`` notification); None when
    the SDK cannot build it (the sender counts that event as a drop)."""
    from optimizely_middleware.delivery.encoding import log_event_of

    try:
        event = log_event_of(item)
    except Exception:
        return None
    params = getattr(event, "params", None)
    # A JSON round trip is what the wire sees and detaches the copy from the SDK's dict.
    try:
        return json.loads(json.dumps(params))
    except (TypeError, ValueError, RecursionError):
        return params
