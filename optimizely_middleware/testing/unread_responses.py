"""The testing kit's answer to responses a test never reads.

Usage (what :class:`~optimizely_middleware.testing.EventCapture` does)::

    from optimizely_middleware.testing.unread_responses import UnreadResponses

    unread = UnreadResponses().install()     # on the test's thread
    response = client.get("/checkout")       # Flask's test client: body not read
    unread.hand_over()                       # its events are handed over now
    unread.uninstall()

A WSGI request's events are handed over when the server has taken the whole
body. A test client takes it only when the test reads it (``r.data``,
``r.json``, ``r.content``), so a test that checks ``r.status_code`` alone
would see none of its events, and the response, released later by the
garbage collector, would hand them over during another test. Servers keep
that rule; the kit instead hands over, when a test reads its events and when
it ends, the responses its own thread received whose app call has returned.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from optimizely_middleware.request_listeners import (
    add_unread_body_listener,
    remove_unread_body_listener,
)

if TYPE_CHECKING:
    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
    from optimizely_middleware.scope import RequestScope

__all__ = ["UnreadResponses"]

logger = logging.getLogger("optimizely_middleware.testing")


class UnreadResponses:
    """Hands over the events of responses whose body the test has not read (yet).

    Installed on the test's thread, it records each WSGI response returned on
    that thread (a test client runs the app there) with its request scope
    still open. :meth:`hand_over` closes those scopes, so their events reach
    the senders at once; a body read afterwards is served as usual, and the
    later close hands nothing over twice. Responses of servers running on
    other threads are left to their servers.

    Example::

        with UnreadResponses() as unread:
            client.get("/checkout")
            assert unread.hand_over() == 1
    """

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self._pending: dict[int, tuple[RequestScopedEventDispatcher, RequestScope]] = {}
        self._lock = threading.Lock()

    def install(self) -> UnreadResponses:
        """Start recording (on the thread this object was created on)."""
        add_unread_body_listener(self._on_unread_body)
        return self

    def uninstall(self) -> None:
        """Stop recording and forget what was recorded (hand it over first)."""
        remove_unread_body_listener(self._on_unread_body)
        with self._lock:
            self._pending.clear()

    def __enter__(self) -> UnreadResponses:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.hand_over()
        self.uninstall()

    def _on_unread_body(
        self, dispatcher: RequestScopedEventDispatcher, scope: RequestScope
    ) -> None:
        if threading.get_ident() != self.thread_id:
            return
        with self._lock:
            self._pending[id(scope)] = (dispatcher, scope)

    def hand_over(self) -> int:
        """Hand over the events of every recorded response not closed yet; return how many.

        A scope that is current where this is called (code running inside
        the request) is left open.
        """
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        handed = 0
        keep: list[tuple[RequestScopedEventDispatcher, RequestScope]] = []
        for dispatcher, scope in pending:
            if scope.closed:
                continue
            if dispatcher.current_scope() is scope:
                keep.append((dispatcher, scope))
                continue
            dispatcher.close_scope(scope)
            handed += 1
        if keep:
            with self._lock:
                self._pending.update((id(item[1]), item) for item in keep)
        if handed:
            logger.debug(
                "Handed over the Optimizely events of %d response(s) whose body the test "
                "had not read.",
                handed,
            )
        return handed
