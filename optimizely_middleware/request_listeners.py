"""Request-end listeners for every dispatcher in the process, existing or created later.

Usage::

    from optimizely_middleware.dispatcher import (
        add_request_end_listener,
        remove_request_end_listener,
    )

    def on_request_end(dispatcher, items, failed):
        print(len(items), "events; failed:", failed)

    add_request_end_listener(on_request_end)
    ...
    remove_request_end_listener(on_request_end)

The testing kit groups events per request this way, without changes to the
app. Each :class:`~optimizely_middleware.RequestScopedEventDispatcher`
registers itself in :data:`live_dispatchers` when it is built.

:data:`unread_body_listeners` hear of each WSGI response returned with its
scope still open, whose events wait for the server to take the body; the
testing kit hands those over for a test that never reads the body.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from optimizely_middleware.process_hooks import Registry

if TYPE_CHECKING:
    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher
    from optimizely_middleware.scope import RequestScope

__all__ = [
    "RequestEndListener",
    "UnreadBodyListener",
    "UnreadBodyListeners",
    "add_request_end_listener",
    "live_dispatchers",
    "remove_request_end_listener",
    "unread_body_listeners",
]

logger = logging.getLogger("optimizely_middleware")

# Called with (dispatcher, items, failed) each time a request scope closes;
# items are LogEvents and PendingUserEvents.
RequestEndListener = Callable[["RequestScopedEventDispatcher", "list[Any]", bool], None]

# Every live dispatcher, so that a process-wide listener reaches those created later too.
live_dispatchers: Registry[RequestScopedEventDispatcher] = Registry()
_process_listeners: dict[RequestEndListener, Callable[[], None]] = {}
_process_listeners_lock = threading.Lock()


def add_request_end_listener(listener: RequestEndListener) -> None:
    """Call ``listener(dispatcher, items, failed)`` whenever a request scope of any
    dispatcher in the process, existing or created later, closes.
    Listeners run on the request's thread: keep them O(1)."""
    with _process_listeners_lock:
        if listener in _process_listeners:
            return
        _process_listeners[listener] = live_dispatchers.subscribe(
            lambda dispatcher: dispatcher.add_request_end_listener(listener)
        )
    for dispatcher in live_dispatchers.live():
        dispatcher.add_request_end_listener(listener)


def remove_request_end_listener(listener: RequestEndListener) -> None:
    """Undo :func:`add_request_end_listener`."""
    with _process_listeners_lock:
        unsubscribe = _process_listeners.pop(listener, None)
    if unsubscribe is not None:
        unsubscribe()
    for dispatcher in live_dispatchers.live():
        dispatcher.remove_request_end_listener(listener)


# Called with (dispatcher, scope) on the request's thread.
UnreadBodyListener = Callable[["RequestScopedEventDispatcher", "RequestScope"], None]


class UnreadBodyListeners:
    """Who hears of WSGI responses whose events wait for their body to be taken.

    A WSGI adapter calls :meth:`notify` when the app returned a body and the
    request's scope stays open until the server has taken it. Nobody listens
    in production (the check costs one truth test); the testing kit does,
    since a test client takes the body only when the test reads it.

    Example::

        unread_body_listeners.add(on_unread_body)   # on_unread_body(dispatcher, scope)
        ...
        unread_body_listeners.remove(on_unread_body)
    """

    def __init__(self) -> None:
        self._listeners: tuple[UnreadBodyListener, ...] = ()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def add(self, listener: UnreadBodyListener) -> None:
        with self._lock:
            if listener not in self._listeners:
                self._listeners = (*self._listeners, listener)

    def remove(self, listener: UnreadBodyListener) -> None:
        with self._lock:
            self._listeners = tuple(item for item in self._listeners if item != listener)

    def notify(self, dispatcher: RequestScopedEventDispatcher, scope: RequestScope) -> None:
        for listener in self._listeners:
            try:
                listener(dispatcher, scope)
            except Exception:
                logger.exception("An unread-body listener raised; ignored.")


unread_body_listeners = UnreadBodyListeners()
