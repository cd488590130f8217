"""Retry classification, Retry-After parsing and backoff with full jitter."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from optimizely_middleware.retry import (
    RetryPolicy,
    is_retryable_status,
    is_success_status,
    parse_retry_after,
)

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retryable(status: int) -> None:
    assert is_retryable_status(status)
    assert not is_success_status(status)


@pytest.mark.parametrize("status", [301, 302, 400, 401, 403, 404, 413, 422])
def test_other_failures_are_final(status: int) -> None:
    assert not is_retryable_status(status)
    assert not is_success_status(status)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_success(status: int) -> None:
    assert is_success_status(status)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    top = RetryPolicy(backoff_base=0.5, backoff_cap=3.0, random=lambda: 1.0)
    assert [top.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    bottom = RetryPolicy(backoff_base=0.5, backoff_cap=3.0, random=lambda: 0.0)
    assert bottom.delay(4) == 0.0


def test_huge_attempt_numbers_stay_capped() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=3.0, random=lambda: 1.0)
    assert policy.delay(10_000) == 3.0


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    policy = RetryPolicy(backoff_base=100.0, retry_after_cap=60.0, random=lambda: 1.0)
    assert policy.delay(1, retry_after=2.0) == 2.0
    assert policy.delay(1, retry_after=3600.0) == 60.0


def test_invalid_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_base=-1.0)
