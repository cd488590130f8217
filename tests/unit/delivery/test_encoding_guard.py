"""The run-time guard of the encoder's fast path
(``optimizely_middleware.delivery.encoding_guard``).

The guard must check the encoder's real fast path, not a copy of it: a fast
path broken in the encoder's own module must make a new encoder fall back to
the SDK's ``create_log_event``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
from optimizely.event.user_event import UserEvent

from optimizely_middleware.delivery import encoding
from optimizely_middleware.delivery.encoded import EncodedEvent
from optimizely_middleware.delivery.encoding import EventEncoder, PendingUserEvent
from optimizely_middleware.delivery.encoding_guard import FastPath, fast_path_problem
from optimizely_middleware.delivery.visitor_json import visitor_json
from tests.unit.delivery.test_encoding import Capture, body_of, sdk_log_event


def real_fast_path(encoder: EventEncoder) -> FastPath:
    return lambda event: encoder.encode_fast(PendingUserEvent(event, None))


def test_the_encoders_real_fast_path_passes() -> None:
    assert fast_path_problem(real_fast_path(EventEncoder())) is None


def test_a_fast_path_that_writes_another_value_is_caught() -> None:
    fast = real_fast_path(EventEncoder())

    def flips_enabled(event: UserEvent) -> EncodedEvent | None:
        one = fast(event)
        assert one is not None
        visitors = one.visitors.replace(b'"enabled":true', b'"enabled":false')
        return dataclasses.replace(one, visitors=visitors)

    assert fast_path_problem(flips_enabled) == "the payload differs"


def test_a_fast_path_that_declines_an_event_is_caught() -> None:
    assert fast_path_problem(lambda event: None) == (
        "the fast path did not take a synthetic ImpressionEvent"
    )


def test_events_of_one_context_with_different_envelopes_are_caught() -> None:
    fast = real_fast_path(EventEncoder())
    calls = 0

    def new_key_each_time(event: UserEvent) -> EncodedEvent | None:
        nonlocal calls
        calls += 1
        one = fast(event)
        assert one is not None
        return dataclasses.replace(one, key=(one.key, calls))

    assert fast_path_problem(new_key_each_time) == "events of one context got different envelopes"


@pytest.mark.parametrize("field", ["url", "headers"])
def test_another_url_or_other_headers_are_caught(field: str) -> None:
    fast = real_fast_path(EventEncoder())
    wrong: dict[str, Any] = {
        "url": "https://logx.optimizely.com/v2/events",
        "headers": {"Content-Type": "text/plain"},
    }

    def elsewhere(event: UserEvent) -> EncodedEvent | None:
        one = fast(event)
        assert one is not None
        return dataclasses.replace(one, **{field: wrong[field]})

    assert fast_path_problem(elsewhere) == "the url or headers differ"


def test_a_broken_fast_path_in_the_encoder_makes_it_fall_back_with_one_warning(
    datafile: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def without_cmab_uuid(event: Any, logger: Any) -> bytes | None:
        data = visitor_json(event, logger)
        return None if data is None else data.replace(b',"cmab_uuid":"cmab-1"', b"")

    monkeypatch.setattr(encoding, "visitor_json", without_cmab_uuid)
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
        encoder = EventEncoder()
    assert not encoder.fast_path
    [warning] = [r for r in caplog.records if "create_log_event" in r.getMessage()]
    assert "the payload differs" in warning.getMessage()
    capture = Capture(datafile)
    with capture.dispatcher.request_scope():
        capture.client.create_user_context("user-9").decide("new_checkout")
    encoded = [encoder.encode(item) for item in capture.items()]
    assert body_of(encoded) == sdk_log_event(capture.items()).params


def test_a_guard_that_raises_turns_the_fast_path_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def raises(encode_fast: FastPath) -> str | None:
        raise RuntimeError("a future SDK changed a constructor")

    monkeypatch.setattr(encoding, "fast_path_problem", raises)
    with caplog.at_level(logging.WARNING, logger="optimizely_middleware"):
        assert not EventEncoder().fast_path
    assert "the check raised RuntimeError" in caplog.text
