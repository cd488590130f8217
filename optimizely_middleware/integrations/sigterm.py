"""An opt-in SIGTERM handler that delivers queued events before the process stops.

For servers that die by their stop signal instead of exiting normally, so that
no exit handler runs: waitress, Django's ``runserver``, a plain
``wsgiref``/``http.server`` process, any script whose SIGTERM has the
default action. (gunicorn, uWSGI, daphne, hypercorn and granian exit
normally; uvicorn runs the lifespan shutdown; they need nothing.)

Usage, in the module that builds your app (it must run in the main thread)::

    from optimizely_middleware import install_sigterm_flush

    dispatcher = RequestScopedEventDispatcher()
    install_sigterm_flush(dispatcher, timeout=5.0)

    # or, where the dispatcher is not at hand (Django's settings.py, AppConfig.ready):
    install_sigterm_flush()  # every EventSender alive when the signal arrives

On SIGTERM the handler flushes every dispatcher it was given (up to
``timeout`` seconds in all, on a helper thread so a lock held by the
interrupted main thread cannot deadlock it), then chains the handler that was
installed before it: a Python handler is called; the default action is
restored and the signal raised again, so the process still ends by SIGTERM
(exit status -15, as before) but after the events went out; an ignored signal
stays ignored. The dispatchers stay usable, so a chained handler that starts
a graceful shutdown loses nothing either.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from optimizely_middleware.integrations.adapters import Flushable, flush_within

__all__ = ["SignalFlush", "install_sigterm_flush"]

logger = logging.getLogger("optimizely_middleware")

# What signal.getsignal returns: a handler, SIG_DFL / SIG_IGN, or None (set from C).
Handler = Any


class SignalFlush:
    """The installed handler: flushes its dispatchers, then chains ``previous``.

    Created by :func:`install_sigterm_flush`; calling that again adds a
    dispatcher to the same handler instead of stacking a second one.

    Example::

        handler = install_sigterm_flush(dispatcher)
        assert signal.getsignal(signal.SIGTERM) is handler
    """

    def __init__(self, signum: int, previous: Handler, timeout: float) -> None:
        self.signum = signum
        self.previous = previous
        self.timeout = timeout
        self.dispatchers: list[Flushable] = []
        self.every_sender = False
        self._running = False

    def add(self, dispatcher: Flushable | None, timeout: float) -> None:
        if dispatcher is None:
            self.every_sender = True
        elif not any(d is dispatcher for d in self.dispatchers):
            self.dispatchers.append(dispatcher)
        self.timeout = max(self.timeout, timeout)

    def targets(self) -> list[Flushable]:
        found = list(self.dispatchers)
        if self.every_sender:
            from optimizely_middleware.delivery.sender import iter_senders

            found.extend(iter_senders())
        return found

    def flush_all(self) -> bool:
        """Flush every dispatcher within ``timeout`` seconds in all; True if all settled."""
        return flush_within(self.targets(), self.timeout)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self._running:
            # A second signal while the flush runs goes straight to the previous handler.
            self._running = True
            try:
                self._flush_on_helper_thread(signum)
            finally:
                self._running = False
        self._chain(signum, frame)

    def _flush_on_helper_thread(self, signum: int) -> None:
        name = signal.Signals(signum).name
        logger.info(
            "%s: flushing Optimizely events (up to %.1f s) before the previous handler runs.",
            name,
            self.timeout,
        )
        result: list[bool] = []
        helper = threading.Thread(
            target=lambda: result.append(self.flush_all()),
            name="optimizely-signal-flush",
            daemon=True,
        )
        helper.start()
        helper.join(self.timeout + 0.5)
        if result == [True]:
            logger.info("%s: every Optimizely event was delivered.", name)
        else:
            logger.warning(
                "%s: Optimizely events were still unsent after %.1f s; they are lost "
                "if the process stops now.",
                name,
                self.timeout,
            )

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        previous = self.previous
        if previous is signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, frame)
            return
        # SIG_DFL (or a handler set from C, which Python cannot call): the default
        # action, so the process ends the way it would have without us.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install_sigterm_flush(
    dispatcher: Flushable | None = None, timeout: float = 5.0, *, signum: int = signal.SIGTERM
) -> SignalFlush | None:
    """Flush ``dispatcher`` (up to ``timeout`` s) when ``signum`` arrives, then
    chain the previous handler (see the module docstring). Without a
    dispatcher, every :class:`~optimizely_middleware.EventSender` alive at
    that moment is flushed.

    Safe to call twice (the same dispatcher is flushed once; another one is
    added to the same handler). Returns the handler, or None when called
    outside the main thread, where Python cannot install signal handlers (a
    warning says so).
    """
    if timeout < 0:
        raise ValueError("timeout must not be negative")
    if threading.current_thread() is not threading.main_thread():
        logger.warning(
            "install_sigterm_flush() must be called in the main thread; no handler was "
            "installed. Call it where the app module is imported by the server's main thread."
        )
        return None
    current = signal.getsignal(signum)
    if isinstance(current, SignalFlush):
        current.add(dispatcher, timeout)
        return current
    handler = SignalFlush(signum, current, timeout)
    handler.add(dispatcher, timeout)
    signal.signal(signum, handler)
    return handler
