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
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from optimizely_middleware.process_hooks import Registry

if TYPE_CHECKING:
    from optimizely_middleware.dispatcher import RequestScopedEventDispatcher

__all__ = [
    "RequestEndListener",
    "add_request_end_listener",
    "live_dispatchers",
    "remove_request_end_listener",
]

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
