"""Lost events: why an event was dropped, how that is said, and logging it without flooding.

Usage::

    log = DropLog(interval=10.0)
    log.record(QUEUE_FULL, 3, detail="")   # logged at once, or held back and counted
    log.flush()                            # logs every held-back count now
    log.totals(delivered_events=97, delivered_posts=2)  # the final line at close()

Every lost event of the engine goes through one place,
:meth:`~optimizely_middleware.delivery.engine.DeliveryEngine.record_lost_event`, which
counts it under one of the reasons below and calls :meth:`DropLog.record`.
Messages name the reason and the error, never a payload, and URLs in them
have their query string and user info removed (:func:`redact`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "CLOSED",
    "PROCESS_CHANGED",
    "QUEUE_BYTES",
    "QUEUE_FULL",
    "REJECTED",
    "RETRIES_EXHAUSTED",
    "SENDER_ERROR",
    "SHUTDOWN",
    "UNSERIALIZABLE",
    "DropLog",
    "describe_error",
    "redact",
    "safe_url",
]

logger = logging.getLogger("optimizely_middleware.sender")

# Drop reasons: the keys of stats()["dropped"].
QUEUE_FULL: Final = "queue_full"
QUEUE_BYTES: Final = "queue_bytes"
CLOSED: Final = "closed"
UNSERIALIZABLE: Final = "unserializable"
REJECTED: Final = "rejected"
RETRIES_EXHAUSTED: Final = "retries_exhausted"
SHUTDOWN: Final = "shutdown"
SENDER_ERROR: Final = "sender_error"
PROCESS_CHANGED: Final = "process_changed"

_WHY: Final = {
    QUEUE_FULL: "the queue is full (max_queue_events)",
    QUEUE_BYTES: "the queue is full (max_queue_bytes)",
    CLOSED: "the sender is closed",
    UNSERIALIZABLE: "the event cannot be encoded to JSON; the rest of its batch is sent",
    REJECTED: "the POST failed in a way a retry cannot fix; not retried",
    RETRIES_EXHAUSTED: "every retry failed",
    SHUTDOWN: "the sender was closed before they could be sent",
    SENDER_ERROR: "unexpected error in the sender",
    PROCESS_CHANGED: "their worker thread was left behind by a change of threading library",
}


def safe_url(url: str) -> str:
    """``url`` without its query string, fragment and user info (they may carry secrets)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>)]+")
# urllib3 writes "host='h', port=1): ... url: /v1/events?key=..." in its messages.
_PATH_QUERY_IN_TEXT = re.compile(r"(url: /[^\s?'\"]*)\?[^\s'\"]*")


def redact(text: str) -> str:
    """``text`` with every URL in it passed through :func:`safe_url`.

    Exception texts of HTTP libraries contain the URL they failed on.
    """
    text = _URL_IN_TEXT.sub(lambda m: safe_url(m.group(0)), text)
    return _PATH_QUERY_IN_TEXT.sub(r"\1", text)


def describe_error(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``, redacted, at most 300 characters."""
    lines = str(exc).splitlines()
    first = lines[0][:300] if lines else ""
    return redact(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


class DropLog:
    """Logs drops of one reason at most once per ``interval`` seconds, and never under-reports.

    A drop that comes within ``interval`` of the last line for its reason is
    held back and counted; the next line for that reason, or :meth:`flush`
    (called by the engine at the end of every ``flush()`` and at ``close()``),
    logs the held-back count.

    Example::

        log = DropLog(10.0)
        for _ in range(100):
            log.record("closed", 3)   # one line now ...
        log.flush()                   # ... and one for the 297 held back
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        """A new lock: a parent thread may have held this one at fork time."""
        self._lock = threading.Lock()

    def record(self, reason: str, count: int, detail: str = "") -> None:
        """Log ``count`` events dropped for ``reason`` (or hold the count back)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self.interval:
                self._held[reason] += count
                return
            self._last[reason] = now
            held = self._held.pop(reason, 0)
        message = "Dropped %d Optimizely event(s) [%s]: %s"
        args: tuple[object, ...] = (count, reason, _WHY.get(reason, reason))
        if detail:
            message += " (%s)"
            args = (*args, redact(detail))
        if held:
            message += "; %d more dropped for this reason since the last message"
            args = (*args, held)
        logger.error(message, *args)

    def flush(self) -> None:
        """Log every held-back count now."""
        with self._lock:
            held, self._held = self._held, Counter()
            now = self._clock()
            for reason in held:
                self._last[reason] = now
        for reason, count in sorted(held.items()):
            logger.error(
                "Dropped %d more Optimizely event(s) [%s]: %s",
                count,
                reason,
                _WHY.get(reason, reason),
            )

    def totals(self, *, delivered_events: int, delivered_posts: int, dropped: Counter[str]) -> None:
        """The final line: what was delivered and what was lost, by reason."""
        self.flush()
        lost = sum(dropped.values())
        if not lost:
            logger.info(
                "Optimizely event sender closed: %d events delivered in %d POSTs, none dropped.",
                delivered_events,
                delivered_posts,
            )
            return
        logger.warning(
            "Optimizely event sender closed: %d events delivered in %d POSTs, %d dropped (%s).",
            delivered_events,
            delivered_posts,
            lost,
            ", ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items())),
        )
