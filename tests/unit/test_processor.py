"""RequestScopedEventProcessor: keeps the SDK's user events in the request's scope."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from optimizely import optimizely
from optimizely.event.user_event import ConversionEvent, ImpressionEvent
from optimizely.helpers import enums
from optimizely.notification_center import NotificationCenter

from optimizely_middleware import EventOutsideScopeError, RequestScopedEventDispatcher
from optimizely_middleware.delivery.encoding import PendingUserEvent
from optimizely_middleware.processor import RequestScopedEventProcessor
from tests.support.fakes import RecordingSink


def wired(
    datafile: str, **options: Any
) -> tuple[RecordingSink, RequestScopedEventDispatcher, optimizely.Optimizely]:
    sink = RecordingSink()
    dispatcher = RequestScopedEventDispatcher(sink, **options)
    center = NotificationCenter()
    client = optimizely.Optimizely(
        datafile,
        event_processor=RequestScopedEventProcessor(dispatcher, notification_center=center),
        notification_center=center,
    )
    return sink, dispatcher, client


def test_inside_a_request_the_user_events_are_kept_as_they_are(datafile: str) -> None:
    sink, dispatcher, client = wired(datafile)
    with dispatcher.request_scope() as scope:
        user = client.create_user_context("user-1", {"plan": "pro"})
        user.decide("new_checkout")
        user.track_event("purchase", {"revenue": 10})
        assert len(scope) == 2
        assert sink.batches == []
    (items,) = sink.batches
    assert [type(item.user_event) for item in items] == [ImpressionEvent, ConversionEvent]
    assert all(item.notification_center is None for item in items)  # no LOG_EVENT listener
    assert items[1].user_event.event_tags == {"revenue": 10}


def test_the_notification_centre_rides_along_only_when_log_event_listeners_exist(
    datafile: str,
) -> None:
    sink, dispatcher, client = wired(datafile)
    center = client.notification_center
    listener_id = center.add_notification_listener(
        enums.NotificationTypes.LOG_EVENT, lambda event: None
    )
    with dispatcher.request_scope():
        client.track("purchase", "user-2")
        center.remove_notification_listener(listener_id)
        client.track("purchase", "user-2")
    first, second = sink.batches[0]
    assert first.notification_center is center
    assert second.notification_center is None


def test_outside_a_request_send_hands_the_event_over_at_once(datafile: str) -> None:
    sink, dispatcher, client = wired(datafile)
    client.track("purchase", "user-3")
    assert [len(batch) for batch in sink.batches] == [1]
    assert isinstance(sink.batches[0][0], PendingUserEvent)
    assert dispatcher.stats()["outside_scope_sent"] == 1


def test_outside_a_request_drop_is_counted(datafile: str) -> None:
    sink, dispatcher, client = wired(datafile, outside_scope="drop")
    client.track("purchase", "user-4")
    client.create_user_context("user-4").decide("new_checkout")
    assert sink.batches == []
    assert dispatcher.stats()["dropped"] == {"outside_scope": 2}


def test_outside_a_request_raise_reaches_the_app_and_is_counted(
    datafile: str, caplog: pytest.LogCaptureFixture
) -> None:
    sink, dispatcher, client = wired(datafile, outside_scope="raise")
    with caplog.at_level(logging.WARNING), pytest.raises(EventOutsideScopeError):
        client.track("purchase", "user-5", {"plan": "secret"})
    assert sink.batches == []
    assert dispatcher.stats()["dropped"] == {"outside_scope_raised": 1}
    assert "secret" not in caplog.text and "user-5" not in caplog.text


def test_something_that_is_not_a_user_event_is_ignored(
    datafile: str, caplog: pytest.LogCaptureFixture
) -> None:
    sink, dispatcher, client = wired(datafile)
    with dispatcher.request_scope():
        client.event_processor.process("not an event")  # type: ignore[arg-type]
    assert sink.batches == []
    assert "unknown type" in caplog.text
