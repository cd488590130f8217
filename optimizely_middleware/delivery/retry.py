"""When to retry a POST, and how long to wait first.

Usage::

    policy = RetryPolicy(max_retries=5, backoff_base=0.5, backoff_cap=30.0)
    if is_retryable_status(503) and attempt <= policy.max_retries:
        time.sleep(policy.delay(attempt, retry_after=parse_retry_after("2")))

Network failures (refused connection, reset, timeout), 408, 429 and 5xx
are transient and retried; any other status outside 2xx is final, and so is
an error that a retry cannot heal: an invalid URL or header, a TLS
certificate that fails verification, or any exception that is not a
network failure (see :func:`is_transient_error`).
"""

from __future__ import annotations

import http.client
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = [
    "PermanentError",
    "RetryPolicy",
    "is_retryable_status",
    "is_success_status",
    "is_transient_error",
    "parse_retry_after",
]


class PermanentError(Exception):
    """A POST failed in a way that a retry cannot fix (raise it from a custom transport)."""


# Exception classes (by name, anywhere in the class hierarchy) of requests and
# urllib3 that are OSError/HTTPError subclasses yet never heal on a retry.
_PERMANENT_NAMES = frozenset(
    {
        "InvalidURL",
        "InvalidHeader",
        "InvalidSchema",
        "MissingSchema",
        "URLRequired",
        "InvalidJSONError",
        "LocationValueError",
        "LocationParseError",
        "URLSchemeUnknown",
        "ProxySchemeUnknown",
        "HeaderParsingError",
    }
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    # urllib3 keeps the cause of MaxRetryError / ProxyError in .reason
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException) and reason not in seen:
        seen.extend(_chain(reason))
    return seen


def is_transient_error(exc: BaseException) -> bool:
    """True for network failures worth retrying; False for errors a retry cannot heal.

    Not transient: :class:`PermanentError`; an invalid URL, scheme or header
    (``requests``' and ``urllib3``'s own classes); a TLS certificate failure
    (:class:`ssl.SSLCertVerificationError` anywhere in the cause chain); any
    exception that is not an :class:`OSError`, :class:`http.client.HTTPException`
    or ``urllib3`` ``HTTPError`` (a ``ValueError`` for a header with a newline,
    a ``TypeError``, a bug in a custom transport).
    """
    chain = _chain(exc)
    for error in chain:
        if isinstance(error, (PermanentError, ssl.SSLCertVerificationError)):
            return False
        if any(cls.__name__ in _PERMANENT_NAMES for cls in type(error).__mro__):
            return False
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return True
    return any(
        cls.__name__ == "HTTPError" and cls.__module__.startswith("urllib3")
        for cls in type(exc).__mro__
    )


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
