"""Lost events: why an event was dropped, how that is said, and logging it without flooding.

Usage::

    log = DropLog(interval=10.0)
    log.record(DropReason.QUEUE_FULL, 3)   # logged at once, or held back and counted
    log.flush()                            # logs every held-back count now
    log.totals(delivered_events=97, delivered_posts=2)  # the final line at close()

Every lost event, the dispatcher's and the sender's, goes through one place,
:meth:`~optimizely_middleware.delivery.ledger.DropLedger.record_lost_event`, which
counts it under a :class:`DropReason` and calls :meth:`DropLog.record`.
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
from enum import Enum
from typing import Final
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DropLog",
    "DropReason",
    "describe_error",
    "redact",
    "safe_url",
]

logger = logging.getLogger("optimizely_middleware.sender")


class DropReason(str, Enum):
    """Why events were lost: the keys of ``stats()["dropped"]``, the dispatcher's and the
    sender's alike, each with the sentence its log line gives.

    Example::

        ledger.record_lost_event(DropReason.QUEUE_FULL, 3)
        assert sender.stats()["dropped"] == {"queue_full": 3}
    """

    # The dispatcher's: a request's policy, decided before the hand-off.
    REQUEST_CAP = "request_cap"
    FAILED_REQUEST = "failed_request"
    OUTSIDE_SCOPE = "outside_scope"
    OUTSIDE_SCOPE_RAISED = "outside_scope_raised"
    # The sender's (and the dispatcher's when a sender raises at the hand-off).
    QUEUE_FULL = "queue_full"
    QUEUE_BYTES = "queue_bytes"
    CLOSED = "closed"
    UNSERIALIZABLE = "unserializable"
    REJECTED = "rejected"
    RETRIES_EXHAUSTED = "retries_exhausted"
    SHUTDOWN = "shutdown"
    SENDER_ERROR = "sender_error"
    PROCESS_CHANGED = "process_changed"

    def __str__(self) -> str:
        return self.value

    @property
    def why(self) -> str:
        """What happened to the events, for the log line."""
        return _WHY[self]


_WHY: Final = {
    DropReason.REQUEST_CAP: "the request produced more than max_events_per_request",
    DropReason.FAILED_REQUEST: "the request failed and failed_requests='discard'",
    DropReason.OUTSIDE_SCOPE: "dispatched outside any request scope (outside_scope='drop')",
    DropReason.OUTSIDE_SCOPE_RAISED: "dispatched outside any request scope (outside_scope='raise')",
    DropReason.QUEUE_FULL: "the queue is full (max_queue_events)",
    DropReason.QUEUE_BYTES: "the queue is full (max_queue_bytes)",
    DropReason.CLOSED: "the sender is closed",
    DropReason.UNSERIALIZABLE: "the event cannot be encoded to JSON; the rest of its batch is sent",
    DropReason.REJECTED: "the POST failed in a way a retry cannot fix; not retried",
    DropReason.RETRIES_EXHAUSTED: "every retry failed",
    DropReason.SHUTDOWN: "the sender was closed before they could be sent",
    DropReason.SENDER_ERROR: "unexpected error in the sender",
    DropReason.PROCESS_CHANGED: "their worker thread was left behind by a change of "
    "threading library",
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
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, reason: str, count: int, detail: str = "") -> None:
        """Log ``count`` events dropped for ``reason`` (or hold the count back)."""
        now = self.clock()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self.interval:
                self._held[reason] += count
                return
            self._last[reason] = now
            held = self._held.pop(reason, 0)
        message = "Dropped %d Optimizely event(s) [%s]: %s"
        args: tuple[object, ...] = (count, reason, _why(reason))
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
            now = self.clock()
            for reason in held:
                self._last[reason] = now
        for reason, count in sorted(held.items()):
            logger.error(
                "Dropped %d more Optimizely event(s) [%s]: %s",
                count,
                reason,
                _why(reason),
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


def _why(reason: str) -> str:
    try:
        return DropReason(reason).why
    except ValueError:
        return reason
