from __future__ import annotations

import warnings

import pytest
from optimizely import optimizely
from optimizely.event.event_processor import ForwardingEventProcessor
from optimizely.helpers import enums
from optimizely.notification_center import NotificationCenter
from pytest_httpserver import HTTPServer

from optimizely_middleware import (
    EventSender,
    RequestScopedEventDispatcher,
    WiringWarning,
    check_client,
    create_client,
)
from tests.event_endpoint import EventEndpoint
from tests.support import RecordingSink


def test_create_client_forwards_on_the_calling_thread_and_fires_log_event(datafile: str) -> None:
    sink = RecordingSink()
    dispatcher = RequestScopedEventDispatcher(sink)
    client = create_client(dispatcher, datafile=datafile)
    assert isinstance(client.event_processor, ForwardingEventProcessor)
    notified: list[object] = []
    client.notification_center.add_notification_listener(
        enums.NotificationTypes.LOG_EVENT, notified.append
    )
    with dispatcher.request_scope():
        decision = client.create_user_context("user-1").decide("new_checkout")
        assert sink.batches == []
    assert decision.variation_key in ("on", "off")
    assert len(notified) == 1
    assert sink.batches == [[notified[0]]]
    assert check_client(client, dispatcher) is True


def test_create_client_keeps_a_given_notification_center(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    center = NotificationCenter()
    client = create_client(dispatcher, datafile=datafile, notification_center=center)
    assert client.notification_center is center
    assert client.event_processor.notification_center is center  # type: ignore[attr-defined]


def test_create_client_refuses_settings_that_would_break_the_wiring(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    with pytest.raises(TypeError, match="datafile or an sdk_key"):
        create_client(dispatcher)
    with pytest.raises(TypeError, match="event_processor"):
        create_client(dispatcher, datafile=datafile, event_processor=object())


def test_create_client_with_an_sdk_key_polls_the_datafile(
    datafile: str, httpserver: HTTPServer, event_endpoint: EventEndpoint
) -> None:
    httpserver.expect_request("/datafiles/local-test-sdk-key.json").respond_with_data(
        datafile, content_type="application/json"
    )
    dispatcher = RequestScopedEventDispatcher(EventSender(endpoint=event_endpoint.url))
    client = create_client(
        dispatcher,
        sdk_key="local-test-sdk-key",
        url_template=httpserver.url_for("/datafiles/{sdk_key}.json"),
        blocking_timeout=10,
    )
    try:
        assert isinstance(client.event_processor, ForwardingEventProcessor)
        with dispatcher.request_scope():
            client.track("purchase", "user-2")
        assert dispatcher.flush(10)
        visitors = event_endpoint.wait_for_visitors(1)
        assert visitors[0]["visitor_id"] == "user-2"
    finally:
        client.close()
        dispatcher.close(5)


def test_check_client_warns_for_the_default_batch_processor(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    client = optimizely.Optimizely(datafile, event_dispatcher=dispatcher)
    try:
        with pytest.warns(WiringWarning, match="BatchEventProcessor"):
            assert check_client(client, dispatcher) is False
    finally:
        client.close()


def test_check_client_warns_for_a_separate_notification_center(datafile: str) -> None:
    dispatcher = RequestScopedEventDispatcher(RecordingSink())
    processor = ForwardingEventProcessor(dispatcher)  # its own NotificationCenter
    client = optimizely.Optimizely(datafile, event_dispatcher=dispatcher, event_processor=processor)
    with pytest.warns(WiringWarning, match="LOG_EVENT"):
        assert check_client(client, dispatcher) is False


def test_check_client_warns_for_another_dispatcher(datafile: str) -> None:
    ours = RequestScopedEventDispatcher(RecordingSink())
    other = RequestScopedEventDispatcher(RecordingSink())
    client = create_client(other, datafile=datafile)
    with pytest.warns(WiringWarning, match="different dispatcher"):
        assert check_client(client, ours) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_client(client, other) is True
