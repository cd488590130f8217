"""Every process-wide hook of the package, in one module, in a stated order.

Other modules register here instead of calling :mod:`atexit`,
:func:`os.register_at_fork` or :data:`gc.callbacks` themselves::

    from optimizely_middleware.process import hooks

    hooks.on_exit("close_apps", close_my_app)
    hooks.on_fork(my_pool)          # my_pool.after_fork_in_child() runs once in a new process
    hooks.check_fork()              # cheap: call it where a part is used
    hooks.on_gc(track_collection)

**At exit** one :mod:`atexit` handler runs the phases in this order:

1. ``"hand_over"``: the WSGI middleware hands over the events of response
   bodies released during a garbage collection (they must reach a sender
   before the senders close);
2. ``"close_apps"``: framework extensions (Flask) close their dispatchers
   with their own shutdown timeouts;
3. ``"close_senders"``: every live :class:`~optimizely_middleware.EventSender`
   delivers what is queued, within its ``shutdown_timeout``.

Under uWSGI :mod:`optimizely_middleware.process.uwsgi` also calls
:func:`run_exit_hooks` from ``uwsgi.atexit``; the phases run once either way.

**In a new process** (one fork check, :class:`ForkCheck`): every stateful
part registers once with :func:`on_fork`; in a forked child each one's
``after_fork_in_child()`` runs once, in the order they registered (a
transport before the sender built on it). The child is noticed two ways,
whichever comes first: :func:`os.register_at_fork` where Python forks, and
:func:`check_fork` (a pid comparison) wherever a part is used, since uWSGI
forks in C, where no Python fork handler runs.

**Garbage collection**: :func:`on_gc` appends to :data:`gc.callbacks`.

**Live parts**: :data:`live_parts` keeps weak references to every sender and
dispatcher of the process and tells subscribers about new ones.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final, Generic, Protocol, TypeVar

__all__ = [
    "EXIT_PHASES",
    "ForkAware",
    "ForkCheck",
    "Registry",
    "check_fork",
    "live_parts",
    "on_exit",
    "on_fork",
    "on_gc",
    "run_exit_hooks",
]

logger = logging.getLogger("optimizely_middleware")

EXIT_PHASES: Final = ("hand_over", "close_apps", "close_senders")


class ExitHooks:
    """The exit phases' callbacks; :meth:`run` runs them once, in phase order."""

    def __init__(self) -> None:
        self.hooks: dict[str, list[Callable[[], object]]] = {p: [] for p in EXIT_PHASES}
        self.ran = False

    def add(self, phase: str, callback: Callable[[], object]) -> Callable[[], None]:
        if phase not in self.hooks:
            raise ValueError(f"unknown exit phase {phase!r}; one of {EXIT_PHASES}")
        callbacks = self.hooks[phase]
        callbacks.append(callback)  # list.append is atomic: no lock to inherit held at a fork

        def remove() -> None:
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)

        return remove

    def run(self) -> None:
        if self.ran:
            return
        self.ran = True
        for phase in EXIT_PHASES:
            for callback in list(self.hooks[phase]):
                try:
                    callback()
                except Exception:
                    logger.exception("An Optimizely %s hook failed.", phase)


class ForkAware(Protocol):
    """A part with state that must start over in a forked child (locks, threads, sockets)."""

    def after_fork_in_child(self) -> None: ...


class ForkCheck:
    """The one fork check: notices a new pid and tells every registered part, once.

    Parts are held weakly and told in the order they registered. Two threads
    of a child that notice the new pid at once run the parts' hooks once: the
    first holds a lock made in this process (never one a parent thread could
    have held at the fork), the other waits for it.

    Example::

        forks = ForkCheck()
        forks.register(pool)     # pool.after_fork_in_child() in each new process
        forks.check()            # False here; True (hooks run) the first time in a child
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._parts: dict[int, weakref.ref[ForkAware]] = {}
        self._keys = itertools.count()
        self._renewing: dict[int, threading.Lock] = {}

    def register(self, part: ForkAware) -> None:
        """Call ``part.after_fork_in_child()`` in every new process while ``part`` lives."""
        key = next(self._keys)
        self._parts[key] = weakref.ref(part, lambda _ref: self._parts.pop(key, None))

    def check(self) -> bool:
        """True, once the parts have started over, when this is a new process (cheap)."""
        pid = os.getpid()
        if pid == self.pid:
            return False
        with self._renewing.setdefault(pid, threading.Lock()):  # setdefault is atomic
            if self.pid != pid:
                self._renew()
                self.pid = pid
        return True

    def _renew(self) -> None:
        for ref in list(self._parts.copy().values()):
            part = ref()
            if part is None:
                continue
            try:
                part.after_fork_in_child()
            except Exception:
                logger.exception("Starting an Optimizely part over after a fork failed.")


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
        _forks.register(self)

    def add(self, item: T) -> None:
        """Register ``item`` and tell every subscriber (in the order they subscribed)."""
        with self._lock:
            self._items.add(item)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(item)
            except Exception:
                logger.exception("A new-part subscriber raised; ignored.")

    def live(self) -> list[T]:
        """The registered objects that are still alive."""
        with self._lock:
            return list(self._items)

    def subscribe(self, callback: Callable[[T], object]) -> Callable[[], None]:
        """Call ``callback(item)`` for every item added from now on (once for equal
        callbacks); returns the unsubscribe."""
        with self._lock:
            if callback not in self._subscribers:
                self._subscribers.append(callback)
        return lambda: self.unsubscribe(callback)

    def unsubscribe(self, callback: Callable[[T], object]) -> None:
        """Undo :meth:`subscribe` (for ``callback`` or one equal to it)."""
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it at fork time


# The process has one exit, one pid and one garbage collector: these three are its hooks.
_exit = ExitHooks()
_forks = ForkCheck()

# The exit hook, SIGTERM's flush and the testing kit must reach every sender and
# dispatcher the app made, without changes to the app: one registry for the process.
live_parts: Registry[object] = Registry()


def on_exit(phase: str, callback: Callable[[], object]) -> Callable[[], None]:
    """Run ``callback`` at interpreter exit, in ``phase`` (see :data:`EXIT_PHASES`).

    Returns the function that removes it again (for a hook of an object that can go).
    """
    return _exit.add(phase, callback)


def run_exit_hooks() -> None:
    """Run the exit phases now, once (what the interpreter, or uWSGI, does at exit)."""
    _exit.run()


def on_fork(part: ForkAware) -> None:
    """Call ``part.after_fork_in_child()`` once in every forked child (see :class:`ForkCheck`)."""
    _forks.register(part)


def check_fork() -> bool:
    """Compare the pid: in a new process, start every registered part over first.

    True when that happened. A few hundred nanoseconds: call it wherever a
    part is used (a hand-off, a flush, a POST).
    """
    return _forks.check()


def on_gc(callback: Callable[[str, dict[str, Any]], None]) -> None:
    """Call ``callback(phase, info)`` at the start and end of every garbage collection."""
    if callback not in gc.callbacks:
        gc.callbacks.append(callback)


def _after_fork_in_child() -> None:
    _forks.check()


atexit.register(run_exit_hooks)
if hasattr(os, "register_at_fork"):
    # Looked up at fork time, so a test can stand in for a server that forks in C.
    os.register_at_fork(after_in_child=lambda: _after_fork_in_child())
