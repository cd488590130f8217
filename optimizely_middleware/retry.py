"""When to retry a POST, and how long to wait first.

Usage::

    policy = RetryPolicy(max_retries=5, backoff_base=0.5, backoff_cap=30.0)
    if is_retryable_status(503) and attempt <= policy.max_retries:
        time.sleep(policy.delay(attempt, retry_after=parse_retry_after("2")))

Network failures (refused connection, timeout), 408, 429 and 5xx are
transient and retried; any other status outside 2xx is final.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "is_retryable_status", "is_success_status", "parse_retry_after"]


def is_success_status(status: int) -> bool:
    """2xx: the event API accepted the batch."""
    return 200 <= status < 300


def is_retryable_status(status: int) -> bool:
    """408 Request Timeout, 429 Too Many Requests and every 5xx are worth retrying."""
    return status in (408, 429) or 500 <= status < 600


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header, or None if absent or invalid.

    Accepts delta-seconds (``"120"``) and an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``); a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # float() also accepts "nan" and "inf"; neither is a valid header.
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            return None
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After``.

    The wait before retry number ``attempt`` (1 for the first retry) is a
    uniform random value in ``[0, min(backoff_cap, backoff_base * 2**(attempt-1))]``
    ("full jitter", which spreads retries of many processes apart). When the
    server sent ``Retry-After``, that wait is used instead, capped at
    ``retry_after_cap`` so a hostile or broken header cannot park a worker.

    Example::

        RetryPolicy(max_retries=3, backoff_base=0.01, backoff_cap=0.05)  # fast, for tests
    """

    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    retry_after_cap: float = 60.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.backoff_base < 0 or self.backoff_cap < 0 or self.retry_after_cap < 0:
            raise ValueError("backoff_base, backoff_cap and retry_after_cap must be >= 0")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (starting at 1)."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap)
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt - 1, 62))
        return self.random() * ceiling
