"""What the package knows about uWSGI, the one server with its own fork and exit path.

uWSGI embeds Python and has its own exit path and thread switch:

* **Threads.** With Python threads disabled in uWSGI, the sender's worker
  threads never run between requests, and events pile up in the queue.
  :func:`check_uwsgi` warns (``WiringWarning``) with the fix:
  ``--enable-threads`` or ``--threads N``. (uWSGI 2.0.30 enables them by
  default and reports it as ``uwsgi.has_threads``; older versions need the
  option, read from ``uwsgi.opt``.)
* **Fork.** Without ``lazy-apps`` uWSGI forks the workers in C; without
  ``py-call-osafterfork`` Python's fork handlers do not run, and a thread
  that was running in the master at that moment can leave the worker hung
  (``py-call-osafterfork`` is not enough: a worker can hang before any
  Python code runs in it). In a master (:func:`in_uwsgi_master`) the sender
  therefore delivers at the hand-off and retires its threads before
  returning. Other threads (the SDK's datafile polling) remain: the package
  chains ``uwsgi.post_fork_hook`` and warns in such a worker, with the fix
  (``lazy-apps``).
* **Exit.** uWSGI calls ``uwsgi.atexit`` when a worker stops. The package
  chains it: its exit hooks (hand over, close the apps, close every sender
  within its ``shutdown_timeout``) run, then whatever ``uwsgi.atexit`` was
  before. Python's own :mod:`atexit` handlers may also run; closing twice is
  harmless.

The package calls :func:`check_uwsgi` when it is imported inside uWSGI (the
``uwsgi`` module exists only there), so nothing needs to be set up::

    # uwsgi --http :8000 --master --processes 4 --module myapp:app
    import optimizely_middleware  # inside uWSGI: threads checked, atexit chained
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from optimizely_middleware.errors import WiringWarning
from optimizely_middleware.process import hooks

__all__ = [
    "UWSGI_FORK_HINT",
    "UWSGI_THREADS_HINT",
    "check_uwsgi",
    "in_uwsgi_master",
    "threads_left_by_fork",
    "uwsgi_threads_disabled",
]

logger = logging.getLogger("optimizely_middleware")

UWSGI_THREADS_HINT = (
    "uWSGI runs with Python threads disabled, so the Optimizely event sender's "
    "threads do not run between requests and events are not delivered. Start uWSGI "
    "with --enable-threads (enable-threads = true) or --threads N."
)


UWSGI_FORK_HINT = (
    "uWSGI forked this worker while the master ran Python threads (%s) and without "
    "py-call-osafterfork, so Python's fork handlers did not run; a thread started in "
    "this worker can hang for good. Set lazy-apps = true, or send no Optimizely event "
    "(and start no SDK polling) in the master before the fork."
)


def uwsgi_threads_disabled(uwsgi: Any) -> bool:
    """True when the ``uwsgi`` module says Python threads cannot run."""
    has_threads = getattr(uwsgi, "has_threads", None)
    if has_threads is not None:
        return not has_threads
    opt = getattr(uwsgi, "opt", None) or {}
    return not (opt.get("enable-threads") or opt.get("threads"))


class ChainedAtexit:
    """``uwsgi.atexit``: the package's exit hooks, then the previous ``uwsgi.atexit``."""

    def __init__(self, previous: Callable[[], object] | None) -> None:
        self.previous = previous

    def __call__(self) -> None:
        logger.info("uWSGI process %d exits: delivering the queued Optimizely events.", os.getpid())
        try:
            run_package_exit_hooks()
        except Exception:
            logger.exception("Closing the Optimizely event senders at uWSGI exit failed.")
        if self.previous is not None:
            self.previous()


def run_package_exit_hooks() -> None:
    hooks.run_exit_hooks()


def threads_left_by_fork() -> list[str]:
    """Names of the threads this process inherited as dead copies from a C
    ``fork()`` that Python was not told about (uWSGI without
    ``py-call-osafterfork``): threading still lists the parent's threads."""
    me = threading.get_ident()
    # threading._active without its lock: a parent thread may have held that lock.
    active = dict(getattr(threading, "_active", {}))
    return sorted(t.name for ident, t in active.items() if ident != me)


class ChainedPostFork:
    """``uwsgi.post_fork_hook``: warn in a worker forked while the master ran
    Python threads, then the previous hook."""

    def __init__(self, previous: Callable[[], object] | None) -> None:
        self.previous = previous

    def __call__(self) -> None:
        try:
            ghosts = threads_left_by_fork()
            if ghosts:
                logger.warning(UWSGI_FORK_HINT, ", ".join(ghosts))
        except Exception:
            logger.debug("The uWSGI post-fork check failed.", exc_info=True)
        if self.previous is not None:
            self.previous()


def in_uwsgi_master() -> bool:
    """True in a uWSGI master that loaded the app (no ``lazy-apps``): the
    workers are forked from this process in C, with no Python fork handlers.
    Cheap outside uWSGI (one dict look-up)."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return False
    try:
        return bool(uwsgi.worker_id() == 0)
    except Exception:
        return False


def check_uwsgi(uwsgi: Any = None) -> bool:
    """Inside uWSGI: warn if threads are disabled; chain ``uwsgi.atexit`` and
    ``uwsgi.post_fork_hook`` (once each).

    Returns True when running inside uWSGI. Pass ``uwsgi`` to check another
    module object (tests).
    """
    if uwsgi is None:
        uwsgi = sys.modules.get("uwsgi")
        if uwsgi is None:
            return False
    if uwsgi_threads_disabled(uwsgi):
        logger.warning(UWSGI_THREADS_HINT)
        warnings.warn(UWSGI_THREADS_HINT, WiringWarning, stacklevel=2)
    previous = getattr(uwsgi, "atexit", None)
    if not isinstance(previous, ChainedAtexit):
        uwsgi.atexit = ChainedAtexit(previous if callable(previous) else None)
    previous_post_fork = getattr(uwsgi, "post_fork_hook", None)
    if not isinstance(previous_post_fork, ChainedPostFork):
        uwsgi.post_fork_hook = ChainedPostFork(
            previous_post_fork if callable(previous_post_fork) else None
        )
    return True
