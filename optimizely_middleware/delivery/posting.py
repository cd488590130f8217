"""POSTing one batch until it is delivered or has failed for good.

Usage (on an I/O thread of the engine, with the engine's condition)::

    poster = BatchPoster(transport=PooledTransport(), endpoint=None, retry_policy=RetryPolicy())
    reason, detail = poster.deliver(batch, condition, gave_up=lambda: None)
    # reason is None when delivered, else a drop reason (DropReason.REJECTED, ...)

A ``Retry-After`` pauses every POST of the poster, not only the batch that
got it (the server speaks for the whole endpoint). Waits go through the
engine's condition, so ``close()`` ends them at once: ``gave_up()`` (called
with the condition held) then returns the drop reason, no further retry is
counted or announced, and the batch is reported lost under that reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from optimizely_middleware.delivery.batch_queue import Batch
from optimizely_middleware.delivery.clock import Clock, Wait, wait_on
from optimizely_middleware.delivery.drops import DropReason, describe_error, safe_url
from optimizely_middleware.delivery.retry import (
    RetryPolicy,
    is_retryable_status,
    is_success_status,
    is_transient_error,
    parse_retry_after,
)
from optimizely_middleware.delivery.transport import Transport

__all__ = ["BatchPoster"]

logger = logging.getLogger("optimizely_middleware.sender")


class BatchPoster:
    """POSTs batches through ``transport`` with retries; counts ``retries`` and ``last_error``.

    ``transport`` may be reassigned at any time (the next POST uses the new one).

    Example::

        poster = BatchPoster(transport=t, endpoint="http://127.0.0.1:8765/v1/events",
                             retry_policy=RetryPolicy(max_retries=2))
    """

    def __init__(
        self,
        *,
        transport: Transport,
        endpoint: str | None,
        retry_policy: RetryPolicy,
        clock: Clock = time.monotonic,
        wait: Wait = wait_on,
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.retry_policy = retry_policy
        self._clock = clock
        self._wait = wait
        self.reset()

    def reset(self) -> None:
        """Forget the pause and the counters (a new process)."""
        self.paused_until = float("-inf")
        self.retries = 0
        self.last_error: str | None = None

    def deliver(
        self, batch: Batch, cond: threading.Condition, gave_up: Callable[[], DropReason | None]
    ) -> tuple[DropReason | None, str]:
        """POST ``batch`` until delivered (``(None, "")``) or failed for good (a drop reason)."""
        url = self.endpoint or batch.url
        body = batch.body()
        policy = self.retry_policy
        attempt = 0
        detail = "closed before the POST"
        resume_at = float("-inf")
        while True:
            with cond:
                reason = self._wait_until(max(resume_at, self.paused_until), cond, gave_up)
                if reason is not None:
                    return reason, detail
                if attempt:
                    self.retries += 1  # counted when it happens, not when planned
            retry_after: float | None = None
            try:
                response = self.transport.post(url, body, dict(batch.headers))
            except Exception as exc:
                detail = describe_error(exc)
                retryable = is_transient_error(exc)
            else:
                if is_success_status(response.status):
                    return None, ""
                detail = f"HTTP {response.status} from {safe_url(url)}"
                retryable = is_retryable_status(response.status)
                retry_after = parse_retry_after(_header(response.headers, "Retry-After"))
            if not retryable:
                return DropReason.REJECTED, detail
            attempt += 1
            with cond:
                self.last_error = detail
                delay = policy.delay(attempt, retry_after)
                resume_at = self._clock() + delay
                if retry_after is not None:  # the server asked every POST to wait
                    self.paused_until = max(self.paused_until, resume_at)
                reason = gave_up()
                if reason is not None:
                    return reason, detail
                if attempt > policy.max_retries:
                    return DropReason.RETRIES_EXHAUSTED, detail
                # Logged under the lock: once close() gives up, no retry is announced.
                logger.warning(
                    "POST of %d Optimizely events failed (%s); retry %d of %d in %.2fs.",
                    len(batch),
                    detail,
                    attempt,
                    policy.max_retries,
                    delay,
                )

    def _wait_until(
        self, when: float, cond: threading.Condition, gave_up: Callable[[], DropReason | None]
    ) -> DropReason | None:
        """Wait (``cond`` held) until the clock reaches ``when``; a drop reason if given up."""
        while True:
            reason = gave_up()
            if reason is not None:
                return reason
            remaining = when - self._clock()
            if remaining <= 0:
                return None
            self._wait(cond, remaining)


def _header(headers: dict[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None
