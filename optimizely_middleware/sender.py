"""EventSender: delivers handed-over events as JSON POSTs on a worker thread.

Usage::

    sender = EventSender(endpoint="http://127.0.0.1:8765/v1/events")
    dispatcher = RequestScopedEventDispatcher(sender)
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from optimizely_middleware.transport import RequestsTransport, Transport, serialize

if TYPE_CHECKING:
    from optimizely.event_builder import Event

__all__ = ["EventSender"]

logger = logging.getLogger("optimizely_middleware.sender")


class EventSender:
    """Delivers events off the request path (simple first version)."""

    def __init__(self, endpoint: str | None = None, *, transport: Transport | None = None) -> None:
        self.endpoint = endpoint
        self._transport = transport or RequestsTransport()
        self._queue: deque[list[Event]] = deque()
        self._cond = threading.Condition()
        self._submitted = 0
        self._done = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._counts: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._last_error: str | None = None

    def submit(self, events: Sequence[Event]) -> None:
        with self._cond:
            if self._closed:
                self._dropped["closed"] += len(events)
                return
            self._queue.append(list(events))
            self._submitted += len(events)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="optimizely-event-sender", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._queue.popleft()
            for event in batch:
                self._send(event)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def _send(self, event: Event) -> None:
        try:
            body = serialize(event.params)
            headers = dict(event.headers or {})
            headers["Content-Type"] = "application/json"
            response = self._transport.post(self.endpoint or event.url, body, headers)
            if response.status >= 300:
                raise OSError(f"HTTP {response.status}")
            self._counts["delivered_events"] += 1
            self._counts["delivered_posts"] += 1
        except Exception as exc:
            self._dropped["failed"] += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.error("Optimizely event POST failed: %s", self._last_error)

    def flush(self, timeout: float | None = None) -> bool:
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "submitted": self._submitted,
                "delivered_events": self._counts["delivered_events"],
                "delivered_posts": self._counts["delivered_posts"],
                "retries": 0,
                "dropped": dict(self._dropped),
                "queue_depth": sum(len(b) for b in self._queue),
                "last_error": self._last_error,
            }
