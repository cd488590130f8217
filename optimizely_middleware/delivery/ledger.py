"""The drop ledger: every lost event, counted under a named reason, logged, and passed on.

Usage::

    ledger = DropLedger(on_error=report, log_interval=10.0)
    ledger.record_lost_event(DropReason.QUEUE_FULL, 3, items)  # counted, logged, on_error(items)
    ledger.dropped()                                             # {"queue_full": 3}
    ledger.lost_at_shutdown(queued=1, encoding=0, unconfirmed=2)  # counted, one warning
    ledger.close_report(delivered_events=97, delivered_posts=2)  # the closing line

The dispatcher and the sender each keep one (``dispatcher.stats()`` merges
them). A drop goes nowhere else: counting, the rate-limited log line
(:class:`~optimizely_middleware.delivery.drops.DropLog`) and ``on_error``
are decided here, once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from optimizely_middleware.delivery.drops import DropLog, DropReason
from optimizely_middleware.process import hooks

__all__ = ["DropLedger", "ErrorCallback"]

logger = logging.getLogger("optimizely_middleware.sender")

# on_error(items, reason): items that will never be sent.
ErrorCallback = Callable[[list[Any], str], None]


class DropLedger:
    """Counts lost events by :class:`DropReason`; logs them (unless ``log=False``) and
    passes the items to ``on_error``. Thread-safe; starts over in a forked child.

    ``log=False`` is for a part that says why in its own words (the
    dispatcher's policies warn once, not per event).

    Example::

        ledger = DropLedger(on_error=lambda items, reason: print(reason, len(items)))
        ledger.record_lost_event(DropReason.CLOSED, 1, [event])   # prints "closed 1"
    """

    def __init__(
        self,
        *,
        on_error: ErrorCallback | None = None,
        log: bool = True,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_error = on_error
        self._log = DropLog(log_interval, clock) if log else None
        self.after_fork_in_child()
        hooks.on_fork(self)

    def after_fork_in_child(self) -> None:
        """Zero counts and new locks (also at construction): a child counts its own drops."""
        self._lock = threading.Lock()
        self._dropped: Counter[str] = Counter()
        if self._log is not None:
            self._log = DropLog(self._log.interval, self._log.clock)

    def record_lost_event(
        self, reason: DropReason, quantity: int, items: Sequence[object] = (), detail: str = ""
    ) -> None:
        """The one place lost events go: counted, logged (rate-limited), passed to on_error."""
        if quantity <= 0:
            return
        with self._lock:
            self._dropped[reason.value] += quantity
        if self._log is not None:
            self._log.record(reason, quantity, detail)
        kept = [item for item in items if item is not None]
        if self.on_error is not None and kept:
            try:
                self.on_error(kept, reason.value)
            except Exception:
                logger.exception("The on_error callback raised; ignored.")

    def lost_at_shutdown(
        self, *, queued: int, encoding: int, unconfirmed: int, items: Sequence[object] = ()
    ) -> None:
        """What a close gave up on: counted as ``shutdown`` (``items`` are the queued
        ones, for on_error) and named in one warning, by where the events were."""
        self.record_lost_event(DropReason.SHUTDOWN, queued + encoding, items)
        self.record_lost_event(DropReason.SHUTDOWN, unconfirmed)
        if queued or encoding or unconfirmed:
            logger.warning(
                "%d Optimizely events were not delivered at shutdown: %d queued, %d still "
                "being encoded at a hand-off, %d in a POST still unconfirmed.",
                queued + encoding + unconfirmed,
                queued,
                encoding,
                unconfirmed,
            )

    def dropped(self) -> dict[str, int]:
        """``{reason: events}`` so far."""
        with self._lock:
            return dict(self._dropped)

    def flush_log(self) -> None:
        """Log every held-back count now."""
        if self._log is not None:
            self._log.flush()

    def close_report(self, *, delivered_events: int, delivered_posts: int) -> None:
        """The final line: what was delivered and what was lost, by reason."""
        dropped = Counter(self.dropped())
        if self._log is not None and (delivered_events or dropped):
            self._log.totals(
                delivered_events=delivered_events, delivered_posts=delivered_posts, dropped=dropped
            )
