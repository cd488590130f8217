"""A list of listeners that one dispatcher calls: the request-end and unread-body hooks.

Usage (what :class:`~optimizely_middleware.RequestScopedEventDispatcher` does)::

    listeners: Listeners[Callable[[int], None]] = Listeners("request ends")
    listeners.add(print)
    listeners.notify(3)        # print(3); a listener that raises is logged and skipped
    listeners.remove(print)

The listeners live on each dispatcher (``dispatcher.request_end_listeners``,
``dispatcher.unread_body_listeners``). :func:`add_request_end_listener` and
:func:`add_unread_body_listener` add one to every dispatcher of the process,
existing or created later (the testing kit's way in, without changes to the
app): the subscription for those made later is kept in the process's one
registry of live parts (:data:`optimizely_middleware.process.hooks.live_parts`)::

    add_request_end_listener(on_request_end)   # on_request_end(dispatcher, items, failed)
    ...
    remove_request_end_listener(on_request_end)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from optimizely_middleware.process import hooks

__all__ = [
    "Listeners",
    "add_request_end_listener",
    "add_unread_body_listener",
    "remove_request_end_listener",
    "remove_unread_body_listener",
]

logger = logging.getLogger("optimizely_middleware")

L = TypeVar("L", bound=Callable[..., object])


class Listeners(Generic[L]):
    """Listeners called in the order they were added; each at most once in the list.

    ``notify`` reads a tuple without a lock (adding and removing replace it),
    and an empty list is falsy, so the check on a request's path is one truth test.

    Example::

        heard = Listeners[Callable[[str], None]]("unread bodies")
        if heard:
            heard.notify("scope")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._listeners: tuple[L, ...] = ()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def add(self, listener: L) -> None:
        with self._lock:
            if listener not in self._listeners:
                self._listeners = (*self._listeners, listener)

    def remove(self, listener: L) -> None:
        """Remove ``listener`` (no error if it was not added)."""
        with self._lock:
            self._listeners = tuple(item for item in self._listeners if item != listener)

    def notify(self, *args: Any) -> None:
        for listener in self._listeners:
            try:
                listener(*args)
            except Exception:
                logger.exception("A listener of %s raised; ignored.", self.kind)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it at fork time


class _OnEveryDispatcher:
    """A live-parts subscriber that adds ``listener`` to a dispatcher's ``attribute``
    list; equal for the same list and listener, so removing finds it."""

    __slots__ = ("attribute", "listener")

    def __init__(self, attribute: str, listener: Callable[..., object]) -> None:
        self.attribute = attribute
        self.listener = listener

    def __call__(self, part: object) -> None:
        listeners = getattr(part, self.attribute, None)
        if isinstance(listeners, Listeners):
            listeners.add(self.listener)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _OnEveryDispatcher)
            and other.attribute == self.attribute
            and other.listener == self.listener
        )

    def __hash__(self) -> int:
        return hash((self.attribute, self.listener))

    def add(self) -> None:
        hooks.live_parts.subscribe(self)
        for part in hooks.live_parts.live():
            self(part)

    def remove(self) -> None:
        hooks.live_parts.unsubscribe(self)
        for part in hooks.live_parts.live():
            listeners = getattr(part, self.attribute, None)
            if isinstance(listeners, Listeners):
                listeners.remove(self.listener)


def add_request_end_listener(listener: Callable[..., object]) -> None:
    """Call ``listener(dispatcher, items, failed)`` whenever a request scope of any
    dispatcher in the process, existing or created later, closes (on the request's
    thread: keep it O(1))."""
    _OnEveryDispatcher("request_end_listeners", listener).add()


def remove_request_end_listener(listener: Callable[..., object]) -> None:
    """Undo :func:`add_request_end_listener`."""
    _OnEveryDispatcher("request_end_listeners", listener).remove()


def add_unread_body_listener(listener: Callable[..., object]) -> None:
    """Call ``listener(dispatcher, scope)`` whenever a WSGI response of any dispatcher
    is returned with its scope still open (its events wait for the body to be taken)."""
    _OnEveryDispatcher("unread_body_listeners", listener).add()


def remove_unread_body_listener(listener: Callable[..., object]) -> None:
    """Undo :func:`add_unread_body_listener`."""
    _OnEveryDispatcher("unread_body_listeners", listener).remove()
