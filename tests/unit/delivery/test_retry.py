"""Retry classification, Retry-After parsing and backoff with full jitter."""

from __future__ import annotations

import http.client
import ssl
from datetime import datetime, timezone

import pytest
import requests
import urllib3

from optimizely_middleware.delivery.retry import (
    PermanentError,
    RetryPolicy,
    is_retryable_status,
    is_success_status,
    is_transient_error,
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


def _caused_by(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        OSError("network is unreachable"),
        requests.ConnectionError("connection aborted"),
        requests.Timeout("read timed out"),
        urllib3.exceptions.ProtocolError("Connection aborted."),
        urllib3.exceptions.ReadTimeoutError(None, "/v1/events", "Read timed out."),  # type: ignore[arg-type]
        http.client.RemoteDisconnected("Remote end closed connection"),
        urllib3.exceptions.SSLError("EOF occurred in violation of protocol"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_network_failures_are_transient(exc: BaseException) -> None:
    assert is_transient_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        PermanentError("told so by a custom transport"),
        requests.exceptions.InvalidURL("Invalid URL 'http://'"),
        requests.exceptions.MissingSchema("No scheme supplied"),
        requests.exceptions.InvalidSchema("No connection adapters"),
        requests.exceptions.InvalidHeader("Invalid leading whitespace"),
        urllib3.exceptions.LocationParseError("http://[::1"),
        urllib3.exceptions.URLSchemeUnknown("ftp"),
        _caused_by(
            requests.exceptions.SSLError("certificate verify failed"),
            ssl.SSLCertVerificationError("certificate verify failed: self-signed certificate"),
        ),
        ValueError("Invalid header value b'a\\nb'"),
        TypeError("a bug in a custom transport"),
        UnicodeEncodeError("latin-1", "é", 0, 1, "ordinal not in range"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_a_retry_cannot_heal_are_not_transient(exc: BaseException) -> None:
    assert not is_transient_error(exc)
