"""Warnings about how the SDK is wired to a dispatcher, each said once per dispatcher.

Usage (the dispatcher owns one)::

    hints = WiringHints()
    hints.event_outside_scope(open_scopes=2)   # a WiringWarning, the first time only
    hints.warn_once("outside_scope", "An event arrived outside any request ...")
    if called_by_forwarding_processor(sys._getframe(1)):
        ...                                    # an error raised there reaches nobody
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from types import CodeType, FrameType

from optimizely_middleware.errors import WiringWarning

__all__ = [
    "BATCH_PROCESSOR_HINT",
    "SDK_EVENT_THREAD_NAME",
    "WiringHints",
    "called_by_forwarding_processor",
]

logger = logging.getLogger("optimizely_middleware")

# The SDK's BatchEventProcessor runs dispatch_event on a thread of this name.
SDK_EVENT_THREAD_NAME = "EventThread"

BATCH_PROCESSOR_HINT = (
    "The Optimizely client calls dispatch_event from a thread that sees no request "
    "scope, so events are not tied to requests. This happens when the client was "
    "built with Optimizely(datafile, event_dispatcher=dispatcher), which adds the "
    "SDK's BatchEventProcessor. Build it with "
    "optimizely_middleware.create_client(dispatcher, datafile=...) instead, or pass "
    "event_processor=ForwardingEventProcessor(dispatcher, notification_center=nc) "
    "together with notification_center=nc."
)


class WiringHints:
    """The warnings one dispatcher has already given, so that each is given once.

    Example::

        hints = WiringHints()
        hints.warn_once("key", "Said once.", category=WiringWarning)
        hints.warn_once("key", "Said once.")   # nothing: already said
    """

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def event_outside_scope(self, open_scopes: int) -> None:
        """An event arrived outside any request: say what in the wiring may cause it."""
        thread_name = threading.current_thread().name
        if thread_name == SDK_EVENT_THREAD_NAME:
            self.warn_once("event_thread", BATCH_PROCESSOR_HINT, category=WiringWarning)
        elif open_scopes > 0:
            self.warn_once(
                "unscoped_while_serving",
                "An Optimizely event arrived outside any request scope while requests "
                f"are being served (thread {thread_name!r}). If it belongs to a request, "
                "the thread does not carry the request's context: run it with "
                "contextvars.copy_context().run(...). " + BATCH_PROCESSOR_HINT,
                category=WiringWarning,
            )

    def warn_once(self, key: str, message: str, *, category: type[Warning] | None = None) -> None:
        """Log ``message`` once per ``key``; with ``category``, also ``warnings.warn`` it."""
        if key in self._warned:
            return
        self._warned.add(key)
        logger.warning(message)
        if category is not None:
            warnings.warn(message, category, stacklevel=4)


def called_by_forwarding_processor(frame: FrameType) -> bool:
    """Whether ``frame`` runs the SDK's ``ForwardingEventProcessor.process``, which catches
    what ``dispatch_event`` raises and logs the whole event at ERROR."""
    return frame.f_code is _forwarding_process_code()


@functools.cache
def _forwarding_process_code() -> CodeType:
    """The code of the SDK's ``ForwardingEventProcessor.process`` (imported on first use)."""
    from optimizely.event.event_processor import ForwardingEventProcessor

    return ForwardingEventProcessor.process.__code__
