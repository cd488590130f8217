"""What the package checks about the server it runs in: uWSGI.

uWSGI embeds Python and has its own exit path and thread switch:

* **Threads.** With Python threads disabled in uWSGI, the sender's worker
  threads never run between requests, and events pile up in the queue.
  :func:`check_uwsgi` warns (``WiringWarning``) with the fix:
  ``--enable-threads`` or ``--threads N``. (uWSGI 2.0.30 enables them by
  default and reports it as ``uwsgi.has_threads``; older versions need the
  option, read from ``uwsgi.opt``.)
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
import warnings
from collections.abc import Callable
from typing import Any

from optimizely_middleware.errors import WiringWarning

__all__ = ["UWSGI_THREADS_HINT", "check_uwsgi", "uwsgi_threads_disabled"]

logger = logging.getLogger("optimizely_middleware")

UWSGI_THREADS_HINT = (
    "uWSGI runs with Python threads disabled, so the Optimizely event sender's "
    "threads do not run between requests and events are not delivered. Start uWSGI "
    "with --enable-threads (enable-threads = true) or --threads N."
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
    try:
        from optimizely_middleware import process_hooks
    except ImportError:  # pragma: no cover - older layout: close the senders directly
        from optimizely_middleware.sender import iter_senders

        for sender in iter_senders():
            sender.close(sender.shutdown_timeout)
        return
    process_hooks.run_exit_hooks()


def check_uwsgi(uwsgi: Any = None) -> bool:
    """Inside uWSGI: warn if threads are disabled, chain ``uwsgi.atexit`` (once).

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
    return True
