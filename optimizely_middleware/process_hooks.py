"""Every process-wide hook of the package, in one module, in a stated order.

Other modules register here instead of calling :mod:`atexit`,
:func:`os.register_at_fork` or :data:`gc.callbacks` themselves::

    from optimizely_middleware import process_hooks

    process_hooks.on_exit("close_apps", close_my_app)
    process_hooks.on_fork_in_child("senders", reset_my_state)
    process_hooks.on_gc(track_collection)

**At exit** one :mod:`atexit` handler runs the phases in this order:

1. ``"hand_over"``: the WSGI middleware hands over the events of response
   bodies released during a garbage collection (they must reach a sender
   before the senders close);
2. ``"close_apps"``: framework extensions (Flask) close their dispatchers
   with their own shutdown timeouts;
3. ``"close_senders"``: every live :class:`~optimizely_middleware.EventSender`
   delivers what is queued, within its ``shutdown_timeout``.

**After a fork, in the child** (:func:`os.register_at_fork`):

1. ``"transports"``: connection pools are replaced (never share a socket with the parent);
2. ``"senders"``: engines start over with new locks and no threads.

uWSGI forks in C, where these do not run, so every sender also compares
:func:`os.getpid` on each hand-off and re-initialises itself: the hooks
here are the fast path, not the only one.

**Under uWSGI** :mod:`optimizely_middleware.integrations.uwsgi` also calls
:func:`run_exit_hooks` from ``uwsgi.atexit``; the phases run once either way.

**Garbage collection**: :func:`on_gc` appends to :data:`gc.callbacks`.

**Live senders**: :class:`Registry` keeps weak references to every sender
and tells subscribers about new ones (the testing kit captures every sender
of the process this way, without changes to the app).
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

__all__ = [
    "EXIT_PHASES",
    "FORK_PHASES",
    "Registry",
    "on_exit",
    "on_fork_in_child",
    "on_gc",
    "run_exit_hooks",
]

logger = logging.getLogger("optimizely_middleware")

EXIT_PHASES: Final = ("hand_over", "close_apps", "close_senders")
FORK_PHASES: Final = ("transports", "senders")

_exit_hooks: dict[str, list[Callable[[], object]]] = {phase: [] for phase in EXIT_PHASES}
_fork_hooks: dict[str, list[Callable[[], object]]] = {phase: [] for phase in FORK_PHASES}
_hooks_lock = threading.Lock()


def on_exit(phase: str, callback: Callable[[], object]) -> None:
    """Run ``callback`` at interpreter exit, in ``phase`` (see :data:`EXIT_PHASES`)."""
    if phase not in _exit_hooks:
        raise ValueError(f"unknown exit phase {phase!r}; one of {EXIT_PHASES}")
    with _hooks_lock:
        _exit_hooks[phase].append(callback)


def on_fork_in_child(phase: str, callback: Callable[[], object]) -> None:
    """Run ``callback`` in a forked child, in ``phase`` (see :data:`FORK_PHASES`)."""
    if phase not in _fork_hooks:
        raise ValueError(f"unknown fork phase {phase!r}; one of {FORK_PHASES}")
    with _hooks_lock:
        _fork_hooks[phase].append(callback)


def on_gc(callback: Callable[[str, dict[str, Any]], None]) -> None:
    """Call ``callback(phase, info)`` at the start and end of every garbage collection."""
    if callback not in gc.callbacks:
        gc.callbacks.append(callback)


def _run(hooks: dict[str, list[Callable[[], object]]], phases: tuple[str, ...]) -> None:
    for phase in phases:
        for callback in list(hooks[phase]):
            try:
                callback()
            except Exception:
                logger.exception("An Optimizely %s hook failed.", phase)


_exited = False


def run_exit_hooks() -> None:
    """Run the exit phases now, once (what the interpreter, or uWSGI, does at exit)."""
    global _exited
    if _exited:
        return
    _exited = True
    _run(_exit_hooks, EXIT_PHASES)


def _after_fork_in_child() -> None:
    global _hooks_lock
    _hooks_lock = threading.Lock()  # a parent thread may have held it at fork time
    _run(_fork_hooks, FORK_PHASES)


atexit.register(run_exit_hooks)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


T = TypeVar("T")


class Registry(Generic[T]):
    """Weak references to live objects, and subscribers told about each new one.

    Example::

        senders: Registry[EventSender] = Registry()
        unsubscribe = senders.subscribe(lambda sender: print("new", sender))
        senders.add(EventSender())      # prints "new ..."
        unsubscribe()
        assert len(senders.live()) == 1
    """

    def __init__(self) -> None:
        self._items: weakref.WeakSet[Any] = weakref.WeakSet()
        self._subscribers: list[Callable[[T], object]] = []
        self._lock = threading.Lock()
        on_fork_in_child("senders", self._after_fork_in_child)

    def add(self, item: T) -> None:
        """Register ``item`` and tell every subscriber (in the order they subscribed)."""
        with self._lock:
            self._items.add(item)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(item)
            except Exception:
                logger.exception("A new-sender subscriber raised; ignored.")

    def live(self) -> list[T]:
        """The registered objects that are still alive."""
        with self._lock:
            return list(self._items)

    def subscribe(self, callback: Callable[[T], object]) -> Callable[[], None]:
        """Call ``callback(item)`` for every item added from now on; returns the unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
